"""Digital targets against the FP ONNX model: file size, latency and perplexity (issue 4).

For each model, the same captured network is compiled for fp, int8, int4-b32 and
int4-b128 (``afmc.api.compile``, default configuration; int4-b32 is the int4 default,
asymmetric blocks of 32; int4-b128 symmetric blocks of 128), and each is compared with fp:

- file MB: model.onnx (and its external data, if any), and its ratio to fp;
- linear MB: the bytes of the static-weight linear layers only (each layer's weight, or
  what the quantizer stored for it: quantized weight, scales, zero points; found by the
  layer's weight name, from which afmc's and onnxruntime's quantizers derive their names);
- b1 ms: latency of one token at batch 1 (``input_ids`` [1, 1], decode-like, no KV cache);
- t128 ms: latency of one 128-token sequence (``input_ids`` [1, 128], prefill-like);
- perplexity on held-out text (``stdlib:heldout``, the first ``--tokens`` bytes in windows
  of 256) and its change from fp.

Models:

1. afmc-tiny: the built-in model when its weights (afmc/models/afmc-tiny/model.safetensors)
   exist, otherwise a random Llama of its configuration (then perplexities mean nothing).
   int8 calibrates on afmc-tiny's training text (the default).
2. large: a random Llama built here (hidden 2048, 2 layers, intermediate 5632, byte
   vocabulary; 103 M parameters, 411 MB of FP32 weights, far more than the CPU's last-level
   cache), so that batch-1 latency is bound by reading weights, as in a real LLM. Random
   weights have no meaningful perplexity, so none is printed; int8 calibrates on 4 random
   batches of [2, 64] tokens.

Timing: every variant of a model is timed round-robin (one call each per round, the order
rotated every round) after warm-up calls; the reported value is the median, the ratio the
ratio of medians. ONNX Runtime's CPU provider runs with ``--threads`` intra-op threads.

    python benchmarks/digital.py [--threads 2] [--repeats 30] [--tokens 65536] [--skip large]
                                 [--gptq]   # also int4-gptq-b32 on afmc-tiny

Targets (issue 4): int4 linear weights <= 0.2x fp; int4 batch-1 latency <= 0.5x fp on the
large model; int8 perplexity within +5% of fp on afmc-tiny.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import afmc.api
from afmc.api import load
from afmc.config import load_config
from afmc.data.corpus import stdlib_text
from afmc.data.tokenizer import ByteTokenizer, token_windows
from afmc.eval.perplexity import perplexity
from afmc.eval.timing import interleaved_samples
from afmc.io.layout import MODEL_FILE
from afmc.models import afmc_tiny_config
from afmc.runtime.chip import Chip, load_record
from afmc.runtime.kernels import executed_ops

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "fp": ("fp", []),
    "int8": ("int8", []),
    "int4-b32": ("int4", ["digital.int4_block_size=32"]),
    "int4-b128": ("int4", ["digital.int4_block_size=128", "digital.int4_symmetric=true"]),
}
GPTQ = {"int4-gptq-b32": ("int4", ["digital.int4_algorithm=gptq", "digital.int4_block_size=32"])}
TARGET_INT4_LINEAR = 0.2
TARGET_INT4_BATCH1 = 0.5
TARGET_INT8_PERPLEXITY = 0.05
SEQ_LEN = 256
PREFILL = 128
INTEGER_OPS = ("MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "MatMulNBits")


def large_config() -> LlamaConfig:
    """A Llama whose FP32 weights (411 MB) are far larger than a CPU's last-level cache."""
    return afmc_tiny_config(hidden_size=2048, intermediate_size=5632, num_hidden_layers=2,
                            num_attention_heads=16, num_key_value_heads=16)


def random_model_dir(config: LlamaConfig, path: Path) -> Path:
    torch.manual_seed(0)
    LlamaForCausalLM(config).eval().save_pretrained(path)
    return path


def file_bytes(out: Path) -> int:
    """model.onnx plus its external data file, if any."""
    return sum(
        path.stat().st_size
        for path in out.iterdir()
        if path.name == MODEL_FILE or path.name.startswith(f"{MODEL_FILE}.")
    )


def linear_bytes(out: Path, weights: list[str]) -> int:
    """Bytes the file stores for the linear layers of `weights` (rule in the docstring)."""
    model = onnx.load(str(out / MODEL_FILE), load_external_data=False)
    total = 0
    for init in model.graph.initializer:
        if any(init.name == w or init.name.startswith((f"{w}.", f"{w}_")) for w in weights):
            external = {entry.key: entry.value for entry in init.external_data}
            total += int(external["length"]) if "length" in external else len(init.raw_data)
    return total


def time_interleaved(
    calls: dict[str, Callable[[], Any]], repeats: int, warmup: int
) -> dict[str, float]:
    """Median seconds per call of each variant, measured interleaved."""
    samples = interleaved_samples(calls, repeats, warmup)
    return {name: float(np.median(values)) for name, values in samples.items()}


def compile_variants(
    model: str | Path, root: Path, calibration: Any, variants: dict[str, tuple[str, list[str]]]
) -> dict[str, Path]:
    outputs = {}
    for name, (target, overrides) in variants.items():
        start = time.perf_counter()
        afmc.api.compile(
            model, target, load_config(None, overrides), calibration=calibration, output=root / name
        )
        print(f"  compiled {name:13} in {time.perf_counter() - start:5.1f} s", flush=True)
        outputs[name] = root / name
    return outputs


def bench_model(
    label: str,
    outputs: dict[str, Path],
    args: argparse.Namespace,
    heldout: np.ndarray | None,
    check_latency: bool,
) -> None:
    """Print the table and kernels of one model; check the targets that apply to it."""
    chips: dict[str, Chip] = {
        name: load(out).chip(None, threads=args.threads) for name, out in outputs.items()
    }
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, 1), dtype=np.int64)
    prefill = rng.integers(0, 256, (1, PREFILL), dtype=np.int64)
    batch1 = time_interleaved(
        {n: lambda c=c: c.run(one) for n, c in chips.items()}, args.repeats, args.warmup
    )
    tokens128 = time_interleaved(
        {n: lambda c=c: c.run(prefill) for n, c in chips.items()},
        max(5, args.repeats // 3),
        max(1, args.warmup // 3),
    )
    ppl = {}
    if heldout is not None:
        windows = token_windows(heldout, SEQ_LEN, args.tokens)
        ppl = {name: perplexity(chip.run, windows, batch_size=8) for name, chip in chips.items()}
    weights = [layer["weight"] for layer in load_record(outputs["int8"])["layers"]]
    linear = {name: linear_bytes(out, weights) for name, out in outputs.items()}
    base_file = file_bytes(outputs["fp"])
    print(f"\n{label}")
    header = (
        f"| {'target':13} | {'file MB':>8} | {'x fp':>5} | {'linear MB':>9} | {'x fp':>5} "
        f"| {'b1 ms':>7} | {'x fp':>5} | {'t128 ms':>7} | {'x fp':>5} |"
    )
    if ppl:
        header += f" {'perplexity':>10} | {'vs fp':>7} |"
    print(header)
    print("|" + "|".join("-" * (len(cell) + 0) for cell in header.split("|")[1:-1]) + "|")
    for name, out in outputs.items():
        size = file_bytes(out)
        row = (
            f"| {name:13} | {size / 1e6:8.2f} | {size / base_file:5.3f} | "
            f"{linear[name] / 1e6:9.2f} | {linear[name] / linear['fp']:5.3f} | "
            f"{batch1[name] * 1e3:7.3f} | {batch1[name] / batch1['fp']:5.3f} | "
            f"{tokens128[name] * 1e3:7.2f} | {tokens128[name] / tokens128['fp']:5.3f} |"
        )
        if ppl:
            row += f" {ppl[name]:10.4f} | {ppl[name] / ppl['fp'] - 1:+7.2%} |"
        print(row, flush=True)
    for name, out in outputs.items():
        counts = executed_ops(out / MODEL_FILE)
        kernels = ", ".join(f"{op} x{counts[op]}" for op in ("MatMul", *INTEGER_OPS) if counts[op])
        print(f"  {name:13} ONNX Runtime runs: {kernels}")
    verdicts = [
        (
            "int4 linear weights <= 0.2x fp",
            all(linear[n] / linear["fp"] <= TARGET_INT4_LINEAR for n in ("int4-b32", "int4-b128")),
        )
    ]
    if check_latency:
        verdicts.append(
            (
                "int4 batch-1 latency <= 0.5x fp",
                all(
                    batch1[n] / batch1["fp"] <= TARGET_INT4_BATCH1
                    for n in ("int4-b32", "int4-b128")
                ),
            )
        )
    if ppl:
        verdicts.append(
            (
                "int8 perplexity within +5% of fp",
                ppl["int8"] / ppl["fp"] - 1 <= TARGET_INT8_PERPLEXITY,
            )
        )
    for text, met in verdicts:
        print(f"  target {text}: {'met' if met else 'MISSED'}")


def main() -> None:
    from afmc.console.quiet import quiet_libraries

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="ONNX Runtime intra-op threads (default: all cores)",
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed batch-1 calls per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per variant")
    parser.add_argument("--tokens", type=int, default=65536, help="held-out tokens to score")
    parser.add_argument("--skip", nargs="*", default=[], choices=["tiny", "large"])
    parser.add_argument("--gptq", action="store_true", help="also int4 with GPTQ on afmc-tiny")
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    print(
        f"benchmarks/digital.py: onnxruntime {ort.__version__}, {cpu}, {os.cpu_count()} "
        f"cores, {args.threads} threads; medians of {args.repeats} (b1) / "
        f"{max(5, args.repeats // 3)} (t128) interleaved runs"
    )
    with tempfile.TemporaryDirectory(prefix="afmc-digital-") as tmp_name:
        tmp = Path(tmp_name)
        if "tiny" not in args.skip:
            model, label = "afmc-tiny", "afmc-tiny (trained)"
            print(f"\n{label}")
            variants = VARIANTS | (GPTQ if args.gptq else {})
            outputs = compile_variants(model, tmp / "tiny-out", "stdlib:train", variants)
            heldout = ByteTokenizer().encode(stdlib_text("heldout"))
            bench_model(
                f"{label}; perplexity on {args.tokens} held-out bytes",
                outputs,
                args,
                heldout,
                check_latency=False,
            )
        if "large" not in args.skip:
            print(
                "\nlarge: random Llama, hidden 2048, 2 layers, intermediate 5632 (103 M parameters)"
            )
            model_dir = random_model_dir(large_config(), tmp / "large")
            generator = torch.Generator().manual_seed(0)
            batches = [(torch.randint(0, 256, (2, 64), generator=generator),) for _ in range(4)]
            outputs = compile_variants(model_dir, tmp / "large-out", batches, VARIANTS)
            bench_model(
                "large random Llama (411 MB FP32 weights)", outputs, args, None, check_latency=True
            )


if __name__ == "__main__":
    main()

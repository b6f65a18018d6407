"""Generation speed with the KV cache: tokens/s of an aimc chip over the FP view.

What is measured (one process, CPU): greedy generation of ``--new-tokens`` (64) tokens
after a prompt of ``--prompt-tokens`` (16) random token ids, with
``afmc.runtime.generation.generate`` (one prefill with empty pasts, then one decode step
per token, the presents fed back as pasts), on

(a) afmc-tiny (4 layers, hidden 256, 3.3M analog weights), compiled for aimc with its
    calibration text, and
(b) a ~100M-parameter Llama built from a config (hidden 768, intermediate 2048, 12
    layers, 12 heads, 4 KV heads, vocab 16000; random weights saved with
    save_pretrained to a temporary directory, no tokenizer), compiled for aimc with 8
    random token-id sequences of 64 as calibration (.npz).

Variants (benchmarks/sim_overhead.chip_sessions): the FP view (``afmc.load(out).fp_view()``)
and chip 0 (``afmc.load(out).chip(0)``: pcm programming noise, 8-bit DAC/ADC) with afmc's
fused kernels and with the stock ONNX bodies (``AFMC_KERNELS=0``), each also with read
noise 0.04, timed round-robin, one generation of each per round with the order rotated
every round, after one warm-up generation each. Printed per model: the median tokens/s
of each, and its time ratio to the FP view (FP tokens/s over its tokens/s) as the ratio
of the medians and as the median of the per-round ratios (the goal: chip 0 at >= 0.85x
the FP view's tokens/s). ONNX Runtime runs ``--threads`` intra-op threads per session, without
spin-waiting (benchmarks/sim_overhead.disable_spinning).

    python benchmarks/generate_speed.py [--threads 2] [--rounds 10] [--new-tokens 64]
        [--skip tiny 100m]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sim_overhead import chip_sessions, disable_spinning
from transformers import LlamaConfig, LlamaForCausalLM

import afmc
from afmc.runtime.chip import Chip
from afmc.runtime.generation import GenerationOptions, generate

CONFIG_100M = dict(vocab_size=16000, hidden_size=768, intermediate_size=2048,
                   num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                   max_position_embeddings=1024, tie_word_embeddings=False)


def build_100m(folder: Path) -> tuple[Path, Path, int]:
    """The ~100M Llama (random weights) and its token-id calibration file; its parameters."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG_100M))
    model.save_pretrained(folder / "llama-100m")
    ids = np.random.default_rng(0).integers(0, CONFIG_100M["vocab_size"], (8, 64))
    np.savez(folder / "calib.npz", input_ids=ids.astype(np.int64))
    return folder / "llama-100m", folder / "calib.npz", sum(p.numel() for p in
                                                            model.parameters())


def tokens_per_second(chip: Chip, record: dict, prompt: list[int], new_tokens: int) -> float:
    """New tokens per second of one greedy generation."""
    started = time.perf_counter()
    result = generate(chip, record, prompt, GenerationOptions(max_new_tokens=new_tokens))
    return len(result.tokens) / (time.perf_counter() - started)


def bench(name: str, out: Path, args: argparse.Namespace) -> None:
    """Interleaved tokens/s of the FP view and the chips of sim_overhead.chip_sessions
    (chip 0 with and without the fused kernels, each with and without read noise)."""
    model = afmc.load(out)
    record = model.record
    vocab = model.signature().vocab_size
    prompt = np.random.default_rng(1).integers(0, vocab, args.prompt_tokens).tolist()
    chips = chip_sessions(out, args.threads)
    for chip in chips.values():
        tokens_per_second(chip, record, prompt, args.new_tokens)
    keys = list(chips)
    rates: dict[str, list[float]] = {key: [] for key in keys}
    for round_ in range(args.rounds):
        shift = round_ % len(keys)
        for key in keys[shift:] + keys[:shift]:
            rates[key].append(tokens_per_second(chips[key], record, prompt, args.new_tokens))
    fp = statistics.median(rates["fp"])
    print(f"{name}: {args.new_tokens} new tokens after {args.prompt_tokens}, "
          f"{args.rounds} rounds (time ratio = FP tok/s / variant tok/s; goal: aimc "
          f"<= {1 / 0.85:.2f}x, i.e. >= 0.85x the FP view's tokens/s)")
    for key in keys:
        rate = statistics.median(rates[key])
        per_round = statistics.median(f / v for f, v in zip(rates["fp"], rates[key],
                                                            strict=True))
        print(f"  {key:28} {rate:8.1f} tok/s  time ratio {fp / rate:.3f}x "
              f"(median of per-round ratios {per_round:.3f}x)", flush=True)


def compile_timed(model: str | Path, out: Path, **options: object) -> float:
    """Compile `model` for aimc into `out`; the seconds it took."""
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        afmc.compile(model, "aimc", output=out, **options)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--skip", nargs="*", default=[], choices=["tiny", "100m"])
    args = parser.parse_args()
    disable_spinning()
    with tempfile.TemporaryDirectory(prefix="afmc-generate-") as tmp:
        root = Path(tmp)
        if "tiny" not in args.skip:
            seconds = compile_timed("afmc-tiny", root / "tiny")
            print(f"afmc-tiny compiled in {seconds:.1f} s")
            bench("afmc-tiny", root / "tiny", args)
        if "100m" not in args.skip:
            model, calib, parameters = build_100m(root)
            seconds = compile_timed(model, root / "100m", calibration=calib)
            print(f"llama-100m ({parameters / 1e6:.0f}M parameters) compiled in "
                  f"{seconds:.1f} s")
            bench("llama-100m", root / "100m", args)


if __name__ == "__main__":
    main()

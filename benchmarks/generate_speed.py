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

Variants: the FP view (``afmc.load(out).fp_view()``) and chip 0 (``afmc.load(out).chip(0)``:
pcm programming noise, 8-bit DAC/ADC), timed round-robin, one generation of
each per round with the order swapped every round, after one warm-up generation each.
Printed per model: the median tokens/s of each, and the chip's tokens/s over the FP
view's as the ratio of the medians and as the median of the per-round ratios (the
goal: >= 0.85x). ONNX Runtime runs ``--threads`` intra-op threads per session, without
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
from sim_overhead import disable_spinning
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
    """Interleaved tokens/s of the FP view and chip 0 of the compiled model in `out`."""
    model = afmc.load(out)
    record = model.record
    vocab = model.signature().vocab_size
    prompt = np.random.default_rng(1).integers(0, vocab, args.prompt_tokens).tolist()
    chips = {"fp": model.fp_view(threads=args.threads),
             "aimc": model.chip(0, threads=args.threads)}
    for chip in chips.values():
        tokens_per_second(chip, record, prompt, args.new_tokens)
    rates: dict[str, list[float]] = {key: [] for key in chips}
    for round_ in range(args.rounds):
        for key in (("fp", "aimc") if round_ % 2 == 0 else ("aimc", "fp")):
            rates[key].append(tokens_per_second(chips[key], record, prompt, args.new_tokens))
    fp, aimc = (statistics.median(rates[key]) for key in ("fp", "aimc"))
    per_round = statistics.median(a / f for a, f in zip(rates["aimc"], rates["fp"],
                                                        strict=True))
    print(f"{name}: {args.new_tokens} new tokens after {args.prompt_tokens}, "
          f"{args.rounds} rounds: FP view {fp:.1f} tok/s, aimc chip 0 {aimc:.1f} tok/s; "
          f"aimc / FP = {aimc / fp:.3f}x (median of per-round ratios {per_round:.3f}x; "
          f"goal >= 0.85x)")


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

"""afmc synth against transformers' batched generate: tokens per second, same run.

What a user would run instead of ``afmc synth`` is: load the model with transformers,
then ``generate`` on a batch of prompts, sampling as the AFM recipe does (temperature 1,
top-k 50, top-p 1, KV cache, no stop at EOS). Both sides are timed from loading the
model (a GGUF is dequantised on load, ~20 s for SmolLM2) to the last token, on the same
model, batch, sequence length and number of sequences; rounds alternate (plain, afmc,
plain, afmc, ...) after one warm-up of each, and each side's median tokens/s over the
rounds is printed with the ratio afmc / plain (issue 22's goal: >= 0.8x). afmc's time
includes what a synth run does beyond sampling: seeding per shard, writing shards
atomically, the record, progress callbacks.

    python benchmarks/synth_speed.py [--smollm2] [--batch 8] [--seq-len 128]
                                     [--sequences 16] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def plain_generate(model: str, sequences: int, batch: int, seq_len: int) -> float:
    """Seconds to load `model` and sample `sequences` sequences of `seq_len` with
    transformers' generate."""
    from transformers import GenerationConfig

    from afmc.capture.hf import load_causal_lm
    from afmc.models import resolve_model_path

    started = time.perf_counter()
    lm = load_causal_lm(resolve_model_path(model))  # transformers' from_pretrained, float32
    lm.generation_config = GenerationConfig()  # the model's own generation defaults off
    vocab = int(lm.config.get_text_config().vocab_size)
    with torch.inference_mode():
        for start in range(0, sequences, batch):
            n = min(batch, sequences - start)
            ids = torch.randint(vocab, (n, 1))
            lm.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                        temperature=1.0, top_k=50, top_p=1.0, use_cache=True,
                        max_new_tokens=seq_len - 1)
    return time.perf_counter() - started


def afmc_synth(model: str, folder: Path, sequences: int, batch: int, seq_len: int) -> float:
    """Seconds for afmc synth to write `sequences` sequences of `seq_len` into `folder`."""
    from afmc.train.synth import synthesize

    started = time.perf_counter()
    synthesize(model, folder, sequences * seq_len, seq_len=seq_len, batch_size=batch,
               shard_sequences=sequences, prompt_tokens=None, force=True,
               progress=lambda done, total: None)
    return time.perf_counter() - started


def main() -> None:
    from afmc.console.quiet import quiet_libraries

    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm2", action="store_true",
                        help="SmolLM2-135M (the GGUF of benchmarks/real_llm.py), not afmc-tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = "afmc-tiny"
    if args.smollm2:
        from real_llm import gguf_path

        model = str(gguf_path())
    tokens = args.sequences * args.seq_len
    rates: dict[str, list[float]] = {"transformers generate": [], "afmc synth": []}
    with tempfile.TemporaryDirectory(prefix="afmc-synth-speed-") as tmp:
        folder = Path(tmp) / "data"
        for round_index in range(args.rounds + 1):
            plain = plain_generate(model, args.sequences, args.batch, args.seq_len)
            synth = afmc_synth(model, folder, args.sequences, args.batch, args.seq_len)
            if round_index:  # the first round warms both up
                rates["transformers generate"].append(tokens / plain)
                rates["afmc synth"].append(tokens / synth)
    print(f"{model}: {args.sequences} sequences x {args.seq_len} tokens, batch {args.batch}, "
          f"{args.threads} threads, median of {args.rounds} alternating rounds")
    for name, values in rates.items():
        print(f"  {name:22} {statistics.median(values):9.1f} tokens/s")
    ratio = statistics.median(rates["afmc synth"]) / statistics.median(
        rates["transformers generate"])
    print(f"  afmc synth / transformers generate: {ratio:.2f}x (goal >= 0.8x)")


if __name__ == "__main__":
    main()

"""Train ``afmc-tiny``, afmc's built-in byte-level Llama, from scratch on CPU.

Corpus: ``stdlib_text("train")`` (the Python standard library sources listed in
``afmc.data.corpus``), read as UTF-8 bytes. Architecture: Llama with hidden
size 256, 4 layers, 4 heads (head dim 64), SwiGLU intermediate 704, vocab 256,
untied embeddings: 3.34 M parameters. Training: scripts/builtin_training.py (AdamW,
warmup then cosine decay, clipping) on random windows of 256 bytes; all seeds fixed.

The default 500 steps of 16 windows (2.0 M tokens, a third of the corpus)
take about 5 minutes on two idle CPU cores (about 7000 tokens/s) and about 20
minutes on two cores shared with other work (about 1800 tokens/s). The saved
directory holds ``config.json`` (float32) and ``model.safetensors`` (weights
stored in float16); there are no tokenizer files, so afmc reads the model as
byte-level. At the end the model is loaded back in float32 and its held-out
perplexity printed (first 65536 held-out bytes, windows of 256).

From the repository root (``PYTHONPATH=.`` is not needed once afmc is installed):

    PYTHONPATH=. python scripts/train_afmc_tiny.py              # train, save, evaluate
    PYTHONPATH=. python scripts/train_afmc_tiny.py --eval-only  # evaluate the saved model
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from builtin_training import save_model, train_model
from transformers import LlamaForCausalLM

from afmc.data.corpus import stdlib_text
from afmc.data.tokenizer import ByteTokenizer, token_windows
from afmc.eval.perplexity import perplexity, torch_logits_fn
from afmc.models import afmc_tiny_config

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "afmc" / "models" / "afmc-tiny"
SEQ_LEN = 256
EVAL_TOKENS = 65536
SEED = 0


def heldout_perplexity(model_dir: Path) -> float:
    """FP byte-level perplexity of the saved model on the first held-out bytes."""
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    windows = token_windows(ByteTokenizer().encode(stdlib_text("heldout")), SEQ_LEN, EVAL_TOKENS)
    return perplexity(torch_logits_fn(model), windows, batch_size=16)


def train(out: Path, steps: int, batch_size: int, peak_lr: float, log_every: int) -> None:
    """Train from scratch on random windows of the corpus and save to ``out``."""
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    data = torch.from_numpy(ByteTokenizer().encode(stdlib_text("train")))
    print(f"train corpus: {len(data)} bytes", flush=True)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        offsets = torch.from_numpy(rng.integers(0, len(data) - SEQ_LEN, size=batch_size))
        windows = data[offsets[:, None] + torch.arange(SEQ_LEN)]
        return windows, windows

    model = LlamaForCausalLM(afmc_tiny_config()).float()
    train_model(model, batch, steps, peak_lr, log_every)
    save_model(model, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model directory")
    parser.add_argument("--steps", type=int, default=500, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--log-every", type=int, default=20, help="steps between log lines")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.eval_only:
        train(args.out, args.steps, args.batch_size, args.lr, args.log_every)
    ppl = heldout_perplexity(args.out)
    print(
        f"FP held-out perplexity (byte-level, seq_len {SEQ_LEN}, {EVAL_TOKENS} tokens): {ppl:.4f}"
    )


if __name__ == "__main__":
    main()

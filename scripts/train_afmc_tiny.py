"""Train ``afmc-tiny``, afmc's built-in byte-level Llama, from scratch on CPU.

Corpus: ``stdlib_text("train")`` (the Python standard library sources listed in
``afmc.data.corpus``), read as UTF-8 bytes. Architecture: Llama with hidden
size 256, 4 layers, 4 heads (head dim 64), SwiGLU intermediate 704, vocab 256,
untied embeddings: 3.34 M parameters. Optimiser: AdamW (betas 0.9/0.95,
weight decay 0.1), linear warmup then cosine decay to 10% of the peak rate,
gradient clipping at 1.0; random windows of 256 bytes; all seeds fixed.

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
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

from afmc.data.corpus import stdlib_text
from afmc.data.tokenizer import ByteTokenizer, token_windows
from afmc.eval.perplexity import perplexity, torch_logits_fn
from afmc.models import afmc_tiny_config

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "afmc" / "models" / "afmc-tiny"
SEQ_LEN = 256
EVAL_TOKENS = 65536
SEED = 0


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup to ``peak``, then cosine decay to ``peak / 10`` at ``steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def save_model(model: LlamaForCausalLM, out: Path) -> None:
    """Write ``config.json`` and float16 ``model.safetensors`` to ``out``.

    The config declares float32, so a plain ``from_pretrained`` upcasts the weights.
    """
    out.mkdir(parents=True, exist_ok=True)
    model.config.dtype = torch.float32
    model.config.save_pretrained(out)
    weights = {
        name: tensor.detach().to(torch.float16).contiguous()
        for name, tensor in model.state_dict().items()
    }
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})


def heldout_perplexity(model_dir: Path) -> float:
    """FP byte-level perplexity of the saved model on the first held-out bytes."""
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    windows = token_windows(ByteTokenizer().encode(stdlib_text("heldout")), SEQ_LEN, EVAL_TOKENS)
    return perplexity(torch_logits_fn(model), windows, batch_size=16)


def train(out: Path, steps: int, batch_size: int, peak_lr: float, log_every: int) -> None:
    """Train from scratch and save to ``out``."""
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    data = torch.from_numpy(ByteTokenizer().encode(stdlib_text("train")))
    print(f"train corpus: {len(data)} bytes", flush=True)

    model = LlamaForCausalLM(afmc_tiny_config()).float()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params} ({n_params / 1e6:.2f} M)", flush=True)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=peak_lr,
        betas=(0.9, 0.95),
    )
    warmup = max(1, steps // 20)
    model.train()
    start = time.perf_counter()
    running = 0.0
    for step in range(steps):
        offsets = torch.from_numpy(rng.integers(0, len(data) - SEQ_LEN, size=batch_size))
        batch = data[offsets[:, None] + torch.arange(SEQ_LEN)]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, peak_lr, warmup)
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running += loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            n = (step % log_every) + 1
            elapsed = time.perf_counter() - start
            tokens_s = (step + 1) * batch_size * SEQ_LEN / elapsed
            eta = elapsed / (step + 1) * (steps - step - 1)
            print(
                f"step {step + 1}/{steps}  loss {running / n:.4f}  "
                f"lr {optimizer.param_groups[0]['lr']:.2e}  {tokens_s:.0f} tok/s  "
                f"elapsed {elapsed / 60:.1f} min  eta {eta / 60:.1f} min",
                flush=True,
            )
            running = 0.0
    print(f"training time: {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    save_model(model, out)
    print(f"saved to {out}", flush=True)


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

"""The one training loop of afmc's built-in models (scripts/train_afmc_tiny.py,
scripts/train_adder.py): each script gives its architecture and its batches, this module
trains and saves.

Recipe: AdamW (betas 0.9/0.95, weight decay 0.1 on matrices, none on vectors), linear
warmup over the first 5% of the steps then cosine decay to 10% of the peak rate,
gradient clipping at 1.0. The model is saved as ``config.json`` (declaring float32, so a
plain ``from_pretrained`` upcasts) and float16 ``model.safetensors``; there are no
tokenizer files, so afmc reads the model as byte-level.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

Batch = tuple[torch.Tensor, torch.Tensor]  # input ids, labels (-100: no loss)


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup to ``peak``, then cosine decay to ``peak / 10`` at ``steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_model(model: LlamaForCausalLM, batch: Callable[[], Batch], steps: int,
                peak_lr: float, log_every: int,
                progress: Callable[[LlamaForCausalLM], str] | None = None) -> None:
    """Train `model` in place for `steps` steps of `batch()`, printing a line every
    `log_every` steps (the mean loss, tokens/s, the time; `progress(model)` adds to it)."""
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params} ({n_params / 1e6:.2f} M)", flush=True)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=peak_lr, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    model.train()
    start = time.perf_counter()
    running, tokens = 0.0, 0
    for step in range(steps):
        ids, labels = batch()
        tokens += ids.numel()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, peak_lr, warmup)
        loss = model(input_ids=ids, labels=labels, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running += loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            elapsed = time.perf_counter() - start
            eta = elapsed / (step + 1) * (steps - step - 1)
            extra = f"  {progress(model)}" if progress is not None else ""
            print(f"step {step + 1}/{steps}  loss {running / ((step % log_every) + 1):.4f}  "
                  f"lr {optimizer.param_groups[0]['lr']:.2e}  {tokens / elapsed:.0f} tok/s"
                  f"{extra}  elapsed {elapsed / 60:.1f} min  eta {eta / 60:.1f} min",
                  flush=True)
            running = 0.0
    print(f"training time: {(time.perf_counter() - start) / 60:.1f} min", flush=True)


def save_model(model: LlamaForCausalLM, out: Path) -> None:
    """Write ``config.json`` (float32) and float16 ``model.safetensors`` to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model.config.dtype = torch.float32
    model.config.save_pretrained(out)
    weights = {name: tensor.detach().to("cpu", torch.float16).contiguous()
               for name, tensor in model.state_dict().items()}
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    print(f"saved to {out}", flush=True)

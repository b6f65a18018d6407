"""Training sequences and their order.

DATA is an ``afmc synth`` directory (synth.json beside token shards), a text file,
or a built-in corpus (stdlib:train). Text is tokenized with the model's tokenizer
and cut into non-overlapping windows of seq_len tokens; synth sequences of another
length are re-cut the same way.

The order is a pure function of (seed, position): global position p of the run
(step * batch_size + j) reads sequence perm_e[p mod n] with e = p div n and
perm_e a permutation seeded by (seed, e). So a resumed run reads exactly what an
uninterrupted one would, with no loader state to save, and every process of a
distributed run derives its share of a global batch without communication.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from afmc.data.text_source import read_text
from afmc.data.tokenizer import Tokenizer, token_windows

SYNTH_RECORD = "synth.json"


def training_sequences(data: str | Path, tokenizer: Tokenizer, seq_len: int,
                       vocab_size: int) -> np.ndarray:
    """The training sequences [n, seq_len] (int64) of DATA; ids checked against the vocab."""
    path = Path(data)
    if path.is_dir():
        if not (path / SYNTH_RECORD).is_file():
            raise FileNotFoundError(f"{path}: not afmc synth output (no {SYNTH_RECORD})")
        from afmc.train.synth import load_token_sequences

        ids = load_token_sequences(path).reshape(-1)
    else:
        ids = tokenizer.encode(read_text(data))
    windows = token_windows(ids, seq_len)
    if int(windows.max()) >= vocab_size or int(windows.min()) < 0:
        raise ValueError(f"{data}: token ids outside the model's vocabulary (0..{vocab_size - 1})")
    return windows


def batch_indices(step: int, batch_size: int, count: int, seed: int) -> np.ndarray:
    """Sequence indices of the global batch of optimizer step `step` (see module docstring)."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs = positions // count
    indices = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + int(epoch))
        order = torch.randperm(count, generator=generator).numpy()
        chosen = epochs == epoch
        indices[chosen] = order[positions[chosen] % count]
    return indices


def micro_batches(indices: np.ndarray, accumulation: int, world: int,
                  rank: int) -> list[np.ndarray]:
    """This process's share of each of the `accumulation` micro-batches of a global batch."""
    size = len(indices) // (accumulation * world)
    if size == 0 or len(indices) % (accumulation * world):
        raise ValueError(f"training.batch_size ({len(indices)}) must be a multiple of "
                         f"grad_accumulation x processes ({accumulation} x {world})")
    return [indices[(m * world + rank) * size:(m * world + rank + 1) * size]
            for m in range(accumulation)]

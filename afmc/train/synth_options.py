"""The ranges of ``afmc synth``'s options, checked before the model loads.

Rules: tokens >= 1, seq_len >= 2, shard_sequences >= 1, batch_size >= 1, a
temperature that is positive and finite, top_k >= 0 (0: off), top_p in (0, 1],
and a prompt of 1 to seq_len - 1 tokens. Each violation is a ValueError naming
the option.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def check_synth_options(tokens: int, seq_len: int, shard_sequences: int, batch_size: int,
                        temperature: float, top_k: int, top_p: float,
                        prompt_tokens: Sequence[int] | None = None) -> None:
    """Raise ValueError naming the first option out of range (see the module rules)."""
    if tokens <= 0:
        raise ValueError(f"--tokens must be positive, got {tokens}")
    if seq_len < 2:
        raise ValueError(f"--seq-len must be at least 2, got {seq_len}")
    if shard_sequences < 1:
        raise ValueError(f"--shard-sequences must be at least 1, got {shard_sequences}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"--temperature must be positive and finite, got {temperature}")
    if top_k < 0:
        raise ValueError(f"--top-k must be >= 0 (0: off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"--top-p must lie in (0, 1], got {top_p}")
    if prompt_tokens is not None and not 0 < len(prompt_tokens) < seq_len:
        raise ValueError(f"the prompt must hold 1 to {seq_len - 1} tokens (--seq-len {seq_len})")

"""Interleaved timing for benchmarks: variants measured round-robin in one process.

The machines are noisy, so variants are never timed one after the other: each
round calls every variant once, starting at a rotating position, and figures
are ratios of the per-variant samples within the same run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


def interleaved_samples(variants: dict[str, Callable[[], Any]], repeats: int,
                        warmup: int) -> dict[str, np.ndarray]:
    """Seconds per call of each variant over `repeats` rounds (after `warmup` rounds)."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            call = variants[name]
            start = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - start)
    return {name: np.asarray(values) for name, values in samples.items()}

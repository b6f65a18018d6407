"""Perplexity of a compiled language model per chip instance, next to its FP view.

Each seed is one chip instance (one programming-noise draw); the report holds
the FP perplexity of the same file (analog nodes computed in floating point),
the perplexity per chip, and their mean and standard deviation over seeds.
A target whose chips do not vary by seed (int8, int4, fp) is scored once, as
chip 0, next to its FP view, and `seeds` is ignored (report.digital names the
target).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from afmc.data.tokenizer import token_windows
from afmc.eval.perplexity import perplexity
from afmc.runtime.chip import Chip
from afmc.runtime.compiled import CompiledModel


@dataclass
class EvalReport:
    """FP perplexity, perplexity per seed, and their mean / std over seeds."""

    tokens: int
    fp: float
    chips: dict[int, float] = field(default_factory=dict)
    digital: str | None = None
    noise_free: float | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.chips.values()))) if self.chips else float("nan")

    @property
    def std(self) -> float:
        return float(np.std(list(self.chips.values()))) if self.chips else float("nan")


def chip_perplexity(chip: Chip, windows: np.ndarray, batch_size: int,
                    progress: Callable[[int, int], None] | None = None) -> float:
    return perplexity(chip.run, windows, batch_size=batch_size, progress=progress)


def evaluate(model: CompiledModel, ids: np.ndarray, seeds: list[int], *, seq_len: int = 256,
             max_tokens: int | None = 16384, batch_size: int = 8, read_noise: float = 0.0,
             on_result: Callable[[str, float], None] | None = None,
             progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Perplexity of the FP view and of each chip `seed` on the token ids `ids`."""
    windows = token_windows(ids, min(seq_len, len(ids)), max_tokens)
    fp = chip_perplexity(model.fp_view(), windows, batch_size, progress)
    if on_result:
        on_result("fp", fp)
    report = EvalReport(int(windows.size), fp)
    if not model.varies_by_seed:
        report.digital = model.target
        seeds = [0]
    elif model.has_analog_layers:
        report.noise_free = chip_perplexity(model.chip(None, read_noise=read_noise), windows,
                                            batch_size, progress)
        if on_result:
            on_result("analog, no programming noise", report.noise_free)
    for seed in seeds:
        # one chip alive at a time: the last one's session is freed before the next starts
        report.chips[seed] = chip_perplexity(model.chip(seed, read_noise=read_noise), windows,
                                             batch_size, progress)
        if on_result:
            on_result(report.digital or f"seed {seed}", report.chips[seed])
    return report

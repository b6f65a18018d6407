"""Perplexity of a compiled language model per chip instance, next to its FP view.

Each seed is one chip instance (one programming-noise draw); the report holds
the FP perplexity of the same file (analog nodes computed in floating point),
the perplexity per chip, and their mean and sample standard deviation (ddof=1)
over seeds (afmc.eval.spread).
A target whose chips do not vary by seed (int8, int4, fp) is scored once, as
chip 0, next to its FP view, and `seeds` is ignored (report.digital names the
target). The chips are the points of an eval.sweep (one process, or `jobs`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from afmc.data.tokenizer import token_windows
from afmc.eval.perplexity import PerplexityScorer
from afmc.eval.scoring import Score
from afmc.eval.spread import sample_std
from afmc.eval.sweep import Point, run_sweep
from afmc.runtime.compiled import CompiledModel
from afmc.runtime.noise import NoiseConfig


@dataclass
class EvalReport:
    """FP perplexity, perplexity per seed, and their mean / sample std over seeds."""

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
        """The sample std (ddof=1) over the chips; NaN for fewer than 2 (eval.spread)."""
        return sample_std(self.chips.values())


def evaluate(model: CompiledModel, ids: np.ndarray, seeds: list[int], *, seq_len: int = 256,
             max_tokens: int | None = 16384, batch_size: int = 8, read_noise: float = 0.0,
             noise: NoiseConfig | None = None, jobs: int = 1,
             on_result: Callable[[str, float], None] | None = None,
             progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Perplexity of the FP view and of each chip `seed` on the token ids `ids`; `noise`
    replaces the compiled programming-noise model, and with `jobs` > 1 the chips run in
    that many processes (eval.sweep). `progress(done, total)` follows the FP view's
    windows, then the chips."""
    windows = token_windows(ids, min(seq_len, len(ids)), max_tokens)
    scorer = PerplexityScorer.against_fp(model, windows, batch_size, progress=progress)
    fp = scorer.fp
    if on_result:
        on_result("fp", fp)
    report = EvalReport(int(windows.size), fp)
    points: list[int | None] = list(seeds)
    if not model.varies_by_seed:
        report.digital = model.target
        points = [0]
    elif model.has_analog_layers:
        points = [None, *points]
    scored = 0

    def on_point(point: Point, score: Score, _: bool) -> None:
        nonlocal scored
        seed, value = point.seed, score.value
        if seed is None:
            report.noise_free = value
        else:
            report.chips[seed] = value
        if on_result:
            on_result(report.digital or ("analog, no programming noise" if seed is None
                                         else f"seed {seed}"), value)
        scored += 1
        if progress:
            progress(scored, len(points))

    run_sweep(model, scorer, [Point(seed) for seed in points], noise=noise,
              read_noise=read_noise, jobs=jobs, on_point=on_point)
    report.chips = {seed: report.chips[seed] for seed in points if seed is not None}
    return report

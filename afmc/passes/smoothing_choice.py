"""Smoothing's channel scales and the chip-aware choice of its strength, shared by the FX
pass chip-smooth-inputs and the ONNX pass onnx-chip-smooth-inputs.

Rules: the SmoothQuant scale of input channel k is s_k = a_k^alpha / w_k^(1 - alpha)
(a_k = max |x_k| over the calibration data, w_k = max |W_jk| over every row of every layer
of the group), normalised to geometric mean 1, 1 where a_k or w_k is 0, clamped to
[1e-4, 1e4]. The group's score for a scale (or none) is the sum over its layers of their
expected relative output error on the chip (afmc.passes.layer_score), with the outlier
split that split-outliers will make at ``outliers.budget`` modelled as that fraction of
every row slice; the strength chosen is the lowest score among ``smoothing.alphas`` and
no smoothing (ties: none, then the smaller alpha).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from afmc.config import HardwareConfig
from afmc.ops.analog_linear import slice_sizes
from afmc.passes.layer_score import LayerScore
from afmc.passes.range_search import ChipNoise
from afmc.passes.row_sample import WeightedRows

SCALE_LIMIT = 1e4


def smoothing_scale(x_max: torch.Tensor, w_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_k = x_max_k^alpha / w_max_k^(1-alpha), geometric mean 1, 1 where undefined."""
    valid = (x_max > 0) & (w_max > 0) & torch.isfinite(x_max)
    scale = torch.ones_like(x_max)
    if not valid.any():
        return scale
    # in float64: the scales' last bits then depend on neither the CPU's vector width
    # nor the thread count (deterministic compiles)
    log_s = alpha * x_max[valid].double().log() - (1 - alpha) * w_max[valid].double().log()
    log_s = log_s - log_s.mean()
    scale[valid] = log_s.exp().clamp(1 / SCALE_LIMIT, SCALE_LIMIT).to(scale.dtype)
    return scale


@dataclass
class SmoothingChoice:
    """The chosen alpha (None: no smoothing), its channel scale, and every score."""

    alpha: float | None
    scale: torch.Tensor | None
    scores: dict[float | None, float]

    def listing(self) -> str:
        return ", ".join(f"{'none' if a is None else f'{a:g}'}: {score:.3g}"
                         for a, score in self.scores.items())

    def note(self) -> str:
        if self.alpha is None:
            return f"not smoothed: the chip error is lowest without ({self.listing()})"
        return f"alpha {self.alpha:g} by chip error: {self.listing()}"


def choose_smoothing(maxima: torch.Tensor, rows: WeightedRows, weights: Sequence[torch.Tensor],
                     alphas: Sequence[float], hardware: HardwareConfig,
                     noise: ChipNoise | None, budget: float) -> SmoothingChoice:
    """The strength among `alphas` (or none) with the lowest group chip error (module
    rules); `weights` are the group's crossbar matrices [N, K], `maxima` max |x_k|."""
    weights = [weight.float() for weight in weights]
    w_max = torch.stack([w.abs().amax(0) for w in weights]).amax(0)
    scores: dict[float | None, float] = {
        None: group_error(rows, weights, None, hardware, noise, budget)}
    scales = {}
    for alpha in alphas:
        scales[alpha] = smoothing_scale(maxima, w_max, alpha)
        scores[alpha] = group_error(rows, weights, scales[alpha], hardware, noise, budget)
    best = min(scores, key=lambda a: (scores[a], -1 if a is None else a))
    return SmoothingChoice(best, None if best is None else scales[best], scores)


def group_error(rows: WeightedRows, weights: Sequence[torch.Tensor], scale: torch.Tensor | None,
                hardware: HardwareConfig, noise: ChipNoise | None, budget: float) -> float:
    """Sum of the group's layers' expected relative chip errors with channel scales `scale`
    (None: unsmoothed)."""
    if scale is not None:
        rows = WeightedRows(rows.x / scale, rows.weights)
    total = 0.0
    for weight in weights:
        sizes = slice_sizes(weight.shape[1], hardware.max_in)
        scaled = weight if scale is None else weight * scale
        split = min(round(budget * min(sizes)), min(sizes))
        score = LayerScore(rows.split(sizes), scaled, sizes,
                           (hardware.inp_res, hardware.out_res, hardware.out_bound), noise,
                           (split,))
        total += score.errors[split]
    return total

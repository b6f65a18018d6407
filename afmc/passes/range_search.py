"""Output-error search of a crossbar slice's input range and its rows' weight clipping.

Rule, for one input slice of one analog layer (sample inputs x [R, k], weights
W_s [N, k]): choose the static input range r and, per weight row j, a clipping
bound c_j * std(W_s[j]) (c_j from CLIP_RATIOS, or none) that minimise
``|| analog(x; r, clip(W_s)) - x @ W_s^T ||^2``, the error of the slice's whole
DAC + crossbar + ADC path (HARDWARE.md steps 2-6, no noise) against the FP
product with the original weights. The ADC bound ``out_bound * r * w_max``
couples the two: a smaller r or w_max gives finer DAC and ADC steps but clips
more inputs or weights. Search: r over a log grid below the largest |x|, then
the rows' clipping at that r (rows are independent given r), then r again on a
finer grid around the first choice.

The range is chosen on the error of at most ``outputs`` weight rows (output
channels), evenly spaced over the layer: each row's error is a term of the sum,
so a sample of rows estimates it, and the search's cost (one [R, k] x [k, N]
product per candidate range) stops growing with N. The reported SQNR is the
chosen setting's on the same rows; row clipping, which chooses per row, scores
every row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from afmc.ops.analog_linear import TINY, adc_, dac, row_max_abs
from afmc.passes.layers import LayerRecord

COARSE_FRACTIONS = tuple(2.0 ** (-step / 2) for step in range(13))  # 1 .. 1/64 of max |x|
FINE_FACTORS = tuple(2.0 ** (step / 8) for step in range(-4, 5))
CLIP_RATIOS = (8.0, 6.0, 5.0, 4.0, 3.5, 3.0, 2.5)


@dataclass(frozen=True)
class SliceChoice:
    """The search's outcome for one slice."""

    input_range: float
    weight: torch.Tensor  # [N, k], clipped rows where that lowered the error
    clipped_rows: int
    sqnr_db: float  # of the chosen setting, on the sample


class SliceModel:
    """One slice's DAC, crossbar product and ADC (HARDWARE.md steps 2-6, no noise) for
    fixed inputs and weights (or a subset of their rows) at any input range, the rows'
    w_max taken once."""

    def __init__(self, x: torch.Tensor, weight: torch.Tensor, inp_res: float, out_res: float,
                 out_bound: float) -> None:
        self.x, self.weight = x, weight
        self.inp_res, self.out_res, self.out_bound = inp_res, out_res, out_bound
        self.w_max = row_max_abs(weight)

    def output(self, input_range: float) -> torch.Tensor:
        """The slice's output [R, N] at static input range `input_range`."""
        y = dac(self.x, input_range, self.inp_res) @ self.weight.T
        return adc_(y, input_range, self.w_max, self.out_res, self.out_bound)

    def row_errors(self, input_range: float, expected: torch.Tensor) -> torch.Tensor:
        """Mean squared error per weight row of the slice's output against `expected`."""
        return self.output(input_range).sub_(expected).square_().mean(dim=0)


def search_slice(x: torch.Tensor, weight: torch.Tensor, inp_res: float, out_res: float,
                 out_bound: float, clip_weights: bool, outputs: int | None = None) -> SliceChoice:
    """Input range (and row clipping) of one slice that minimise its output error, the
    range chosen on at most `outputs` evenly spaced weight rows (None: all)."""
    x, weight = x.float(), weight.float()
    top = float(x.abs().max().clamp_min(TINY))
    sample = _output_sample(weight.shape[0], outputs)
    sampled = weight if sample is None else weight[sample]
    sampled_reference = x @ sampled.T
    hardware = (inp_res, out_res, out_bound)

    def best_range(candidates: list[float], model: SliceModel) -> float:
        errors = [float(model.row_errors(r, sampled_reference).sum()) for r in candidates]
        return candidates[min(range(len(errors)), key=errors.__getitem__)]

    model = SliceModel(x, sampled, *hardware)
    r = best_range([top * f for f in COARSE_FRACTIONS], model)
    chosen, clipped = weight, torch.zeros(weight.shape[0], dtype=torch.bool)
    if clip_weights:
        chosen, clipped = _clip_rows(x, weight, r, hardware)
        model = SliceModel(x, chosen if sample is None else chosen[sample], *hardware)
    r = best_range([r * f for f in FINE_FACTORS], model)
    error = float(model.row_errors(r, sampled_reference).sum())
    signal = float(sampled_reference.square().mean(dim=0).sum())
    sqnr = 10 * torch.log10(torch.tensor(max(signal, TINY) / max(error, TINY))).item()
    return SliceChoice(r, chosen, int(clipped.sum()), sqnr)


def _clip_rows(x: torch.Tensor, weight: torch.Tensor, input_range: float,
               hardware: tuple[float, float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights with each row clipped at the CLIP_RATIOS bound that lowers its error at
    `input_range` most, which rows were clipped); every row is scored."""
    reference = x @ weight.T
    best = SliceModel(x, weight, *hardware).row_errors(input_range, reference)
    std = weight.std(dim=1, keepdim=True)
    chosen, clipped = weight.clone(), torch.zeros(weight.shape[0], dtype=torch.bool)
    for ratio in CLIP_RATIOS:
        candidate = torch.minimum(torch.maximum(weight, -ratio * std), ratio * std)
        errors = SliceModel(x, candidate, *hardware).row_errors(input_range, reference)
        better = errors < best
        best = torch.where(better, errors, best)
        chosen[better] = candidate[better]
        clipped |= better
    return chosen, clipped


def _output_sample(rows: int, outputs: int | None) -> torch.Tensor | None:
    """`outputs` evenly spaced row indices of `rows` (first and last included), or None
    when that is all of them."""
    if outputs is None or rows <= outputs:
        return None
    return torch.linspace(0, rows - 1, outputs).round().long().unique()


@dataclass(frozen=True)
class LayerChoice:
    """The search's outcome for every slice of one layer."""

    input_ranges: list[float]
    weight: torch.Tensor | None  # [N, K] with the chosen clipping; None: no row clipped
    clipped_rows: int
    sqnr_db: float  # the worst slice's

    def annotate(self, record: LayerRecord) -> None:
        """Note the clipped rows and the worst slice's SQNR on the layer's record."""
        record.clipped_rows = self.clipped_rows
        record.sqnr_db = round(self.sqnr_db, 2)


def search_layer(samples: list[torch.Tensor], weight: torch.Tensor, sizes: list[int],
                 inp_res: float, out_res: float, out_bound: float,
                 clip_weights: bool, outputs: int | None = None) -> LayerChoice:
    """search_slice for each input slice of a [N, K] crossbar weight."""
    choices = [search_slice(x, w_s, inp_res, out_res, out_bound, clip_weights, outputs)
               for x, w_s in zip(samples, torch.split(weight, list(sizes), dim=-1),
                                 strict=True)]
    clipped = sum(choice.clipped_rows for choice in choices)
    return LayerChoice(
        [choice.input_range for choice in choices],
        torch.cat([choice.weight for choice in choices], dim=-1) if clipped else None,
        clipped, min(choice.sqnr_db for choice in choices))

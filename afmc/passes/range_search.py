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
product per candidate range) stops growing with N. Row clipping, which
chooses per row, and the reported SQNR use every row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from afmc.passes.layers import LayerRecord

COARSE_FRACTIONS = tuple(2.0 ** (-step / 2) for step in range(13))  # 1 .. 1/64 of max |x|
FINE_FACTORS = tuple(2.0 ** (step / 8) for step in range(-4, 5))
CLIP_RATIOS = (8.0, 6.0, 5.0, 4.0, 3.5, 3.0, 2.5)
_TINY = torch.finfo(torch.float32).tiny


@dataclass(frozen=True)
class SliceChoice:
    """The search's outcome for one slice."""

    input_range: float
    weight: torch.Tensor  # [N, k], clipped rows where that lowered the error
    clipped_rows: int
    sqnr_db: float  # of the chosen setting, on the sample


def slice_output(x: torch.Tensor, weight: torch.Tensor, input_range: float, inp_res: float,
                 out_res: float, out_bound: float) -> torch.Tensor:
    """DAC, crossbar product and ADC of one slice (HARDWARE.md steps 2-6, no noise)."""
    in_step = 2 * input_range / inp_res
    x_q = torch.round(x.clamp(-input_range, input_range) / in_step) * in_step
    y = x_q @ weight.T
    bound = out_bound * input_range * weight.abs().amax(dim=1).clamp_min(_TINY)
    out_step = 2 * bound / out_res
    return torch.clamp(torch.round(y / out_step) * out_step, -bound, bound)


def search_slice(x: torch.Tensor, weight: torch.Tensor, inp_res: float, out_res: float,
                 out_bound: float, clip_weights: bool, outputs: int | None = None) -> SliceChoice:
    """Input range (and row clipping) of one slice that minimise its output error, the
    range chosen on at most `outputs` evenly spaced weight rows (None: all)."""
    x, weight = x.float(), weight.float()
    reference = x @ weight.T
    top = float(x.abs().max().clamp_min(_TINY))
    sample = _output_sample(weight.shape[0], outputs)
    sampled_reference = reference if sample is None else reference[:, sample]

    def row_errors(r: float, w: torch.Tensor, expected: torch.Tensor = reference
                   ) -> torch.Tensor:
        diff = slice_output(x, w, r, inp_res, out_res, out_bound) - expected
        return diff.square().mean(dim=0)

    def best_range(candidates: list[float], w: torch.Tensor) -> float:
        part = w if sample is None else w[sample]
        errors = [float(row_errors(r, part, sampled_reference).sum()) for r in candidates]
        return candidates[min(range(len(errors)), key=errors.__getitem__)]

    r = best_range([top * f for f in COARSE_FRACTIONS], weight)
    chosen, clipped = weight, torch.zeros(weight.shape[0], dtype=torch.bool)
    if clip_weights:
        best = row_errors(r, weight)
        std = weight.std(dim=1, keepdim=True)
        chosen = weight.clone()
        for ratio in CLIP_RATIOS:
            candidate = torch.minimum(torch.maximum(weight, -ratio * std), ratio * std)
            errors = row_errors(r, candidate)
            better = errors < best
            best = torch.where(better, errors, best)
            chosen[better] = candidate[better]
            clipped |= better
    r = best_range([r * f for f in FINE_FACTORS], chosen)
    error = float(row_errors(r, chosen).sum())
    signal = float(reference.square().mean(dim=0).sum())
    sqnr = 10 * torch.log10(torch.tensor(max(signal, _TINY) / max(error, _TINY))).item()
    return SliceChoice(r, chosen, int(clipped.sum()), sqnr)


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

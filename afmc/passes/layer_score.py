"""A layer's expected relative error on the chip, for the compile's discrete choices.

Rule: for weights W [N, K] in input slices and calibration input rows x per slice
(weighted by their frequency, afmc.passes.row_sample), the
score of a choice (a smoothing strength, a number of outliers split off) is the
layer's expected squared output error on a chip of the noise model compiled for
(range_search.SliceModel with afmc.passes.chip_error's closed form), each slice at
its best input range among RANGE_FRACTIONS of its largest |x|, over the squared FP
output: a relative error, comparable between layers. It is taken on at most
SCORED_ROWS evenly spaced weight rows, as the calibration search samples rows.
With `split` outliers per row slice, the score is that of the dense part (the
sparse path is exact) against the whole layer's output.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from afmc.passes.chip_error import noise_scales
from afmc.passes.range_search import ChipNoise, SliceModel, output_sample, total
from afmc.passes.row_sample import WeightedRows

RANGE_FRACTIONS = tuple(2.0 ** -step for step in range(7))  # of the slice's largest |x|
SCORED_ROWS = 128


def split_indices(weight: torch.Tensor, sizes: list[int], count: int) -> torch.Tensor:
    """Column indices [N, count * slices] of the `count` largest |w| of every row of every
    input slice (ascending within each slice's group)."""
    groups, start = [], 0
    for size in sizes:
        top = weight[:, start:start + size].abs().topk(min(count, size), dim=1).indices
        groups.append(top.sort(dim=1).values + start)
        start += size
    return torch.cat(groups, dim=1)


def dense_part(weight: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """`weight` with the entries at `indices` (per row) set to 0."""
    return weight.scatter(1, indices, 0.0)


class LayerScore:
    """Expected relative chip error of one analog layer for each candidate count."""

    def __init__(self, samples: list[WeightedRows], weight: torch.Tensor, sizes: list[int],
                 hardware: tuple[float, float, float], noise: ChipNoise | None,
                 candidates: tuple[int, ...]) -> None:
        sample = output_sample(weight.shape[0], SCORED_ROWS)
        self.rows = torch.arange(weight.shape[0]) if sample is None else sample
        self.weight = weight.detach().float()
        self.sizes, self.hardware, self.noise = sizes, hardware, noise
        self.samples = [WeightedRows(rows.x.float(), rows.weights) for rows in samples]
        sampled = self.weight[self.rows]
        parts = torch.split(sampled, list(sizes), dim=-1)
        self.signal = sum(total(rows.mean((rows.x @ w.T).square()))
                          for rows, w in zip(self.samples, parts, strict=True))
        self.errors = {count: self.error(count) for count in candidates}

    def error(self, count: int) -> float:
        """Relative expected output error with `count` outliers per row slice moved out."""
        sampled = self.weight[self.rows]
        dense = dense_part(sampled, split_indices(sampled, self.sizes, count)) if count \
            else sampled
        noise = self.noise
        scales = noise_scales(dense, self.sizes, noise.model) if noise is not None \
            else [None] * len(self.sizes)
        error = 0.0
        for rows, w_s, scale in zip(self.samples, torch.split(dense, list(self.sizes), dim=-1),
                                    scales, strict=True):
            reference = rows.x @ w_s.T
            slice_noise = None if noise is None else replace(noise, scale=scale)
            model = SliceModel(rows, w_s, *self.hardware, slice_noise)
            top = float(rows.x.abs().max().clamp_min(1e-12))
            error += min(total(model.row_errors(top * f, reference))
                         for f in RANGE_FRACTIONS)
        return error / max(self.signal, 1e-30)

"""Output-error search of a crossbar slice's input range and its rows' weight clipping.

Rule, for one input slice of one analog layer (sample inputs x [R, k] with row
weights, afmc.passes.row_sample; weights W_s [N, k]): choose the static input range r
and, per weight row j, a clipping bound c_j * std(W_s[j]) (c_j from CLIP_RATIOS, or
none) that minimise the expected error on the chip, the rows' weighted mean of

    || analog(x; r, E[clip(W_s)]) - x @ W_s^T ||^2 + sum_j dac(x)^2 @ v_j:

the error of the slice's whole DAC + crossbar + ADC path (HARDWARE.md steps 2-6)
against the FP product with the original weights, with the programmed weights'
expectation and variance v of the noise model compiled for (afmc.passes.chip_error;
noise model ``none``: the noise-free error; with bit-sliced weights, the sum over the
digit blocks, each through its own ADC, SliceModel). The ADC bound ``out_bound * r * w_max``
couples the two: a smaller r or w_max gives finer DAC and ADC steps but clips more
inputs or weights. Search: r over a log grid below the largest |x|, then the rows'
clipping at that r (rows are independent given r), then r again on a finer grid around
the first choice.

The range is chosen on the error of at most ``outputs`` weight rows (output
channels), evenly spaced over the layer: each row's error is a term of the sum,
so a sample of rows estimates it, and the search's cost (one [R, k] x [k, N]
product per candidate range) stops growing with N. The reported SQNR is the
chosen setting's on the same rows; row clipping, which chooses per row, scores
every row.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from afmc.config import AfmcConfig
from afmc.ops.analog_linear import TINY, adc_, dac, row_max_abs
from afmc.passes.chip_error import noise_error, noise_scales, row_scales, weight_noise
from afmc.passes.layers import LayerRecord
from afmc.passes.row_sample import WeightedRows
from afmc.runtime.bit_slicing import digit_matrices, slice_bits
from afmc.runtime.noise import NoiseConfig

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


def total(values: torch.Tensor) -> float:
    """The sum of `values` in float64, in a fixed order (numpy's pairwise sum): torch
    splits large sums over threads, so their last bits, and a choice made on them, would
    follow the thread count."""
    return float(np.sum(values.detach().double().numpy()))


@dataclass(frozen=True)
class ChipNoise:
    """The programming noise a slice's search scores: the noise model, the device pairs
    per weight, the rows' noise scale (chip_error.noise_scales; None: the slice's own
    rows', chip_error.row_scales), and the bit slices per weight and the bits they hold
    (hardware.weight_slices, weight_bits; runtime.bit_slicing)."""

    model: NoiseConfig
    devices: int = 1
    scale: torch.Tensor | None = None  # [N], or [N, 2] for reram-cmo
    slices: int = 1
    weight_bits: int = 8

    @classmethod
    def of(cls, config: AfmcConfig) -> ChipNoise | None:
        """The noise a compile's searches score: the configured model, device pairs and
        bit slices with calibration.objective chip, None (noise-free scores) otherwise."""
        if config.calibration.objective != "chip":
            return None
        hardware = config.hardware
        return cls(config.noise, hardware.devices_per_weight, slices=hardware.weight_slices,
                   weight_bits=hardware.weight_bits)

    def rows(self, rows: torch.Tensor | None) -> ChipNoise:
        """The same noise for a subset of the slice's rows."""
        if self.scale is None or rows is None:
            return self
        return replace(self, scale=self.scale[rows])


class SliceModel:
    """One slice's DAC, crossbar product and ADC (HARDWARE.md steps 2-6) for fixed
    weighted input rows and weights (or a subset of their rows) at any input range, the
    rows' w_max taken once; with `noise`, the product is that of the expected programmed
    weights and the row errors add the programming noise's expected contribution. With
    `noise.slices` n > 1 (runtime.bit_slicing), the slice is n blocks: each digit matrix
    D_j's expected programmed weights (its own rows' scale) times its significance
    2^(j b), each through its own ADC (w_max of the block), summed; the variance is
    sum_j 4^(j b) v_j."""

    def __init__(self, rows: WeightedRows, weight: torch.Tensor, inp_res: float,
                 out_res: float, out_bound: float, noise: ChipNoise | None = None) -> None:
        self.rows = rows
        self.x = rows.x
        self.inp_res, self.out_res, self.out_bound = inp_res, out_res, out_bound
        self.blocks = [(weight, row_max_abs(weight))]  # (expected weights, w_max) per block
        self.variance = None
        if noise is not None and noise.slices > 1:
            self._sliced(weight, noise)
        elif noise is not None:
            scale = row_scales(weight, noise.model) if noise.scale is None else noise.scale
            expected, self.variance = weight_noise(weight, scale, noise.model, noise.devices)
            self.blocks = [(expected, self.blocks[0][1])]

    def _sliced(self, weight: torch.Tensor, noise: ChipNoise) -> None:
        bits = slice_bits(noise.weight_bits, noise.slices)
        digits = digit_matrices(weight.detach().numpy(), [weight.shape[1]], noise.slices,
                                noise.weight_bits, bits)
        self.blocks, variances = [], []
        for j, digit in enumerate(digits):
            d = torch.from_numpy(digit)
            significance = 2.0 ** (j * bits)
            expected, variance = weight_noise(d, row_scales(d, noise.model), noise.model,
                                              noise.devices)
            self.blocks.append((significance * expected, significance * row_max_abs(d)))
            if variance is not None:
                variances.append(significance ** 2 * variance)
        self.variance = sum(variances) if variances else None

    @property
    def weight(self) -> torch.Tensor:
        """The expected programmed weights the slice computes with (summed blocks)."""
        first, *rest = (expected for expected, _ in self.blocks)
        return sum(rest, first)

    def output(self, input_range: float, x_q: torch.Tensor | None = None) -> torch.Tensor:
        """The slice's output [R, N] at static input range `input_range` (`x_q`: the
        inputs' DAC levels at that range, if already at hand)."""
        if x_q is None:
            x_q = dac(self.x, input_range, self.inp_res)
        first, *rest = (adc_(x_q @ expected.T, input_range, w_max, self.out_res,
                             self.out_bound) for expected, w_max in self.blocks)
        return sum(rest, first)

    def row_errors(self, input_range: float, expected: torch.Tensor) -> torch.Tensor:
        """Expected squared error per weight row of the slice's output against
        `expected`, the weighted mean over the input rows."""
        x_q = dac(self.x, input_range, self.inp_res)
        errors = self.rows.mean(self.output(input_range, x_q).sub_(expected).square_())
        if self.variance is not None:
            errors += noise_error(self.rows.mean(x_q.square_()), self.variance)
        return errors


def search_slice(rows: WeightedRows, weight: torch.Tensor, inp_res: float, out_res: float,
                 out_bound: float, clip_weights: bool, outputs: int | None = None,
                 noise: ChipNoise | None = None,
                 fractions: tuple[float, ...] = COARSE_FRACTIONS) -> SliceChoice:
    """Input range (and row clipping) of one slice that minimise its expected output error
    on the chip (`noise`; None: noise-free), the range chosen on at most `outputs` evenly
    spaced weight rows (None: all) from `fractions` of the largest |x|, then refined."""
    rows = WeightedRows(rows.x.float(), rows.weights)
    x, weight = rows.x, weight.float()
    top = float(x.abs().max().clamp_min(TINY))
    sample = output_sample(weight.shape[0], outputs)
    sampled = weight if sample is None else weight[sample]
    sampled_reference = x @ sampled.T
    hardware = (inp_res, out_res, out_bound)
    sampled_noise = None if noise is None else noise.rows(sample)

    def best_range(candidates: list[float], model: SliceModel) -> float:
        errors = [total(model.row_errors(r, sampled_reference)) for r in candidates]
        return candidates[min(range(len(errors)), key=errors.__getitem__)]

    model = SliceModel(rows, sampled, *hardware, sampled_noise)
    r = best_range([top * f for f in fractions], model)
    chosen, clipped = weight, torch.zeros(weight.shape[0], dtype=torch.bool)
    if clip_weights:
        chosen, clipped = _clip_rows(rows, weight, r, hardware, noise)
        model = SliceModel(rows, chosen if sample is None else chosen[sample], *hardware,
                           None if noise is None else replace(noise, scale=None))
    r = best_range([r * f for f in FINE_FACTORS], model)
    error = total(model.row_errors(r, sampled_reference))
    signal = total(rows.mean(sampled_reference.square()))
    sqnr = 10 * torch.log10(torch.tensor(max(signal, TINY) / max(error, TINY))).item()
    return SliceChoice(r, chosen, int(clipped.sum()), sqnr)


def _clip_rows(rows: WeightedRows, weight: torch.Tensor, input_range: float,
               hardware: tuple[float, float, float], noise: ChipNoise | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights with each row clipped at the CLIP_RATIOS bound that lowers its expected
    error at `input_range` most, which rows were clipped); every row is scored, the
    clipped rows' noise at their own (smaller) max |w|."""
    reference = rows.x @ weight.T
    best = SliceModel(rows, weight, *hardware, noise).row_errors(input_range, reference)
    clipped_noise = None if noise is None else replace(noise, scale=None)
    std = weight.std(dim=1, keepdim=True)
    chosen, clipped = weight.clone(), torch.zeros(weight.shape[0], dtype=torch.bool)
    for ratio in CLIP_RATIOS:
        candidate = torch.minimum(torch.maximum(weight, -ratio * std), ratio * std)
        errors = SliceModel(rows, candidate, *hardware, clipped_noise).row_errors(
            input_range, reference)
        better = errors < best
        best = torch.where(better, errors, best)
        chosen[better] = candidate[better]
        clipped |= better
    return chosen, clipped


def output_sample(rows: int, outputs: int | None) -> torch.Tensor | None:
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


def search_layer(samples: list[WeightedRows], weight: torch.Tensor, sizes: list[int],
                 inp_res: float, out_res: float, out_bound: float,
                 clip_weights: bool, outputs: int | None = None,
                 chip: ChipNoise | None = None) -> LayerChoice:
    """search_slice for each input slice of a [N, K] crossbar weight, scored on `chip`
    (ChipNoise.of: the noise model, device pairs and bit slices; None: noise-free), each
    slice with its rows' noise scales."""
    scales = noise_scales(weight, sizes, chip.model) if chip is not None else [None] * len(sizes)
    choices = [search_slice(x, w_s, inp_res, out_res, out_bound, clip_weights, outputs,
                            None if chip is None else replace(chip, scale=scale))
               for x, w_s, scale in zip(samples, torch.split(weight, list(sizes), dim=-1),
                                        scales, strict=True)]
    clipped = sum(choice.clipped_rows for choice in choices)
    return LayerChoice(
        [choice.input_range for choice in choices],
        torch.cat([choice.weight for choice in choices], dim=-1) if clipped else None,
        clipped, min(choice.sqnr_db for choice in choices))

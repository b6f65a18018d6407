"""Calibration's rule, shared by both graph levels' calibrate passes (FX and ONNX adapters).

Rule (one SliceObserver per input slice of an analog layer, fed |x| of every calibration
batch): ``max`` keeps the largest |x|; ``percentile`` that percentile of |x| over a
uniform random sample of at most 2^20 values per slice and batch (the caller's seeded
generator); ``kappa-std`` the mean over batches of kappa * std(x); ``search`` keeps a
weighted row sample (afmc.passes.row_sample) for the range search. A range is never
below 1e-6. LayerCalibration turns one layer's observers into its ranges: the observed
statistic, or with ``search`` the range (and clipped weights) of the layer's search
(afmc.passes.range_search) on the chip of ``noise.model`` (objective ``chip``) or
noise-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from afmc.config import AfmcConfig, CalibrationConfig
from afmc.passes.range_search import ChipNoise, LayerChoice, search_layer
from afmc.passes.row_sample import RowSampler, WeightedRows

_SAMPLE = 1 << 20
RANGE_FLOOR = 1e-6  # the smallest input range calibration sets


class SliceObserver:
    """Statistics of one input slice across calibration batches."""

    def __init__(self, config: CalibrationConfig, generator: torch.Generator) -> None:
        self.config = config
        self.generator = generator
        self.maximum = 0.0
        self.stds: list[float] = []
        self.samples: list[np.ndarray] = []
        self.rows = RowSampler(config.search_rows) if config.method == "search" else None

    def update(self, values: torch.Tensor) -> None:
        flat = values.detach().reshape(-1).abs().float()
        method = self.config.method
        if method == "max":
            self.maximum = max(self.maximum, float(flat.max()))
        elif method == "kappa-std":
            self.stds.append(float(values.detach().float().std()))
        elif method == "search":
            self.rows.add(values)
        else:
            if flat.numel() > _SAMPLE:
                index = torch.randint(flat.numel(), (_SAMPLE,), generator=self.generator)
                flat = flat[index]
            self.samples.append(flat.numpy())

    def input_range(self) -> float:
        method = self.config.method
        if method == "max":
            value = self.maximum
        elif method == "kappa-std":
            value = self.config.kappa * float(np.mean(self.stds))
        else:
            value = float(np.percentile(np.concatenate(self.samples), self.config.percentile))
        return max(value, RANGE_FLOOR)

    def sample(self) -> WeightedRows:
        """search: at most search_rows uniform input rows and the extreme ones, weighted."""
        return self.rows.sample()


@dataclass(frozen=True)
class LayerCalibration:
    """The settings of a compile's calibration, and its rule for one layer's ranges."""

    calibration: CalibrationConfig
    chip: ChipNoise | None  # the chip the search scores (None: noise-free)

    @classmethod
    def of(cls, config: AfmcConfig) -> LayerCalibration:
        return cls(config.calibration, ChipNoise.of(config))

    def observers(self, slices: int, generator: torch.Generator) -> list[SliceObserver]:
        """One observer per input slice."""
        return [SliceObserver(self.calibration, generator) for _ in range(slices)]

    def ranges(self, slots: list[SliceObserver], weight: Callable[[], torch.Tensor],
               sizes: list[int], hardware: tuple[float, float, float]
               ) -> tuple[list[float], LayerChoice | None]:
        """The layer's input ranges from its observers, and with ``search`` the search's
        choice (clipped weights, notes for the record); `hardware` is (inp_res, out_res,
        out_bound) and `weight()` the [N, K] crossbar weight (read only by ``search``)."""
        if self.calibration.method != "search":
            return [slot.input_range() for slot in slots], None
        choice = search_layer([slot.sample() for slot in slots], weight(), list(sizes),
                              *hardware, self.calibration.clip_weights,
                              self.calibration.search_outputs, self.chip)
        return [max(r, RANGE_FLOOR) for r in choice.input_ranges], choice

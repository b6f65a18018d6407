"""The input-range statistics of calibration, shared by both graph levels' calibrate passes.

Rule (one SliceObserver per input slice of an analog layer, fed |x| of every calibration
batch): ``max`` keeps the largest |x|; ``percentile`` that percentile of |x| over a
uniform random sample of at most 2^20 values per slice and batch (the caller's seeded
generator); ``kappa-std`` the mean over batches of kappa * std(x); ``search`` keeps a
weighted row sample (afmc.passes.row_sample) for the range search. A range is never
below 1e-6.
"""

from __future__ import annotations

import numpy as np
import torch

from afmc.config import CalibrationConfig
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

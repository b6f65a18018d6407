"""A weighted sample of input rows that keeps the rare extreme ones: what the chip scores read.

Rule (stratified sampling): of all rows x [*, k] seen over the calibration batches (N
in all), the E = ``rows // EXTREME_SHARE`` rows of largest max |x| are kept whole,
each of weight 1 / N, and at most ``rows`` of the other N - E rows are drawn
uniformly (fixed seed), each of weight (N - E) / (N * drawn). The weighted mean of
any per-row quantity over the sample is then an unbiased estimate of its mean over
all N rows, as a uniform sample's plain mean is, but the rows that carry an LLM's
massive activations (one token of hundreds, values hundreds of times the others,
which a uniform sample of 128 rows of 8192 usually misses) always take part: they
decide whether a static input range clips them and whether smoothing or an outlier
split pays, and their share of the output error is counted at its true frequency.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EXTREME_SHARE = 8  # one row of the sample in 8 is an extreme row


@dataclass(frozen=True)
class WeightedRows:
    """Sample rows [R, k] and their weights [R], summing to 1 (the estimate of a mean
    over all rows is ``weights @ per_row``)."""

    x: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def uniform(cls, x: torch.Tensor) -> WeightedRows:
        """Rows of equal weight (a uniform sample: the plain mean)."""
        return cls(x, torch.full((x.shape[0],), 1.0 / max(x.shape[0], 1)))

    def split(self, sizes: list[int]) -> list[WeightedRows]:
        """The same rows cut into input slices of `sizes` columns."""
        return [WeightedRows(part, self.weights)
                for part in torch.split(self.x, list(sizes), dim=-1)]

    def mean(self, per_row: torch.Tensor) -> torch.Tensor:
        """The weighted mean over the rows (axis 0) of `per_row` [R, ...]."""
        return torch.tensordot(self.weights.to(per_row.dtype), per_row, dims=1)


class RowSampler:
    """Collects a WeightedRows sample of at most `rows` uniform rows plus the extreme ones
    from a stream of batches, with its own fixed-seed generator."""

    def __init__(self, rows: int, seed: int = 0) -> None:
        self.rows = rows
        self.extreme = max(1, rows // EXTREME_SHARE)
        self.generator = torch.Generator().manual_seed(seed)
        self.seen = 0
        self.top = torch.empty(0)
        self.top_max = torch.empty(0)
        self.top_ids = torch.empty(0, dtype=torch.long)
        self.drawn: list[torch.Tensor] = []
        self.drawn_ids: list[torch.Tensor] = []

    def add(self, values: torch.Tensor) -> None:
        """Observe the rows of `values` [..., k]."""
        flat = values.detach().reshape(-1, values.shape[-1]).float()
        ids = torch.arange(self.seen, self.seen + flat.shape[0])
        self.seen += flat.shape[0]
        pick = torch.randperm(flat.shape[0], generator=self.generator)[:self.rows]
        self.drawn.append(flat[pick])
        self.drawn_ids.append(ids[pick])
        row_max = flat.abs().amax(dim=1)
        keep = row_max.topk(min(self.extreme, flat.shape[0])).indices
        top = torch.cat([self.top.reshape(-1, flat.shape[1]), flat[keep]])
        top_max = torch.cat([self.top_max, row_max[keep]])
        top_ids = torch.cat([self.top_ids, ids[keep]])
        order = top_max.argsort(descending=True, stable=True)[:self.extreme]
        self.top, self.top_max, self.top_ids = top[order], top_max[order], top_ids[order]

    def sample(self) -> WeightedRows:
        """The extreme rows (weight 1 / N each) and a uniform draw of the rest."""
        if self.seen == 0:
            raise ValueError("no rows observed")
        extreme = self.top.shape[0]
        rest = torch.cat(self.drawn)
        rest = rest[~torch.isin(torch.cat(self.drawn_ids), self.top_ids)]
        rest = rest[torch.randperm(rest.shape[0], generator=self.generator)[:self.rows]]
        weights = torch.cat([
            torch.full((extreme,), 1.0 / self.seen, dtype=torch.float64),
            torch.full((rest.shape[0],), (self.seen - extreme)
                       / (self.seen * max(rest.shape[0], 1)), dtype=torch.float64)])
        return WeightedRows(torch.cat([self.top, rest]), (weights / weights.sum()).float())

"""The chip scores' row sample: extreme rows always in, weights that keep the mean exact."""

from __future__ import annotations

import torch

from afmc.passes.row_sample import EXTREME_SHARE, RowSampler, WeightedRows


def _batches(massive: float = 300.0) -> list[torch.Tensor]:
    """8 batches of [4, 256, 32] rows; one row of every batch (its first sequence's first
    token) has a massive activation in channel 5, as LLM residual streams do."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(8):
        x = torch.randn(4, 256, 32, generator=generator)
        x[0, 0, 5] = massive
        batches.append(x)
    return batches


def test_extreme_rows_are_kept_at_their_true_frequency():
    sampler = RowSampler(rows=128)
    batches = _batches()
    for batch in batches:
        sampler.add(batch)
    sample = sampler.sample()
    assert sample.x.shape == (128 // EXTREME_SHARE + 128, 32)
    massive = sample.x[:, 5] == 300.0
    assert int(massive.sum()) == 8  # all 8 massive rows, among the 16 extreme ones
    assert abs(float(sample.weights.sum()) - 1.0) < 1e-6
    assert abs(float(sample.weights[massive].sum()) - 8 / 8192) < 1e-7  # each stands for itself
    everything = torch.cat([b.reshape(-1, 32) for b in batches])
    # the mean square of channel 5, 8 rows of 8192 carrying nearly all of it: a uniform
    # sample of 128 rows holds none of them 88% of the time and misses it by 100x
    truth = float(everything[:, 5].square().mean())
    estimate = float(sample.mean(sample.x[:, 5].square()))
    assert abs(estimate / truth - 1) < 0.02


def test_a_uniform_sample_is_the_plain_mean():
    x = torch.randn(50, 8)
    rows = WeightedRows.uniform(x)
    torch.testing.assert_close(rows.mean(x.square()), x.square().mean(dim=0))
    parts = rows.split([5, 3])
    assert [p.x.shape[1] for p in parts] == [5, 3]
    assert all(p.weights is rows.weights for p in parts)


def test_without_extremes_the_estimate_is_unbiased():
    """Rows of one distribution: the weighted mean over repeated samplers (new seeds)
    centres on the population mean."""
    generator = torch.Generator().manual_seed(3)
    data = torch.randn(20, 64, 16, generator=generator).abs()
    truth = data.reshape(-1, 16).mean(dim=0)
    estimates = []
    for seed in range(100):
        sampler = RowSampler(rows=32, seed=seed)
        for batch in data:
            sampler.add(batch)
        sample = sampler.sample()
        estimates.append(sample.mean(sample.x))
    mean = torch.stack(estimates).mean(dim=0)
    torch.testing.assert_close(mean, truth, rtol=0.05, atol=0.0)

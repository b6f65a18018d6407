"""calibration.method=search: the slice model equals the op, the search never loses to
the largest |x|, clipping only where it helps, and the calibrate pass installs it all."""

from __future__ import annotations

import pytest
import torch
from analog_models import TwoInputMLP, two_input_data

import afmc.api
from afmc.config import load_config
from afmc.ops.analog_linear import ANALOG_LINEAR, analog_linear
from afmc.passes.range_search import COARSE_FRACTIONS, SliceModel, search_slice
from afmc.passes.row_sample import WeightedRows

HW = (254.0, 254.0, 14.0)


def _heavy_tailed(rows: int = 256, k: int = 64, n: int = 32) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, k, generator=generator)
    x[:, 3] *= 30  # one outlier channel, as in LLM activations
    w = torch.randn(n, k, generator=generator) * 0.02
    w[:, 7] *= 12  # and a heavy weight column
    return x, w


def _error(x, w_programmed, r, w_reference) -> float:
    model = SliceModel(WeightedRows.uniform(x), w_programmed, *HW)
    return float((model.output(r) - x @ w_reference.T).square().sum())


def test_slice_model_is_the_analog_op_on_one_slice():
    x, w = _heavy_tailed()
    r = 5.0
    expected = analog_linear(x, w, torch.tensor([r]), [x.shape[1]], *HW, 0.0)
    torch.testing.assert_close(SliceModel(WeightedRows.uniform(x), w, *HW).output(r), expected)


def test_search_beats_every_coarse_range_and_the_maximum():
    x, w = _heavy_tailed()
    choice = search_slice(WeightedRows.uniform(x), w, *HW, clip_weights=False)
    top = float(x.abs().max())
    best = _error(x, w, choice.input_range, w)
    assert all(best <= _error(x, w, top * f, w) + 1e-9 for f in COARSE_FRACTIONS)
    assert choice.input_range < top and choice.clipped_rows == 0
    assert torch.equal(choice.weight, w)
    signal = float((x @ w.T).square().sum())
    assert abs(choice.sqnr_db - 10 * torch.log10(torch.tensor(signal / best)).item()) < 1e-3


def test_search_on_a_sample_of_outputs():
    """search_outputs: with at least N outputs the sample is every row (the same choice);
    with fewer, the range is chosen on evenly spaced rows, first and last included, and
    stays within one fine step of the full search's on a wide layer."""
    from afmc.passes.range_search import FINE_FACTORS, output_sample

    x, w = _heavy_tailed(n=2048)
    full = search_slice(WeightedRows.uniform(x), w, *HW, clip_weights=False)
    assert search_slice(WeightedRows.uniform(x), w, *HW, clip_weights=False, outputs=2048) == full
    sample = output_sample(2048, 256)
    assert sample.tolist()[:2] == [0, 8] and sample.tolist()[-1] == 2047
    assert len(sample) == 256 and output_sample(100, 256) is None
    sampled = search_slice(WeightedRows.uniform(x), w, *HW, clip_weights=False, outputs=256)
    assert abs(sampled.input_range / full.input_range - 1) <= FINE_FACTORS[5] - 1 + 1e-9
    assert sampled.sqnr_db == pytest.approx(full.sqnr_db, abs=0.3)


def test_clipping_is_kept_only_where_it_lowers_the_row_error():
    x, w = _heavy_tailed()
    plain = search_slice(WeightedRows.uniform(x), w, *HW, clip_weights=False)
    clipped = search_slice(WeightedRows.uniform(x), w, *HW, clip_weights=True)
    assert _error(x, clipped.weight, clipped.input_range, w) <= _error(
        x, w, plain.input_range, w)
    changed = (clipped.weight != w).any(dim=1)
    assert int(changed.sum()) == clipped.clipped_rows > 0
    std = w.std(dim=1, keepdim=True)
    bound = clipped.weight.abs().amax(dim=1, keepdim=True)
    assert bool((bound[changed] <= 8.0 * std[changed] + 1e-7).all())  # clipped at k * std
    # each unclipped row is the original row
    assert torch.equal(clipped.weight[~changed], w[~changed])


def test_calibrate_search_installs_ranges_and_clipped_weights():
    x, extra = two_input_data()
    batches = [(x[i:i + 16], extra[i:i + 16]) for i in range(0, 64, 16)]
    torch.manual_seed(0)
    module = TwoInputMLP().eval()
    original = module.first.weight.detach().clone()
    config = load_config(None, ["calibration.method=search", "hardware.max_in=16",
                                "calibration.clip_weights=true"])
    result = afmc.api.compile(module, "aimc", config, example_inputs=(x[:4], extra[:4]),
                              calibration=batches)
    nodes = [n for n in result.program.graph.nodes if n.target is ANALOG_LINEAR]
    ranges = result.program.get_parameter(nodes[0].args[2].target).detach()
    first_slices = torch.split(x, [12, 12], dim=-1)
    assert bool((ranges <= torch.stack([s.abs().max() for s in first_slices]) + 1e-6).all())
    records = {r.name: r for r in result.layers}
    assert records["first"].calibrated == "search"
    assert records["first"].sqnr_db is not None
    torch.testing.assert_close(module.first.weight.detach(), original)  # FP model untouched
    assert result.record["layers"][0]["sqnr_db"] == records["first"].sqnr_db

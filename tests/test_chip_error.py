"""The chip objective's closed form (afmc.passes.chip_error) against sampled chips of the
runtime's noise models, and the range search that scores it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from afmc.passes.chip_error import noise_error, noise_scales, weight_noise
from afmc.passes.range_search import ChipNoise, search_layer
from afmc.passes.row_sample import WeightedRows
from afmc.runtime.noise import NoiseConfig, layer_rng, program_weights

SIZES = [96, 96]


def _layer(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Heavy-tailed weights [48, 192] (Student t, as LLM rows) and inputs [40, 192]."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    weight = torch.distributions.StudentT(3.0).sample((48, 192)) * 0.02
    x = torch.randn(40, 192, generator=generator)
    x[:, 7] *= 12.0  # an outlier input channel
    return weight, x


def _sampled_error(weight: torch.Tensor, x: torch.Tensor, noise: NoiseConfig,
                   chips: int, devices: int = 1) -> torch.Tensor:
    """Mean over chips of the squared output error per row [N] (no DAC/ADC)."""
    total = torch.zeros(weight.shape[0], dtype=torch.float64)
    w = weight.numpy()
    for seed in range(chips):
        programmed = program_weights(w, SIZES, noise, layer_rng(seed, 0), devices=devices)
        error = x.double() @ (torch.from_numpy(np.asarray(programmed)).double()
                              - weight.double()).T
        total += error.square().mean(dim=0)
    return total / chips


def _closed_form(weight: torch.Tensor, x: torch.Tensor, noise: NoiseConfig,
                 devices: int = 1) -> torch.Tensor:
    """The expected squared output error per row [N] by the closed form."""
    total = torch.zeros(weight.shape[0], dtype=torch.float64)
    scales = noise_scales(weight, SIZES, noise)
    for x_s, w_s, scale in zip(torch.split(x, SIZES, dim=-1), torch.split(weight, SIZES, dim=-1),
                               scales, strict=True):
        expected, variance = weight_noise(w_s, scale, noise, devices)
        bias = (x_s @ (expected - w_s).T).double().square().mean(dim=0)
        total += bias + noise_error(x_s.square().mean(dim=0), variance).double()
    return total


@pytest.mark.parametrize(("noise", "devices", "tolerance"), [
    (NoiseConfig(model="pcm"), 1, 0.08),
    (NoiseConfig(model="pcm"), 4, 0.08),
    (NoiseConfig(model="pcm", per_slice=False), 1, 0.08),
    (NoiseConfig(model="additive"), 1, 0.08),
    (NoiseConfig(model="additive"), 3, 0.08),
    # conductances clamped at 0 make the zero device's noise half-normal: the closed form
    # is an upper estimate there, so a wider band
    (NoiseConfig(model="pcm-drift", drift_time_s=0.0, drift_compensation=False), 1, 0.35),
    (NoiseConfig(model="pcm-drift", drift_time_s=86400.0), 1, 0.35),
    # reram-wan2022's rectified devices are exact in the closed form
    (NoiseConfig(model="reram-wan2022", drift_time_s=0.0, drift_compensation=False), 1, 0.08),
    (NoiseConfig(model="reram-wan2022", drift_time_s=86400.0, drift_compensation=False), 3,
     0.08),
    (NoiseConfig(model="reram-wan2022", drift_scaling="row"), 2, 0.08),
    # ... but not the compensation, which shrinks a day's fresh draw (an upper estimate)
    (NoiseConfig(model="reram-wan2022", drift_time_s=86400.0), 1, 0.25),
    (NoiseConfig(model="reram-cmo", drift_time_s=0.0), 1, 0.08),
    (NoiseConfig(model="reram-cmo", drift_time_s=0.0, cmo_acceptance_pct=2.0), 3, 0.08),
    (NoiseConfig(model="reram-cmo", drift_time_s=1e6, drift_compensation=False), 2, 0.08),
    (NoiseConfig(model="reram-cmo", drift_scaling="row", drift_compensation=False), 1, 0.08),
    (NoiseConfig(model="reram-cmo"), 1, 0.12),
])
def test_closed_form_matches_sampled_chips(noise, devices, tolerance):
    weight, x = _layer()
    sampled = _sampled_error(weight, x, noise, chips=300, devices=devices)
    expected = _closed_form(weight, x, noise, devices)
    ratio = float(expected.sum() / sampled.sum())
    assert abs(ratio - 1) < tolerance, ratio
    # row by row, too: the rows with the largest max |w| carry the most noise
    per_row = (expected / sampled).numpy()
    assert np.median(np.abs(per_row - 1)) < 2 * tolerance


def test_pcm_zeroes_exactly_the_weights_the_closed_form_names():
    weight, _ = _layer()
    w_s = weight[:, :96]
    expected, variance = weight_noise(w_s, w_s.abs().amax(dim=1), NoiseConfig(model="pcm"))
    zeroed = expected == 0
    programmed = program_weights(w_s.numpy(), [96], NoiseConfig(model="pcm"), layer_rng(0, 0))
    assert torch.equal(torch.from_numpy(np.asarray(programmed)) == 0, zeroed | (w_s == 0))
    assert bool((variance[zeroed] == 0).all())


def test_cmo_scales_are_the_rows_min_and_max():
    """reram-cmo maps [min w, max w] (of the layer, or of each row slice with
    drift_scaling=row) onto its conductance range: its scale is that pair per row."""
    weight, _ = _layer()
    layer = noise_scales(weight, SIZES, NoiseConfig(model="reram-cmo"))
    assert layer[0].shape == (48, 2)
    torch.testing.assert_close(layer[1][5], torch.stack([weight.min(), weight.max()]))
    rows = noise_scales(weight, SIZES, NoiseConfig(model="reram-cmo", drift_scaling="row"))
    torch.testing.assert_close(rows[1][:, 0], weight[:, 96:].amin(dim=1))
    torch.testing.assert_close(rows[1][:, 1], weight[:, 96:].amax(dim=1))


def test_range_search_scores_the_reram_chips():
    """The range search runs on both ReRAM models' closed forms (reram-cmo with its
    [N, 2] scales, from the layer and from a clipped slice's own rows)."""
    weight, x = _layer()
    samples = WeightedRows.uniform(x).split(SIZES)
    hardware = (254.0, 254.0, 14.0)
    clean = search_layer(samples, weight, SIZES, *hardware, True)
    for model in ("reram-wan2022", "reram-cmo"):
        chip = search_layer(samples, weight, SIZES, *hardware, True,
                            chip=ChipNoise(NoiseConfig(model=model)))
        assert chip.sqnr_db < clean.sqnr_db


def test_devices_divide_the_variance():
    weight, _ = _layer()
    scale = weight.abs().amax(dim=1)
    _, one = weight_noise(weight, scale, NoiseConfig(model="pcm"), 1)
    _, four = weight_noise(weight, scale, NoiseConfig(model="pcm"), 4)
    torch.testing.assert_close(four * 4, one)


def test_range_search_scores_the_chip():
    """With programming noise the search's objective rises by the closed-form term, so the
    reported SQNR of the chosen range falls; the noise-free search is unchanged by it."""
    weight, x = _layer()
    samples = WeightedRows.uniform(x).split(SIZES)
    hardware = (254.0, 254.0, 14.0)
    clean = search_layer(samples, weight, SIZES, *hardware, False)
    chip = search_layer(samples, weight, SIZES, *hardware, False, chip=ChipNoise(NoiseConfig()))
    assert chip.sqnr_db < clean.sqnr_db - 1
    none = search_layer(samples, weight, SIZES, *hardware, False,
                        chip=ChipNoise(NoiseConfig(model="none")))
    assert none.input_ranges == clean.input_ranges and none.sqnr_db == clean.sqnr_db


def test_sliced_slice_model_is_the_sliced_crossbar():
    """Noise-free, a bit-sliced SliceModel computes what the chip's node computes on the
    sliced layout: afmc's op over the n significance blocks, each with its own ADC."""
    from afmc.ops.analog_linear import analog_linear
    from afmc.passes.range_search import ChipNoise, SliceModel
    from afmc.runtime.bit_slicing import gather_index, program_sliced, sliced_sizes

    weight, x = _layer()
    w_s, x_s = weight[:, :96].contiguous(), x[:, :96].contiguous()
    noise = ChipNoise(NoiseConfig(model="none"), slices=2)
    model = SliceModel(WeightedRows.uniform(x_s), w_s, 254.0, 254.0, 14.0, noise)
    sliced = torch.from_numpy(program_sliced(w_s.numpy(), [96], 2, 8, None, program_weights))
    r = float(x_s.abs().max()) / 4
    expected = analog_linear(x_s[:, gather_index([96], 2)], sliced, torch.tensor([r, r]),
                             sliced_sizes([96], 2), 254.0, 254.0, 14.0, 0.0)
    torch.testing.assert_close(model.output(r), expected, rtol=1e-5, atol=1e-6)


def test_sliced_closed_form_matches_sampled_sliced_chips():
    """pcm with 2 bit slices: the expected squared output error (against the 8-bit weights
    the slices hold) of the closed form equals that of sampled sliced chips."""
    from afmc.passes.range_search import ChipNoise, SliceModel
    from afmc.runtime.bit_slicing import program_sliced, recombined

    weight, x = _layer()
    w_s, x_s = weight[:, :96].contiguous(), x[:, :96].contiguous().double()
    noise = NoiseConfig(model="pcm")
    quantized = torch.from_numpy(program_sliced(w_s.numpy(), [96], 2, 8, None,
                                                program_weights))
    target = recombined(quantized.numpy(), [96], 2)
    sampled = torch.zeros(w_s.shape[0], dtype=torch.float64)
    chips = 200
    for seed in range(chips):
        chip = program_sliced(w_s.numpy(), [96], 2, 8, layer_rng(seed, 0),
                              lambda d, rng: program_weights(d, [96], noise, rng))
        error = x_s @ torch.from_numpy(recombined(chip, [96], 2) - target).double().T
        sampled += error.square().mean(dim=0)
    sampled /= chips
    model = SliceModel(WeightedRows.uniform(x[:, :96]), w_s, 254.0, 254.0, 14.0,
                       ChipNoise(noise, slices=2))
    bias = (x_s @ (model.weight.double() - torch.from_numpy(target).double()).T)
    closed = bias.square().mean(dim=0) + noise_error(x_s.square().mean(dim=0).float(),
                                                     model.variance).double()
    assert float(closed.sum()) == pytest.approx(float(sampled.sum()), rel=0.08)


def test_range_search_scores_sliced_chips():
    """Four bit slices carry less programming noise than one: the chip objective's SQNR of
    the chosen ranges rises."""
    weight, x = _layer()
    samples = WeightedRows.uniform(x).split(SIZES)
    hardware = (254.0, 254.0, 14.0)
    one = search_layer(samples, weight, SIZES, *hardware, False, chip=ChipNoise(NoiseConfig()))
    four = search_layer(samples, weight, SIZES, *hardware, False,
                        chip=ChipNoise(NoiseConfig(), slices=4))
    assert four.sqnr_db > one.sqnr_db + 1

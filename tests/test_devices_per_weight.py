"""hardware.devices_per_weight: each weight on d device pairs, the read-out averaging them.

Proves: (1) the programming noise of a weight is the mean of d independent draws: for
pcm and additive its std is divided by sqrt(d) (measured on many weights against the
formula), pcm's zeroing of targets |g| < 0.6 stays exact, and for pcm-drift the spread
around the (not averaged) mean decay halves with d = 4; (2) d = 1 gives bit-identical
weights and chips to programming without the option, and the kernels' fast path equals
numpy's for d > 1; (3) the tile map and the compile plan count every layer's tiles d-fold
(d x n with n bit slices); (4) on afmc-tiny opened with d = 4 a chip's logits are closer
to the noise-free ones than with d = 1.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import afmc
from afmc.config import ConfigError, load_config
from afmc.mapping import TileMap, map_tiles
from afmc.mapping.blocks import TileMappingError
from afmc.runtime.noise import NoiseConfig, layer_rng, pcm_sigma, program_weights

GMAX = 180.0


def _levels(level: float, rows: int = 100, cols: int = 1000) -> np.ndarray:
    """[rows, cols + 1] weights: column 0 is each row's max |w| = 1 (|g| = GMAX), the
    others +-level / GMAX (target |g| = level)."""
    w = np.full((rows, cols + 1), level / GMAX, dtype=np.float32)
    w[:, 1::2] *= -1
    w[:, 0] = 1.0
    return w


@pytest.mark.parametrize("devices", [2, 4, 9])
@pytest.mark.parametrize("level", [10.0, 52.5, 120.0])
def test_pcm_std_is_sigma_over_sqrt_devices(level, devices):
    w = _levels(level)
    out = program_weights(w, [w.shape[1]], NoiseConfig(model="pcm", per_slice=False),
                          layer_rng(0, 0), devices=devices)
    noise = ((out.astype(np.float64) - w) * GMAX)[:, 1:]  # in conductance units
    expected = float(pcm_sigma(np.array(level))) / np.sqrt(devices)
    assert noise.std() == pytest.approx(expected, rel=0.02)  # 1e5 draws: 0.2% sampling error
    assert abs(noise.mean()) < 5 * expected / np.sqrt(noise.size)


def test_pcm_zeroing_is_not_averaged_away():
    """Targets |g| < 0.6 stay exactly 0 with d devices; those just above are noisy."""
    w = np.tile(np.array([GMAX, 0.3, -0.5, 0.59, 0.7, -0.8], dtype=np.float32) / GMAX, (500, 1))
    out = program_weights(w, [6], NoiseConfig(model="pcm"), layer_rng(1, 0), devices=4)
    assert np.all(out[:, 1:4] == 0.0)
    assert np.all(out[:, 4:] != 0.0)


@pytest.mark.parametrize("devices", [2, 4])
def test_additive_std_over_sqrt_devices(devices):
    w = np.random.default_rng(0).uniform(-1, 1, (200, 512)).astype(np.float32)
    wmax = np.abs(w).max(axis=1, keepdims=True)
    config = NoiseConfig(model="additive", per_slice=False, additive_std=0.05)
    out = program_weights(w, [512], config, layer_rng(2, 0), devices=devices)
    relative = (out.astype(np.float64) - w) / wmax
    assert relative.std() == pytest.approx(0.05 / np.sqrt(devices), rel=0.02)


def test_pcm_drift_averages_device_pairs():
    """pcm-drift with d = 4: each weight is the mean of 4 device-pair readings, so its
    spread around the mean (programming, drift-exponent and read noise) halves while the
    mean drift decay stays; compensation off, so the raw decay is seen."""
    w = _levels(90.0, rows=40, cols=2000)
    config = NoiseConfig(model="pcm-drift", drift_time_s=86400.0, drift_compensation=False,
                         drift_scaling="row")
    one = program_weights(w, [w.shape[1]], config, layer_rng(3, 0))[:, 1:] * np.sign(w[:, 1:])
    four = program_weights(w, [w.shape[1]], config, layer_rng(4, 0),
                           devices=4)[:, 1:] * np.sign(w[:, 1:])
    target = 90.0 / GMAX
    assert one.mean() < 0.85 * target  # a day of drift: the mean decays
    assert four.mean() == pytest.approx(one.mean(), abs=5 * one.std() / np.sqrt(one.size))
    assert four.std() / one.std() == pytest.approx(0.5, rel=0.03)


@pytest.mark.parametrize("model", ["pcm", "additive", "pcm-drift", "none"])
def test_one_device_is_bit_identical(model):
    w = np.random.default_rng(6).standard_normal((48, 300)).astype(np.float32)
    w[5] = 0.0
    config = NoiseConfig(model=model)
    before = program_weights(w, [128, 128, 44], config, layer_rng(7, 3))
    np.testing.assert_array_equal(
        program_weights(w, [128, 128, 44], config, layer_rng(7, 3), devices=1), before)
    if model != "none":
        assert not np.array_equal(
            program_weights(w, [128, 128, 44], config, layer_rng(7, 3), devices=2), before)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_devices_must_be_a_positive_integer(bad):
    w = np.ones((2, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="devices"):
        program_weights(w, [4], NoiseConfig(model="pcm"), layer_rng(0, 0), devices=bad)


def test_config_field():
    assert load_config(None, []).hardware.devices_per_weight == 1
    assert load_config(None, ["hardware.devices_per_weight=3"]).hardware.devices_per_weight == 3
    with pytest.raises(ConfigError, match="devices_per_weight"):
        load_config(None, ["hardware.devices_per_weight=0"])


def test_kernels_equal_numpy_with_devices(monkeypatch):
    """The fast path (programming kernels, program_prepared) gives numpy's numbers for
    d > 1, bit for bit."""
    from afmc.ops.analog_linear_onnx import prepare_weights
    from afmc.runtime.fused import programming
    from afmc.runtime.noise import program_prepared

    if not programming.available():
        pytest.skip("programming kernels not built here")
    weight = np.random.default_rng(5).standard_normal((96, 768)).astype(np.float32)
    weight[3] = 0.0
    sizes, slices = [256] * 3, 3
    config = NoiseConfig(model="pcm")
    attributes = {"out_res": 254.0, "inp_res": 254.0, "out_bound": 12.0}
    fast = program_weights(weight, sizes, config, layer_rng(1, 2), devices=4)
    fast_prepared = program_prepared(weight, sizes, config, layer_rng(1, 2), slices,
                                     attributes, devices=4)
    monkeypatch.setenv("AFMC_KERNELS", "0")
    assert not programming.available()
    slow = program_weights(weight, sizes, config, layer_rng(1, 2), devices=4)
    np.testing.assert_array_equal(fast, slow)
    expected = prepare_weights(slow, slices, **attributes)
    for got, want in zip([*fast_prepared[0], *fast_prepared[1]], [*expected[0], *expected[1]],
                         strict=True):
        np.testing.assert_array_equal(got, want)


def _layer(name: str, out_features: int, in_features: int, max_in: int = 512) -> dict:
    sizes = [min(max_in, in_features - start) for start in range(0, in_features, max_in)]
    return {"name": name, "in_features": in_features, "out_features": out_features,
            "placement": "analog", "slice_sizes": sizes}


@pytest.mark.parametrize("strategy", ["one-per-tile", "packed", "diagonal"])
def test_tile_map_counts_tiles_per_device(strategy):
    layers = [_layer("a", 1000, 1000), _layer("b", 64, 64), _layer("c", 64, 100)]
    one = map_tiles(layers, 512, 512, strategy)
    two = one.replicated(2)
    assert two.tiles == 2 * one.tiles
    assert two.layer_tiles() == {name: 2 * count for name, count in one.layer_tiles().items()}
    assert two.utilization == pytest.approx(one.utilization)
    assert one.replicated(1) is one
    again = TileMap.from_json(json.loads(json.dumps(two.to_json())))
    assert again == two and again.devices == 2
    with pytest.raises(TileMappingError, match="placed"):
        TileMap(two.strategy, two.rows, two.cols, two.tiles, two.placements)  # devices 1


@pytest.fixture(scope="module")
def tiny(compiled_tiny) -> dict[int, object]:
    """afmc-tiny compiled for aimc with its defaults (d = 1), opened with d = 1 and d = 4
    (afmc.load's override: the same compile, chips of 4 device pairs per weight)."""
    return {devices: afmc.load(compiled_tiny.output, devices_per_weight=devices)
            for devices in (1, 4)}


@pytest.mark.slow
def test_tiles_are_counted_per_device_and_bit_slice(compiled_tiny):
    """The compile plan (record.py's and compile_plan's rule: d x n copies) counts every
    layer's tiles d x n-fold; the compiled d = 1 record agrees with its plan."""
    from afmc.cli.compile_plan import plan_compile

    plans = {copies: plan_compile("afmc-tiny", "aimc", load_config(None, overrides))
             for copies, overrides in ((1, []), (4, ["hardware.devices_per_weight=4"]),
                                       (8, ["hardware.devices_per_weight=4",
                                            "hardware.weight_slices=2"]))}
    one = plans[1]
    for copies, plan in plans.items():
        assert plan.tiles == {k: copies * v for k, v in one.tiles.items()}
        assert [layer.tiles for layer in plan.layers] == [copies * layer.tiles
                                                          for layer in one.layers]
    record = json.loads((compiled_tiny.output / "afmc.json").read_text())
    assert record["summary"]["tiles_by_strategy"] == one.tiles
    assert record["tile_map"]["devices"] == 1


@pytest.mark.slow
def test_one_device_chip_is_the_chip_before(tiny):
    """d = 1: the chip's programmed weights are program_weights' without the option,
    and an output recorded before the option (no devices_per_weight key) gives the
    same chip."""
    model = tiny[1]
    runtime = model.runtime
    programmed = dict(runtime.programmed(5, runtime.noise))
    for index, layer in enumerate(runtime.analog):
        name, stored = runtime._stored(layer)
        np.testing.assert_array_equal(
            programmed[name],
            program_weights(stored, layer["slice_sizes"], runtime.noise, layer_rng(5, index)))
    ids = np.arange(64, dtype=np.int64).reshape(1, 64) % 200 + 32
    before = model.chip(5).run(ids)
    del runtime.record["config"]["hardware"]["devices_per_weight"]
    old = type(runtime)(runtime.out_dir, runtime.record, runtime.graph)
    assert old.devices == 1
    np.testing.assert_array_equal(old.chip(5).run(ids), before)


@pytest.mark.slow
def test_more_devices_bring_chips_closer_to_noise_free(tiny):
    text = ("def averaged(values):\n    return sum(values) / len(values)\n" * 8).encode()
    ids = np.frombuffer(text[:256], dtype=np.uint8).astype(np.int64).reshape(2, 128)
    errors = {}
    for devices, model in tiny.items():
        clean = model.chip(None).run(ids).astype(np.float64)
        errors[devices] = [np.linalg.norm(model.chip(seed).run(ids) - clean)
                           / np.linalg.norm(clean) for seed in (0, 1)]
    assert max(errors[4]) < min(errors[1])
    assert np.mean(errors[4]) < 0.75 * np.mean(errors[1])  # ideally 1/2 (std / sqrt(4))

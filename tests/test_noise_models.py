"""Statistics of the programming-noise models (shared/HARDWARE.md, "Evaluation noise models")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from afmc.runtime.noise import (
    AIHWKIT_MODELS,
    NoiseConfig,
    layer_rng,
    pcm_sigma,
    program_weights,
)

GMAX = 180.0
MODELS = ["none", "pcm", "additive", "pcm-drift", "reram-wan2022", "reram-cmo"]


def _program(weight: np.ndarray, slices: list[int], seed: int = 0, **config) -> np.ndarray:
    return program_weights(weight, slices, NoiseConfig(**config), layer_rng(seed, 0))


def _level_rows(level: float, n: int = 100, k: int = 1001) -> np.ndarray:
    """Rows whose max |w| is 1 (column 0, i.e. |g| = GMAX); every other entry has
    target |g| = level, with alternating signs."""
    w = np.full((n, k), level / GMAX, dtype=np.float32)
    w[:, 1::2] *= -1
    w[:, 0] = 1.0
    return w


def _normal_expectation(mu: float, sigma: float, fn, points: int = 80) -> float:
    """E[fn(Z)] for Z ~ N(mu, sigma^2), by Gauss-Hermite quadrature."""
    z, weights = np.polynomial.hermite_e.hermegauss(points)
    return float((weights * fn(mu + sigma * z)).sum() / weights.sum())


# --- pcm ------------------------------------------------------------------------------


def test_pcm_sigma_reference_points():
    sigma = pcm_sigma(np.array([0.0, 52.5, 120.0, 180.0]))
    np.testing.assert_allclose(sigma, [2.58, 8.4, 8.9, 19.2], atol=0.05)


def test_pcm_sigma_branches_are_polyval():
    g = np.array([0.0, 10.0, 52.5, 52.6, 100.0, 180.0])
    od = [2.939751381126213e-05, -0.00371581208142707, 0.22419685954327148, 2.5797410660159494]
    td = [1.2329755395573392e-05, -0.003054993405157235, 0.2453487119885723, 2.110295720240385]
    expected = np.where(g <= 52.5, np.polyval(od, g), np.polyval(td, g))
    np.testing.assert_allclose(pcm_sigma(g), expected, rtol=1e-12)
    np.testing.assert_allclose(pcm_sigma(g.astype(np.float32)), expected, rtol=1e-5)


@pytest.mark.parametrize("level", [5.0, 30.0, 52.5, 100.0, 180.0])
def test_pcm_noise_std_matches_sigma(level):
    w = _level_rows(level)
    g = _program(w, [w.shape[1]], model="pcm", per_slice=False).astype(np.float64) * GMAX
    noise = (g - w * GMAX)[:, 1:]  # 100_000 samples at |g| = level
    assert noise.size >= 100_000
    expected = float(pcm_sigma(np.array(level)))
    assert noise.std() == pytest.approx(expected, rel=0.03)
    assert abs(noise.mean()) < 5 * expected / np.sqrt(noise.size)


def test_pcm_zeroing_rule_is_exact():
    levels = np.array([0.0, 0.1, 0.3, 0.59, 0.599, 0.601, 0.61, 1.0, 5.0])
    w = np.tile(np.concatenate([[GMAX], levels, -levels]), (2000, 1)).astype(np.float32) / GMAX
    out = _program(w, [w.shape[1]], model="pcm")
    below = np.abs(w * GMAX) < 0.6
    assert np.all(out[below] == 0.0)
    assert np.all(out[~below] != 0.0)

    out = _program(w, [w.shape[1]], model="pcm", pcm_zero_threshold=1.0)
    below = np.abs(w * GMAX) < 1.0
    assert np.all(out[below] == 0.0)
    assert np.all(out[~below] != 0.0)


def test_pcm_per_slice_gives_each_slice_its_own_scale():
    """Slice 0 has max 1, slice 1 only max 0.01 (entries 0.01 and 0.002)."""
    n, k = 400, 256
    w = np.zeros((n, 2 * k), dtype=np.float32)
    w[:, :k] = 1.0
    w[:, k::2] = 0.01
    w[:, k + 1 :: 2] = 0.002
    big, small = slice(k, None, 2), slice(k + 1, None, 2)

    out = _program(w, [k, k], model="pcm", per_slice=True)
    # Slice 1 scaled by its own max 0.01: |g| = 180 and 36, nothing zeroed.
    assert np.all(out[:, small] != 0.0)
    for cols, g in ((big, 180.0), (small, 36.0)):
        noise = (out[:, cols] - w[:, cols]) / 0.01 * GMAX
        assert noise.std() == pytest.approx(float(pcm_sigma(np.array(g))), rel=0.03)

    out = _program(w, [k, k], model="pcm", per_slice=False)
    # Whole row scaled by 1: |g| = 1.8 and 0.36, the latter zeroed.
    assert np.all(out[:, small] == 0.0)
    noise = (out[:, big] - w[:, big]) * GMAX
    assert noise.std() == pytest.approx(float(pcm_sigma(np.array(1.8))), rel=0.03)


# --- additive -------------------------------------------------------------------------


@pytest.mark.parametrize("per_slice", [True, False])
def test_additive_std_relative_to_row_or_slice_max(per_slice):
    rng = np.random.default_rng(1)
    slices = [300, 300]
    w = rng.standard_normal((400, 600)).astype(np.float32)
    w[:, 300:] *= 0.05  # the second slice has a much smaller max
    out = _program(w, slices, model="additive", per_slice=per_slice, additive_std=0.05)
    if per_slice:
        wmax = np.concatenate(
            [np.abs(w[:, :300]).max(1, keepdims=True).repeat(300, 1),
             np.abs(w[:, 300:]).max(1, keepdims=True).repeat(300, 1)],
            axis=1,
        )  # fmt: skip
    else:
        wmax = np.abs(w).max(1, keepdims=True)
    relative = (out.astype(np.float64) - w) / wmax
    for cols in (slice(0, 300), slice(300, None)):
        assert relative[:, cols].std() == pytest.approx(0.05, rel=0.03)


def test_additive_std_zero_is_identity():
    w = np.random.default_rng(2).standard_normal((8, 20)).astype(np.float32)
    np.testing.assert_array_equal(_program(w, [10, 10], model="additive", additive_std=0.0), w)


# --- all models -----------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_seed_reproduces_the_chip(model):
    w = np.random.default_rng(3).standard_normal((32, 96)).astype(np.float32)
    a = _program(w, [48, 48], seed=5, model=model)
    b = _program(w, [48, 48], seed=5, model=model)
    assert a.dtype == np.float32 and a.shape == w.shape
    np.testing.assert_array_equal(a, b)
    if model != "none":
        assert not np.array_equal(a, _program(w, [48, 48], seed=6, model=model))
        other_layer = program_weights(w, [48, 48], NoiseConfig(model=model), layer_rng(5, 1))
        assert not np.array_equal(a, other_layer)


@pytest.mark.parametrize("model", MODELS)
def test_input_not_modified(model):
    w = np.random.default_rng(4).standard_normal((16, 64)).astype(np.float32)
    before = w.copy()
    out = _program(w, [32, 32], model=model)
    np.testing.assert_array_equal(w, before)
    out[...] = 0.0
    np.testing.assert_array_equal(w, before)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("per_slice", [True, False])
def test_all_zero_rows_stay_zero(model, per_slice):
    w = np.random.default_rng(5).standard_normal((6, 40)).astype(np.float32)
    w[2] = 0.0
    w[4, 20:] = 0.0  # an all-zero row-slice of a non-zero row
    # aihwkit's models by rows: with one scale per layer (their default) a zero weight is a
    # pair of idle devices (reram-cmo: a device mid-range) whose noise reads as a small
    # weight (as in aihwkit).
    extra = {"drift_scaling": "row"} if model in AIHWKIT_MODELS else {}
    with np.errstate(all="raise"):
        out = _program(w, [20, 20], model=model, per_slice=per_slice, pcm_zero_threshold=0.0,
                       **extra)
    assert np.all(np.isfinite(out))
    assert np.all(out[2] == 0.0)
    if per_slice:
        assert np.all(out[4, 20:] == 0.0)


def test_slice_sizes_must_sum_to_k():
    w = np.zeros((4, 1024), dtype=np.float32)
    with pytest.raises(ValueError, match=r"sum to 1000 but weight has K = 1024"):
        _program(w, [500, 500])
    with pytest.raises(ValueError, match="positive"):
        _program(w, [1024, 0])
    with pytest.raises(ValueError, match="2-D"):
        _program(np.zeros(8, dtype=np.float32), [8])


# --- pcm-drift ------------------------------------------------------------------------


def _negative_device_mean(t_inference: float, samples: int = 400_000) -> float:
    """E[g(t)] in uS of the idle device of a pair (target 0), from the spec's formulas."""
    rng = np.random.default_rng(123)
    g_prog = np.maximum(0.26348 * rng.standard_normal(samples), 0.0)
    nu = np.abs(0.1 + 0.045 * rng.standard_normal(samples))  # mu, s clipped at g ~ 0
    t = t_inference + 20.0
    g = g_prog * (t / 20.0) ** -nu
    q_s = np.minimum(0.0088 / np.maximum((g_prog / 25.0) ** 0.65, 1e-3), 0.2)
    read = q_s * np.sqrt(np.log((t + 250e-9) / 500e-9))
    return float(np.maximum(g + g * read * rng.standard_normal(samples), 0.0).mean())


@pytest.mark.parametrize("t_inference", [0.0, 20.0, 3600.0, 1e6])
def test_pcm_drift_mean_conductance_follows_drift_law(t_inference):
    """Without compensation, mean w(t) / w = E[(t / t0)^-nu] - E[g-(t)] / (25 uS x),
    with t = t0 + t_inference, t0 = 20 s and nu ~ |N(mu(x), s(x))|."""
    config = NoiseConfig(model="pcm-drift", drift_time_s=t_inference, drift_compensation=False)
    t = t_inference + 20.0
    idle = _negative_device_mean(t_inference)
    for x in (1.0, 0.1):  # g+ target = 25 uS * x
        mu = np.clip(-0.0155 * np.log(x) + 0.0244, 0.049, 0.1)
        s = np.clip(-0.0125 * np.log(x) - 0.0059, 0.008, 0.045)
        decay = _normal_expectation(mu, s, lambda nu: (t / 20.0) ** -np.abs(nu))
        w = np.full((256, 512), x, dtype=np.float32)
        w[:, 0] = 1.0
        out = program_weights(w, [512], config, layer_rng(0, 0))
        measured = out[:, 1:].mean(dtype=np.float64) / x
        assert measured == pytest.approx(decay - idle / (25.0 * x), rel=0.01)


def _pair_weight_samples(x: float, t_inference: float, samples: int = 400_000) -> np.ndarray:
    """w(t) / scale of a weight whose g+ target is 25 uS * x and g- target 0, drawn from
    the formulas of HARDWARE.md (programming, drift, 1/f read noise), independently of
    runtime.noise."""
    rng = np.random.default_rng(77)
    t = t_inference + 20.0
    devices = []
    for target in (x, 0.0):
        sigma = 0.26348 + 1.9650 * target - 1.1731 * target**2
        g_prog = np.maximum(25.0 * target + sigma * rng.standard_normal(samples), 0.0)
        log_x = np.log(max(target, 1e-7))
        mu = np.clip(-0.0155 * log_x + 0.0244, 0.049, 0.1)
        s = np.clip(-0.0125 * log_x - 0.0059, 0.008, 0.045)
        g = g_prog * (t / 20.0) ** -np.abs(mu + s * rng.standard_normal(samples))
        q_s = np.minimum(0.0088 / np.maximum((g_prog / 25.0) ** 0.65, 1e-3), 0.2)
        read = q_s * np.sqrt(np.log((t + 250e-9) / 500e-9))
        devices.append(np.maximum(g + g * read * rng.standard_normal(samples), 0.0))
    return (devices[0] - devices[1]) / 25.0


@pytest.mark.parametrize("scaling", ["layer", "row"])
def test_pcm_drift_maps_conductances_per_layer_or_per_row(scaling):
    """Rows of max 1 and rows of max 0.1 in one layer: with 'layer' (aihwkit's converter)
    the largest |w| of the layer maps to g_max, so the small rows' entries of 0.005 sit at
    x = 0.005 of g_max; with 'row' each row's max maps to g_max (x = 0.05). The programmed
    weights' mean and spread match samples drawn from the spec's formulas."""
    config = NoiseConfig(model="pcm-drift", drift_time_s=3600.0, drift_compensation=False,
                         drift_scaling=scaling, per_slice=False)
    w = np.full((400, 1000), 0.5, dtype=np.float32)
    w[:, 0] = 1.0
    w[200:] *= 0.1  # rows of max 0.1, entries 0.05
    out = program_weights(w, [1000], config, layer_rng(3, 0)).astype(np.float64)
    for rows, entry in ((slice(0, 200), 0.5), (slice(200, 400), 0.05)):
        scale = 1.0 if scaling == "layer" or entry == 0.5 else 0.1  # weight of g_max
        expected = _pair_weight_samples(entry / scale, 3600.0) * scale
        measured = out[rows, 1:]
        assert measured.mean() == pytest.approx(expected.mean(), rel=0.01)
        assert measured.std() == pytest.approx(expected.std(), rel=0.03)


def test_pcm_drift_compensation_restores_mean_output():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((256, 1024)).astype(np.float32)
    x = rng.standard_normal((64, 1024)).astype(np.float32)
    slices = [512, 512]

    def mean_abs_output(weight: np.ndarray) -> float:
        return float(np.abs(x @ weight.T).mean())

    def chip(t: float, compensation: bool) -> np.ndarray:
        config = NoiseConfig(model="pcm-drift", drift_time_s=t, drift_compensation=compensation)
        return program_weights(w, slices, config, layer_rng(9, 2))

    reference = chip(0.0, True)  # same programming and nu, no drift
    drifted = chip(1e6, False)
    compensated = chip(1e6, True)
    assert mean_abs_output(drifted) < 0.7 * mean_abs_output(reference)
    assert mean_abs_output(compensated) == pytest.approx(mean_abs_output(reference), rel=0.03)
    # ... on the readout input (the one-hot vectors) exactly:
    assert np.abs(compensated).mean() == pytest.approx(np.abs(reference).mean(), rel=0.03)
    # ... by a single scalar for the whole layer.
    nonzero = drifted != 0
    alpha = compensated[nonzero] / drifted[nonzero]
    np.testing.assert_allclose(alpha, alpha[0], rtol=1e-5)
    assert alpha[0] > 1.3


# --- configuration and streams --------------------------------------------------------


def test_noise_config_defaults_and_validation():
    config = NoiseConfig()
    assert (config.model, config.per_slice, config.pcm_gmax) == ("pcm", True, 180.0)
    assert (config.additive_std, config.pcm_zero_threshold) == (0.05, 0.6)
    assert (config.drift_time_s, config.drift_compensation) == (3600.0, True)
    bad = [
        {"model": "gauss"},
        {"additive_std": -0.1},
        {"pcm_gmax": 0.0},
        {"pcm_zero_threshold": -1.0},
        {"drift_time_s": -1.0},
        {"cmo_acceptance_pct": 1.0},
        {"pcm_gmax": float("nan")},
        {"unknown": 1},
    ]
    for fields in bad:
        with pytest.raises(ValidationError, match=next(iter(fields))):
            NoiseConfig(**fields)
    with pytest.raises(ValidationError):
        config.model = "none"
    with pytest.raises(ValidationError, match="reram-wan2022 is fitted at 1 s, 1 day and 2 days"):
        NoiseConfig(model="reram-wan2022", drift_time_s=172801.0)
    assert NoiseConfig(model="reram-cmo", cmo_acceptance_pct=2).cmo_acceptance_pct == 2.0


def test_layer_rng_streams():
    a = layer_rng(7, 3).standard_normal(1000)
    np.testing.assert_array_equal(a, layer_rng(7, 3).standard_normal(1000))
    for other in (layer_rng(7, 4), layer_rng(8, 3)):
        b = other.standard_normal(1000)
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.15
    with pytest.raises(ValueError, match="layer_index"):
        layer_rng(0, -1)


@pytest.mark.parametrize("t_inference", [0.0, 3600.0, 1e6])
def test_pcm_drift_matches_aihwkit_statistics(t_inference):
    """The drifted weights of a layer against aihwkit 1.2.0's PCMLikeNoiseModel (default
    SinglePairConductanceConverter, programmed then drifted as its inference tiles do):
    mean |w(t)| and the spread of w(t) - w agree. aihwkit ships as a source archive that
    needs a C++ build; its noise models are pure Python, so the test runs wherever
    `aihwkit.inference` imports (docs/evaluation.md gives the command)."""
    pcm = pytest.importorskip("aihwkit.inference.noise.pcm")
    w = np.random.default_rng(11).standard_normal((256, 768)).astype(np.float32)
    torch.manual_seed(0)
    peer = pcm.PCMLikeNoiseModel()
    programmed, drift = peer.apply_programming_noise(torch.from_numpy(w))
    theirs = peer.apply_drift_noise(programmed, drift, t_inference).numpy().astype(np.float64)
    config = NoiseConfig(model="pcm-drift", drift_time_s=t_inference, drift_compensation=False)
    ours = program_weights(w, [256, 256, 256], config, layer_rng(0, 0)).astype(np.float64)
    assert np.abs(ours).mean() == pytest.approx(np.abs(theirs).mean(), rel=0.01)
    assert (ours - w).std() == pytest.approx((theirs - w).std(), rel=0.03)

"""The ReRAM noise models (afmc.runtime.reram) against aihwkit 1.2.0's formulas.

The coefficients below are transcribed from aihwkit 1.2.0,
src/aihwkit/inference/noise/reram.py (``ReRamWan2022NoiseModel.__init__``'s
``coeff_dic``, listed there highest power first and reversed; ``ReRamCMONoiseModel.
__init__``'s ``coeff_dict``, ``decay_dict`` and ``read_dict``) and
src/aihwkit/inference/converter/conductance.py (g_max 25 uS of
``SinglePairConductanceConverter``; g_min 9, g_max 88.199997 uS of
``SingleDeviceConductanceConverter``), independently of afmc's constants. Each test
samples a layer of 100 000 weights per conductance level and holds the measured std
(and mean) of the programming error against the formula: within 2% for the std, the
mean within 5 standard errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from afmc.runtime.noise import NoiseConfig, layer_rng, program_weights

# aihwkit 1.2.0 reram.py, ReRamWan2022NoiseModel: {time: [c4, c3, c2, c1, c0]} in uS
WAN = {
    1.0: [-16.815, 45.393, -43.853, 16.030, 0.348],
    3600 * 24.0: [-16.458, 47.095, -50.773, 22.086, 0.701],
    3600 * 24.0 * 2: [-11.934, 37.062, -43.507, 20.274, 0.782],
}
WAN_G_MAX = 25.0
# aihwkit 1.2.0 reram.py, ReRamCMONoiseModel: {acceptance %: [a1, a0]} in uS
CMO = {0.2: [0.00106879, 0.00081107], 2.0: [0.01129027418, 0.0112185391]}
CMO_G_MIN, CMO_G_MAX = 9.0, 88.199997
CMO_DECAY_MEAN, CMO_DECAY_STD = -0.08900206, (0.04201137, 0.41183342)  # [s1, s0]
CMO_K, CMO_T_READ = 0.0277316483, 1e-6


def _wan_sigma(x: float, fit_time: float) -> float:
    """The quartic as aihwkit evaluates it (numpy.polyval of its highest-first list)."""
    return float(np.polyval(WAN[fit_time], x))


def _rectified(mu: float, sigma: float) -> tuple[float, float]:
    """(mean, variance) of max(mu + sigma Z, 0), Z ~ N(0, 1), by Gauss-Hermite."""
    z, weights = np.polynomial.hermite_e.hermegauss(120)
    y = np.maximum(mu + sigma * z, 0.0)
    mean = float((weights * y).sum() / weights.sum())
    return mean, float((weights * y**2).sum() / weights.sum()) - mean**2


def _level_layer(level: float, n: int = 100, k: int = 1001) -> np.ndarray:
    """A layer of max |w| = 1 (column 0) whose other weights are +level (the g+ device
    programmed to 25 uS * level, g- idle)."""
    w = np.full((n, k), level, dtype=np.float32)
    w[:, 0] = 1.0
    return w


@pytest.mark.parametrize(("fit_time", "time_s"), [(1.0, 0.0), (1.0, 3600.0),
                                                  (86400.0, 86400.0), (172800.0, 172800.0)])
@pytest.mark.parametrize("level", [0.0, 0.1, 0.3, 0.6, 1.0])
def test_wan2022_std_per_level_is_the_quartic(fit_time, time_s, level):
    """w = (g+ - g-) / 25 uS with g = max(target + sigma_k(g / 25) N, 0) for both devices:
    mean and variance of the rectified normals of the fit at the evaluation time (the
    fit of 1 s before 1 day)."""
    config = NoiseConfig(model="reram-wan2022", drift_time_s=time_s, drift_compensation=False)
    w = _level_layer(level)
    out = program_weights(w, [w.shape[1]], config, layer_rng(0, 0)).astype(np.float64)
    error = (out - w)[:, 1:] * WAN_G_MAX  # uS
    active = _rectified(WAN_G_MAX * level, _wan_sigma(level, fit_time))
    idle = _rectified(0.0, _wan_sigma(0.0, fit_time))
    std = np.sqrt(active[1] + idle[1])
    assert error.std() == pytest.approx(std, rel=0.02)
    mean = active[0] - idle[0] - WAN_G_MAX * level
    assert abs(error.mean() - mean) < 5 * std / np.sqrt(error.size)


def test_wan2022_reads_a_fresh_draw_after_a_day():
    """Before a day the chip is its programming; from a day on, a new draw around the
    target (aihwkit draws the long-term deviation anew), uncorrelated with it."""
    w = np.random.default_rng(1).standard_normal((200, 500)).astype(np.float32)

    def chip(time_s: float) -> np.ndarray:
        config = NoiseConfig(model="reram-wan2022", drift_time_s=time_s,
                             drift_compensation=False)
        return program_weights(w, [250, 250], config, layer_rng(4, 0)).astype(np.float64)

    programmed = chip(0.0)
    np.testing.assert_array_equal(programmed, chip(86399.0))
    later = chip(86400.0)
    correlation = np.corrcoef((programmed - w).ravel(), (later - w).ravel())[0, 1]
    assert abs(correlation) < 0.02


@pytest.mark.parametrize("acceptance", [0.2, 2.0])
@pytest.mark.parametrize("level", [0.0, 0.25, 0.5, 1.0])
def test_cmo_std_per_level_is_the_linear_fit(acceptance, level):
    """One device per weight, the layer's [min w, max w] = [-1, 1] on [g_min, g_max]: the
    weight at unit u = (w + 1) / 2 sits at g = g_min + u (g_max - g_min), programmed to
    g + (a0 + a1 g) N, unclamped."""
    config = NoiseConfig(model="reram-cmo", drift_time_s=0.0, cmo_acceptance_pct=acceptance)
    w = np.full((100, 1002), 2 * level - 1, dtype=np.float32)
    w[:, 0], w[:, 1] = -1.0, 1.0
    out = program_weights(w, [w.shape[1]], config, layer_rng(2, 0)).astype(np.float64)
    per_us = 2.0 / (CMO_G_MAX - CMO_G_MIN)
    error = (out - w)[:, 2:] / per_us
    g = CMO_G_MIN + level * (CMO_G_MAX - CMO_G_MIN)
    std = float(np.polyval(CMO[acceptance], g))
    assert error.std() == pytest.approx(std, rel=0.02)
    assert abs(error.mean()) < 5 * std / np.sqrt(error.size)


def _cmo_samples(g: float, t: float, samples: int = 100_000) -> np.ndarray:
    """Conductance error at time t of a device at target g (0.2 % acceptance), drawn from
    aihwkit's formulas (apply_drift_noise_to_conductance), independently of afmc."""
    rng = np.random.default_rng(8)
    g_prog = g + np.polyval(CMO[0.2], g) * rng.standard_normal(samples)
    log_t = np.log(t)
    g_d = g_prog + CMO_DECAY_MEAN * log_t
    g_d = g_d + (CMO_DECAY_STD[0] * log_t + CMO_DECAY_STD[1]) * rng.standard_normal(samples)
    read = CMO_K * np.log10(g_d) * np.sqrt(np.log((t + CMO_T_READ) / (2 * CMO_T_READ)))
    return np.clip(g_d + read * rng.standard_normal(samples), CMO_G_MIN, CMO_G_MAX) - g


@pytest.mark.parametrize("time_s", [1.0, 3600.0, 1e6])
@pytest.mark.parametrize("level", [0.0, 0.5, 1.0])
def test_cmo_relaxation_and_read_noise(time_s, level):
    """Mean shift -0.089 ln t, spread 0.042 ln t + 0.412 uS and read noise
    K log10(g) sqrt(ln((t + t_read) / (2 t_read))), clamped to [g_min, g_max]: the
    programmed layer's error matches samples of the formulas (mean within 2% of the std
    where the clamp leaves a shift, std within 2%)."""
    config = NoiseConfig(model="reram-cmo", drift_time_s=time_s, drift_compensation=False)
    w = np.full((100, 1002), 2 * level - 1, dtype=np.float32)
    w[:, 0], w[:, 1] = -1.0, 1.0
    out = program_weights(w, [w.shape[1]], config, layer_rng(3, 0)).astype(np.float64)
    error = (out - w)[:, 2:] * (CMO_G_MAX - CMO_G_MIN) / 2.0
    expected = _cmo_samples(CMO_G_MIN + level * (CMO_G_MAX - CMO_G_MIN), time_s)
    assert error.std() == pytest.approx(expected.std(), rel=0.02)
    assert error.mean() == pytest.approx(expected.mean(), abs=0.02 * expected.std())


@pytest.mark.parametrize("scaling", ["layer", "row"])
def test_cmo_maps_the_layer_or_each_row(scaling):
    """Rows spanning [-1, 1] and rows spanning [0, 0.1]: with 'layer' all share the map
    of [-1, 1] (the small rows' noise in weight units as large as the big rows'); with
    'row' each row's [min, max] has the whole conductance range (noise 20x smaller)."""
    config = NoiseConfig(model="reram-cmo", drift_time_s=0.0, drift_scaling=scaling,
                         per_slice=False)
    w = np.tile(np.linspace(-1.0, 1.0, 1000, dtype=np.float32), (200, 1))
    w[100:] = np.linspace(0.0, 0.1, 1000, dtype=np.float32)
    out = program_weights(w, [1000], config, layer_rng(5, 0)).astype(np.float64)
    big, small = (out - w)[:100], (out - w)[100:]
    ratio = small.std() / big.std()
    # g of the small rows: mid-range with 'layer' (sigma grows with g), whole range with 'row'
    g = CMO_G_MIN + np.linspace(0.0, 1.0, 1000) * (CMO_G_MAX - CMO_G_MIN)
    g_small = CMO_G_MIN + np.linspace(0.5, 0.55, 1000) * (CMO_G_MAX - CMO_G_MIN)
    rms = np.sqrt(np.mean(np.polyval(CMO[0.2], g) ** 2))
    if scaling == "layer":
        expected = np.sqrt(np.mean(np.polyval(CMO[0.2], g_small) ** 2)) / rms
    else:
        expected = 0.1 / 2.0
    assert ratio == pytest.approx(expected, rel=0.03)


def test_compensation_is_one_scalar_per_layer():
    w = np.random.default_rng(6).standard_normal((64, 256)).astype(np.float32)
    for model in ("reram-wan2022", "reram-cmo"):
        def chip(compensation: bool, model: str = model) -> np.ndarray:
            config = NoiseConfig(model=model, drift_time_s=86400.0,
                                 drift_compensation=compensation)
            return program_weights(w, [128, 128], config, layer_rng(7, 0))

        raw, compensated = chip(False), chip(True)
        alpha = compensated[raw != 0] / raw[raw != 0]
        np.testing.assert_allclose(alpha, alpha[0], rtol=1e-5)


@pytest.mark.parametrize("model", ["reram-wan2022", "reram-cmo"])
def test_devices_average_the_draws(model):
    """d devices per weight: the mean of d full draws (variance / d where the noise is
    unclamped: reram-cmo at t = 0)."""
    w = np.random.default_rng(9).standard_normal((128, 512)).astype(np.float32)
    config = NoiseConfig(model=model, drift_time_s=0.0)
    one = program_weights(w, [512], config, layer_rng(1, 0)) - w
    four = program_weights(w, [512], config, layer_rng(1, 0), devices=4) - w
    assert four.std() == pytest.approx(one.std() / 2, rel=0.1)


@pytest.mark.parametrize("model", ["ReRamWan2022NoiseModel", "ReRamCMONoiseModel"])
def test_programming_matches_aihwkit(model):
    """The programmed weights of a layer against aihwkit 1.2.0's own model (defaults,
    its converter's one scale per layer): mean |w| within 1%, std of w_prog - w within
    3%. Runs where `aihwkit.inference` imports (docs/evaluation.md gives the command)."""
    reram = pytest.importorskip("aihwkit.inference.noise.reram")
    w = np.random.default_rng(11).standard_normal((256, 768)).astype(np.float32)
    torch.manual_seed(0)
    theirs, _ = getattr(reram, model)().apply_programming_noise(torch.from_numpy(w))
    theirs = theirs.numpy().astype(np.float64)
    name = {"ReRamWan2022NoiseModel": "reram-wan2022", "ReRamCMONoiseModel": "reram-cmo"}
    config = NoiseConfig(model=name[model], drift_time_s=0.0)
    ours = program_weights(w, [256, 256, 256], config, layer_rng(0, 0)).astype(np.float64)
    assert np.abs(ours).mean() == pytest.approx(np.abs(theirs).mean(), rel=0.01)
    assert (ours - w).std() == pytest.approx((theirs - w).std(), rel=0.03)

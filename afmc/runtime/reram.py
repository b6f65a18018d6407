"""aihwkit 1.2.0's ReRAM inference noise models (aihwkit/inference/noise/reram.py), per block.

Both act on a block already mapped to unit range by afmc.runtime.noise (one scale per
layer, as aihwkit's conductance converters, or per row / row slice); both return the
block (in that unit) programmed, and read at the evaluation time. Conductances in uS.

- ``reram-wan2022`` (``ReRamWan2022NoiseModel``, Wan et al., Nature 608, 504 (2022)):
  a pair of devices per weight as aihwkit's default ``SinglePairConductanceConverter``
  (g_max = 25 uS): target g+ = 25 max(u, 0), g- = 25 max(-u, 0) for u = w / max|w|.
  A reading at fitted time t_k is max(g + sigma_k(x) N(0, 1), 0) with x = g / 25 and
  sigma_k the quartic of ``WAN_SIGMA`` in uS, fitted at 1 s, 1 day and 2 days. The
  programmed chip is the 1 s reading (aihwkit's programming noise: its smallest time).
  aihwkit draws the deviation at a later time anew around the *target* (no memory of
  the programming draw), so the reading at ``drift_time_s`` is: the programmed chip
  before 1 day, a fresh draw of the 1-day fit from 1 day, of the 2-day fit from 2 days
  (:func:`wan_fit_time`; aihwkit has no fit in between and none later).
- ``reram-cmo`` (``ReRamCMONoiseModel``, CMO/HfOx devices, IBM Research Zurich): one
  device per weight, the block's [min w, max w] mapped affinely onto
  [9, 88.199997] uS (aihwkit's ``SingleDeviceConductanceConverter``, u = (w - min) /
  (max - min)). Programming: g + (a0 + a1 g) N(0, 1), not clamped, with (a0, a1) of the
  program-and-verify acceptance range (``CMO_SIGMA``; aihwkit 1.2.0's default
  ``acceptance_range=2e-2`` matches neither key and falls back to the smaller, 0.2 %).
  At t = ``drift_time_s`` > 0: relaxation g_d = g_prog - 0.08900206 ln t +
  (0.04201137 ln t + 0.41183342) N(0, 1), then read noise g_d + K log10(g_d)
  sqrt(ln((t + t_read) / (2 t_read))) N(0, 1) with K = 0.0277316483, t_read = 1 us,
  clamped to [9, 88.199997]; t = 0 is the programmed chip.

Where afmc departs from aihwkit 1.2.0, it is where aihwkit's arithmetic breaks or
rescales by accident: aihwkit re-derives the conductances of the later reading from the
*programmed* weights' own scale (max |w_prog|, or min and max of w_prog), which rescales
them by the programming noise's extremes; afmc reads the programmed conductances
directly. log10 of a relaxed conductance <= 0 and the square root of a negative log
(t < 1 us) give NaN in aihwkit; afmc floors the conductance at 1e-7 uS and the log at 0.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np

Array = TypeVar("Array")  # np.ndarray or torch.Tensor: the formulas use only + and *

# ReRamWan2022NoiseModel: sigma(x) = c0 + c1 x + ... + c4 x^4 uS, x = g / g_max, per fitted
# time in seconds (aihwkit lists them highest power first and reverses them).
WAN_G_MAX = 25.0
WAN_SIGMA: dict[float, tuple[float, ...]] = {
    1.0: (0.348, 16.030, -43.853, 45.393, -16.815),
    86400.0: (0.701, 22.086, -50.773, 47.095, -16.458),
    172800.0: (0.782, 20.274, -43.507, 37.062, -11.934),
}
WAN_LAST_FIT = max(WAN_SIGMA)

# ReRamCMONoiseModel: programming sigma = a0 + a1 g uS per acceptance range (% of target).
CMO_G_MIN = 9.0
CMO_G_MAX = 88.199997
CMO_SIGMA: dict[float, tuple[float, float]] = {
    0.2: (0.00081107, 0.00106879),
    2.0: (0.0112185391, 0.01129027418),
}
CMO_DECAY_MEAN = -0.08900206  # uS per ln(t / 1 s)
CMO_DECAY_STD = (0.04201137, 0.41183342)  # uS: s1 ln t + s0
CMO_READ_K = 0.0277316483
CMO_T_READ = 1e-6
_G_FLOOR = 1e-7


def wan_fit_time(t_inference: float) -> float:
    """The fitted time of ``reram-wan2022`` read at `t_inference` seconds: the latest of
    1 s, 1 day, 2 days not after it (1 s before 1 day). ValueError after 2 days, which
    aihwkit has no fit for."""
    if t_inference > WAN_LAST_FIT:
        raise ValueError(f"reram-wan2022 is fitted at 1 s, 1 day and 2 days only: "
                         f"drift_time_s must be <= {WAN_LAST_FIT:g}, got {t_inference:g}")
    return max(t for t in WAN_SIGMA if t <= max(t_inference, 1.0))


def wan_sigma(x: Array, fit_time: float = 1.0) -> Array:
    """``reram-wan2022`` deviation std in uS at x = g / 25 uS for the fit at `fit_time`
    (1 s: the programming noise)."""
    coeffs = WAN_SIGMA[fit_time]
    out = x * coeffs[-1] + coeffs[-2]
    for c in reversed(coeffs[:-2]):
        out = out * x + c
    return out


def cmo_sigma(g: Array, acceptance_pct: float = 0.2) -> Array:
    """``reram-cmo`` programming-noise std in uS at conductance g uS."""
    a0, a1 = CMO_SIGMA[acceptance_pct]
    return g * a1 + a0


def cmo_relaxation(t_inference: float) -> tuple[float, float]:
    """(mean shift, std) in uS of the ``reram-cmo`` relaxation at `t_inference` > 0 s."""
    log_t = math.log(t_inference)
    return CMO_DECAY_MEAN * log_t, CMO_DECAY_STD[0] * log_t + CMO_DECAY_STD[1]


def cmo_read_factor(t_inference: float) -> float:
    """K sqrt(ln((t + t_read) / (2 t_read))) of the ``reram-cmo`` read noise (0 before
    t_read, where the log is negative); the read std is this times log10(g)."""
    log_ratio = math.log((t_inference + CMO_T_READ) / (2 * CMO_T_READ))
    return CMO_READ_K * math.sqrt(max(log_ratio, 0.0))


def wan_block(unit: np.ndarray, t_inference: float, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """``reram-wan2022`` on a block normalised to max |w| = 1: the weights (units of
    max |w|) programmed and read at `t_inference`."""
    x = np.stack([np.maximum(unit, 0.0), np.maximum(-unit, 0.0)])  # g / g_max of g+, g-
    target = x * np.float32(WAN_G_MAX)

    def reading(fit_time: float) -> np.ndarray:
        g = target + wan_sigma(x, fit_time) * rng.standard_normal(x.shape, dtype=np.float32)
        g = np.maximum(g, 0.0)
        return (g[0] - g[1]) / np.float32(WAN_G_MAX)

    programmed = reading(1.0)
    fit_time = wan_fit_time(t_inference)
    return programmed, programmed if fit_time == 1.0 else reading(fit_time)


def cmo_block(unit: np.ndarray, t_inference: float, acceptance_pct: float,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``reram-cmo`` on a block mapped to [0, 1] ((w - min) / (max - min)): the weights
    (in that unit) programmed and read at `t_inference`."""
    span = np.float32(CMO_G_MAX - CMO_G_MIN)
    g = unit * span + np.float32(CMO_G_MIN)
    g_prog = g + cmo_sigma(g, acceptance_pct) * rng.standard_normal(g.shape, dtype=np.float32)
    programmed = (g_prog - np.float32(CMO_G_MIN)) / span
    if t_inference == 0:
        return programmed, programmed
    shift, spread = cmo_relaxation(t_inference)
    g_d = g_prog + np.float32(shift)
    g_d += np.float32(spread) * rng.standard_normal(g.shape, dtype=np.float32)
    read = np.log10(np.maximum(g_d, _G_FLOOR)) * np.float32(cmo_read_factor(t_inference))
    g_t = np.clip(g_d + read * rng.standard_normal(g.shape, dtype=np.float32),
                  CMO_G_MIN, CMO_G_MAX)
    return programmed, (g_t - np.float32(CMO_G_MIN)) / span

"""The expected error a chip adds to a crossbar slice: the compile's objective.

Rule (shared/HARDWARE.md, "Expected programming-noise error of a layer"): a chip
programs each weight w of row j of a slice as ``w + e`` with e independent per
weight, of mean ``-w`` where the model zeroes the weight (pcm: target |g| below
``pcm_zero_threshold``) and 0 elsewhere, and of variance ``v(w)``. For an input x
(after the DAC) the output error of row j then has mean ``-sum_k z_jk w_jk x_k`` and
variance ``sum_k v_jk x_k^2``, so over calibration inputs its expected square is the
error of the slice computed with the expected weights ``(1 - z) W`` plus
``E[x^2] @ v^T``. This module gives ``(1 - z) W`` and ``v`` for each noise model:

- ``pcm``: c = gmax / w_max (per row of the slice, or of the whole row without
  ``per_slice``); z = |w| c < threshold; v = (pcm_scale sigma(|w| c) / c)^2 (1 - z).
- ``additive``: v = (additive_std w_max)^2 for every weight; no zeroing.
- ``pcm-drift``: the pair of devices g+, g- around the target x = |w| / w_max
  (w_max of the layer, or of the row with ``drift_scaling=row``), at g_max = 25 uS:
  programming variance (sigma(x)^2 + sigma(0)^2) (w_max / 25)^2, the spread of the
  drift exponent at t = t0 + ``drift_time_s`` (relative std ln(t / t0) s(x), the
  compensation removing the mean decay) and the 1/f read noise (relative std
  q_s sqrt(ln((t + t_read) / (2 t_read)))), both on |w|. The clamp of conductances at
  0 is left out (it makes the zero device's noise half-normal): an upper estimate.
- ``reram-wan2022``: the device pair around x = |w| / w_max (w_max as pcm-drift's) at
  g_max = 25 uS, read at the fit of ``drift_time_s`` (runtime.reram.wan_fit_time):
  each device max(g + sigma_k(g / 25) N, 0), a rectified normal with exact mean m and
  variance s^2 (the active device at g = 25 x, the idle one at 0), so the expected
  weight is sign(w) (m_active - m_idle) w_max / 25 (0 at w = 0) and
  v = (s_active^2 + s_idle^2) (w_max / 25)^2.
- ``reram-cmo``: one device, g = 9 + (w - w_lo) / (w_hi - w_lo) 79.2 uS with w_lo, w_hi
  the layer's (the row slice's with ``drift_scaling=row``) min and max; with p = (w_hi -
  w_lo) / 79.2 the weight per uS: v = sigma_p(g)^2 p^2 at t = ``drift_time_s`` = 0, and
  later plus the relaxation (spread^2) and the read noise ((log10(g + shift) K
  sqrt(ln((t + t_read) / (2 t_read))))^2) times p^2; the relaxation's mean shift moves
  every weight by shift p (a deterministic error, not averaged away). The clamp to
  [9, 88.2] uS is left out.
- ``none``: no error.

Global drift compensation (one scalar per layer near 1 unless the mean decays, which
pcm-drift's does and the closed form then leaves out) is left out.

``devices_per_weight`` d device pairs per weight divide every variance by d (their
readings are averaged); zeroing is deterministic and stays. The closed form is held
against sampled chips in tests/test_chip_error.py.
"""

from __future__ import annotations

import math

import torch

from afmc.ops.analog_linear_onnx import TINY
from afmc.runtime import reram
from afmc.runtime.noise import (
    AIHWKIT_MODELS,
    DRIFT_G_MAX,
    DRIFT_PROG_COEFF,
    DRIFT_T0,
    DRIFT_T_READ,
    PCM_SIGMA_BRANCH,
    PCM_SIGMA_OD,
    PCM_SIGMA_TD,
    NoiseConfig,
)


def _polyval(coeffs: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(x)
    for c in coeffs:
        out = out * x + c
    return out


def pcm_sigma(g_abs: torch.Tensor) -> torch.Tensor:
    """The pcm model's programming-noise std at conductance |g| (runtime.noise.pcm_sigma)."""
    return torch.where(g_abs <= PCM_SIGMA_BRANCH, _polyval(PCM_SIGMA_OD, g_abs),
                       _polyval(PCM_SIGMA_TD, g_abs))


def weight_noise(weight: torch.Tensor, scale: torch.Tensor, noise: NoiseConfig,
                 devices: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(expected programmed weights, per-weight variance or None for no noise) of a slice
    [N, k] whose rows are scaled by `scale` (:func:`noise_scales`: the max |w| [N] the
    noise model scales by, the row slice's, the row's or the layer's; for reram-cmo the
    (min w, max w) [N, 2] it maps onto its conductance range)."""
    w = weight.float()
    model = noise.model
    if model == "none":
        return w, None
    if model == "reram-cmo":
        return _cmo_noise(w, scale.float(), noise, devices)
    scale = scale.float().clamp_min(TINY)[:, None]
    if model == "additive":
        variance = (noise.additive_std * scale).square().expand_as(w) / devices
        return w, variance
    if model == "pcm":
        c = noise.pcm_gmax / scale
        g = w.abs() * c
        kept = g >= noise.pcm_zero_threshold
        variance = (noise.pcm_scale * pcm_sigma(g) / c).square() * kept / devices
        return w * kept, variance
    x = (w.abs() / scale).clamp(max=1.0)  # the target of the pair's nonzero device
    if model == "reram-wan2022":
        return _wan_noise(w, x, scale, noise, devices)
    c0, c1, c2 = DRIFT_PROG_COEFF  # pcm-drift
    unit = scale / DRIFT_G_MAX  # weight per uS
    variance = ((c0 + c1 * x + c2 * x.square()).square() + c0 ** 2) * unit.square()
    t = noise.drift_time_s + DRIFT_T0  # from the start of programming, as aihwkit
    log_x = x.clamp_min(1e-7).log()
    spread = (-0.0125 * log_x - 0.0059).clamp(0.008, 0.045)
    drift = math.log(t / DRIFT_T0) * spread
    q_s = (0.0088 / x.pow(0.65).clamp_min(1e-3)).clamp(max=0.2)
    read = q_s * math.sqrt(math.log((t + DRIFT_T_READ) / (2 * DRIFT_T_READ)))
    variance = variance + (drift.square() + read.square()) * w.square()
    return w, variance / devices


def _rectified(mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance) of max(mu + sigma Z, 0), Z ~ N(0, 1), sigma > 0."""
    a = mu / sigma
    cdf = 0.5 * (1.0 + torch.erf(a / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * a.square()) / math.sqrt(2.0 * math.pi)
    mean = mu * cdf + sigma * pdf
    second = (mu.square() + sigma.square()) * cdf + mu * sigma * pdf
    return mean, (second - mean.square()).clamp_min(0.0)


def _wan_noise(w: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, noise: NoiseConfig,
               devices: int) -> tuple[torch.Tensor, torch.Tensor]:
    """weight_noise of reram-wan2022 (module rules) at targets x = |w| / scale <= 1."""
    fit = reram.wan_fit_time(noise.drift_time_s)
    active = _rectified(x * reram.WAN_G_MAX, reram.wan_sigma(x, fit))
    zero = torch.zeros((), dtype=w.dtype)
    idle = _rectified(zero, zero + reram.wan_sigma(0.0, fit))
    unit = scale / reram.WAN_G_MAX  # weight per uS
    expected = w.sign() * (active[0] - idle[0]) * unit
    return expected, (active[1] + idle[1]) * unit.square() / devices


def _cmo_noise(w: torch.Tensor, bounds: torch.Tensor, noise: NoiseConfig, devices: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """weight_noise of reram-cmo (module rules) for rows mapped from `bounds` [N, 2]."""
    low = bounds[:, :1]
    span = bounds[:, 1:] - low
    g_range = reram.CMO_G_MAX - reram.CMO_G_MIN
    g = reram.CMO_G_MIN + ((w - low) / span.clamp_min(TINY)).clamp(0.0, 1.0) * g_range
    per_us = span / g_range  # weight per uS
    variance = reram.cmo_sigma(g, noise.cmo_acceptance_pct).square()
    t = noise.drift_time_s
    if t == 0:
        return w, variance * per_us.square() / devices
    shift, spread = reram.cmo_relaxation(t)
    read = (g + shift).clamp_min(1e-7).log10() * reram.cmo_read_factor(t)
    variance = variance + spread ** 2 + read.square()
    return w + shift * per_us, variance * per_us.square() / devices


def noise_scales(weight: torch.Tensor, sizes: list[int], noise: NoiseConfig
                 ) -> list[torch.Tensor]:
    """The scale (weight_noise's) of the rows of each input slice of a layer's weight
    [N, K]: the row slice's with per_slice, else the whole row's; for the aihwkit models
    (pcm-drift, reram-*) the whole layer's, unless drift_scaling is row."""
    w = weight.detach().float()
    if noise.model in AIHWKIT_MODELS and noise.drift_scaling == "layer":
        layer = row_scales(w.reshape(1, -1), noise)  # [1] or [1, 2]
        return [layer.expand(w.shape[0], *layer.shape[1:]) for _ in sizes]
    if noise.per_slice:
        return [row_scales(part, noise) for part in torch.split(w, list(sizes), dim=-1)]
    return [row_scales(w, noise)] * len(sizes)


def row_scales(weight: torch.Tensor, noise: NoiseConfig) -> torch.Tensor:
    """The scale (weight_noise's) of each row of `weight` [N, k] on its own: max |w| [N];
    for reram-cmo (min w, max w) [N, 2]."""
    w = weight.detach().float()
    if noise.model == "reram-cmo":
        return torch.stack([w.amin(dim=1), w.amax(dim=1)], dim=1)
    return w.abs().amax(dim=1)


def noise_error(x_squared: torch.Tensor, variance: torch.Tensor | None) -> torch.Tensor:
    """Expected squared output error per row [N] added by the noise: E[x^2] @ v^T, for
    the inputs' second moments `x_squared` [k]."""
    if variance is None:
        return x_squared.new_zeros(())
    return variance @ x_squared

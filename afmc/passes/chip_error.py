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
- ``none``: no error.

``devices_per_weight`` d device pairs per weight divide every variance by d (their
readings are averaged); zeroing is deterministic and stays. The closed form is held
against sampled chips in tests/test_chip_error.py.
"""

from __future__ import annotations

import math

import torch

from afmc.ops.analog_linear_onnx import TINY
from afmc.runtime.noise import (
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


def weight_noise(weight: torch.Tensor, w_max: torch.Tensor, noise: NoiseConfig,
                 devices: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(expected programmed weights, per-weight variance or None for no noise) of a slice
    [N, k] whose rows are scaled by `w_max` [N] (the scale the noise model uses: the row
    slice's, the row's or the layer's max |w|)."""
    w = weight.float()
    scale = w_max.float().clamp_min(TINY)[:, None]
    model = noise.model
    if model == "none":
        return w, None
    if model == "additive":
        variance = (noise.additive_std * scale).square().expand_as(w) / devices
        return w, variance
    if model == "pcm":
        c = noise.pcm_gmax / scale
        g = w.abs() * c
        kept = g >= noise.pcm_zero_threshold
        variance = (noise.pcm_scale * pcm_sigma(g) / c).square() * kept / devices
        return w * kept, variance
    x = (w.abs() / scale).clamp(max=1.0)  # pcm-drift: target of the nonzero device
    c0, c1, c2 = DRIFT_PROG_COEFF
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


def noise_scales(weight: torch.Tensor, sizes: list[int], noise: NoiseConfig
                 ) -> list[torch.Tensor]:
    """The max |w| [N] by which the noise model scales the rows of each input slice of a
    layer's weight [N, K]: the row slice's with per_slice, else the whole row's; for
    pcm-drift the whole layer's, unless drift_scaling is row."""
    w = weight.detach().abs().float()
    if noise.model == "pcm-drift" and noise.drift_scaling == "layer":
        return [w.amax().expand(w.shape[0]) for _ in sizes]
    if noise.per_slice:
        return [part.amax(dim=1) for part in torch.split(w, list(sizes), dim=-1)]
    return [w.amax(dim=1)] * len(sizes)


def noise_error(x_squared: torch.Tensor, variance: torch.Tensor | None) -> torch.Tensor:
    """Expected squared output error per row [N] added by the noise: E[x^2] @ v^T, for
    the inputs' second moments `x_squared` [k]."""
    if variance is None:
        return x_squared.new_zeros(())
    return variance @ x_squared

"""Programming-noise models of the analog runtime (shared/HARDWARE.md, "Evaluation noise models").

A chip instance is one programming of the weights: :func:`program_weights` is called
once per layer and chip seed (with the stream of :func:`layer_rng`), and the returned
weights are then used for any number of inputs.

Every model scales each output row -- or, with ``per_slice``, each row of each input
slice of the layer -- by its own max |w| before adding noise, and scales back after.
A row (slice) that is all zero has max |w| = 0 and stays exactly zero.

- ``none``: the weights unchanged (a copy).
- ``pcm`` (AFM evaluation): scale so max |w| = ``pcm_gmax`` (180); add
  N(0, (``pcm_scale`` * sigma(|g|))^2) with sigma the cubic of :func:`pcm_sigma`
  (``pcm_scale`` 1: the AFM model); set to 0 every
  weight whose *target* |g| < ``pcm_zero_threshold`` (0.6); scale back.
- ``additive``: add N(0, (``additive_std`` (0.05) * max |w|)^2).
- ``pcm-drift``: aihwkit 1.2.0 ``PCMLikeNoiseModel`` (max |w| = 25 uS on a g+/g- pair,
  programming noise, drift to ``drift_time_s`` with t0 = 20 s, 1/f read noise); unlike the
  others it scales the whole layer by its one max |w| (aihwkit's conductance converter),
  unless ``drift_scaling`` is ``row``; and, with
  ``drift_compensation``, aihwkit's ``GlobalDriftCompensation``: one scalar per layer
  read out on the one-hot input vectors; see :func:`_pcm_drift_block` and
  :func:`_program_aihwkit`.
- ``reram-wan2022``, ``reram-cmo``: aihwkit 1.2.0's ReRAM models (afmc.runtime.reram):
  Wan et al. 2022's device pairs (g_max = 25 uS, a quartic programming-noise std, fits
  at 1 s, 1 day, 2 days read at ``drift_time_s``) and IBM's CMO/HfOx single devices
  ([min w, max w] -> [9, 88.2] uS, a linear programming-noise std per
  ``cmo_acceptance_pct``, relaxation and read noise at ``drift_time_s``). As
  ``pcm-drift``, one scale per layer (aihwkit's converters) unless ``drift_scaling`` is
  ``row``, and ``drift_compensation`` applies.

With ``devices`` d > 1 (``hardware.devices_per_weight``: each weight programmed on d
device pairs, the read-out averaging them) a programmed weight is the mean of d
independent programmings of its target; the deterministic parts of a model stay (pcm's
zeroing of small targets, pcm-drift's mean decay, reram-cmo's relaxation shift). ``pcm``
and ``additive`` are Gaussian around the target, so the mean of d draws is drawn exactly
as one draw with its std divided by sqrt(d) (the same random stream, the same kernels);
the aihwkit models (clamped, non-Gaussian) average d full device draws. See
:func:`program_weights`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from afmc.runtime import reram
from afmc.runtime.fused import programming

# AFM evaluation cubic for the programming-noise std, highest power first (numpy.polyval).
PCM_SIGMA_OD = (
    2.939751381126213e-05,
    -0.00371581208142707,
    0.22419685954327148,
    2.5797410660159494,
)
PCM_SIGMA_TD = (
    1.2329755395573392e-05,
    -0.003054993405157235,
    0.2453487119885723,
    2.110295720240385,
)
PCM_SIGMA_BRANCH = 52.5  # |g| <= 52.5 uses the OD cubic, above it the TD cubic
PCM_SIGMA = (PCM_SIGMA_OD, PCM_SIGMA_TD, PCM_SIGMA_BRANCH)

# aihwkit PCMLikeNoiseModel constants (conductances in uS).
DRIFT_G_MAX = 25.0
DRIFT_PROG_COEFF = (0.26348, 1.9650, -1.1731)  # c0 + c1 x + c2 x^2, x = g / g_max
DRIFT_T0 = 20.0
DRIFT_T_READ = 250e-9
_ZERO_CLIP = 1e-7
CHUNK_VALUES = 1 << 16  # values per element-wise chunk of pcm programming (256 KB float32)

NoiseModel = Literal["none", "pcm", "additive", "pcm-drift", "reram-wan2022", "reram-cmo"]
DriftScaling = Literal["layer", "row"]
# aihwkit's models: conductances mapped per layer (or row), devices drawn in full
AIHWKIT_MODELS = ("pcm-drift", "reram-wan2022", "reram-cmo")


class NoiseConfig(BaseModel):
    """Which programming-noise model a chip instance samples, and its parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: NoiseModel = Field("pcm", description="Programming-noise model.")
    per_slice: bool = Field(
        True,
        description="Scale per output row and per input slice of the layer, "
        "rather than per whole output row.",
    )
    additive_std: float = Field(
        0.05, ge=0, allow_inf_nan=False, description="additive: std relative to max |w|."
    )
    pcm_gmax: float = Field(
        180.0, gt=0, allow_inf_nan=False, description="pcm: conductance of max |w|."
    )
    pcm_zero_threshold: float = Field(
        0.6, ge=0, allow_inf_nan=False, description="pcm: target |g| below this is set to 0."
    )
    pcm_scale: float = Field(
        1.0,
        gt=0,
        allow_inf_nan=False,
        description="pcm: multiplies the programming-noise std sigma(|g|) (1: the AFM model; "
        "2, 4: twice, four times as noisy).",
    )
    drift_time_s: float = Field(
        3600.0,
        ge=0,
        allow_inf_nan=False,
        description="pcm-drift, reram-wan2022, reram-cmo: inference time in seconds after "
        "programming completed (reram-wan2022: at most 172800, its last fit).",
    )
    drift_compensation: bool = Field(
        True, description="pcm-drift, reram-wan2022, reram-cmo: apply global drift "
        "compensation (one scalar per layer)."
    )
    drift_scaling: DriftScaling = Field(
        "layer",
        description="pcm-drift, reram-wan2022, reram-cmo: conductance mapping. 'layer' "
        "(aihwkit's default converters): one scale for the whole layer (its largest |w| "
        "maps to g_max; reram-cmo: its [min w, max w] to [g_min, g_max]); 'row': each output "
        "row (each row of each input slice with per_slice) has its own scale, a different "
        "and less noisy model.",
    )
    cmo_acceptance_pct: Literal[0.2, 2.0] = Field(
        0.2,
        description="reram-cmo: acceptance range of the program-and-verify loop in percent "
        "of the target (aihwkit's two fits; its default falls back to 0.2).",
    )

    @field_validator("drift_time_s")
    @classmethod
    def _fitted_time(cls, value: float, info: ValidationInfo) -> float:
        """reram-wan2022 is read only up to its last fitted time (2 days)."""
        if info.data.get("model") == "reram-wan2022":
            reram.wan_fit_time(value)
        return value


def pcm_sigma(g_abs: np.ndarray) -> np.ndarray:
    """Programming-noise std of the ``pcm`` model at conductance |g| (GMAX = 180 units).

    numpy.polyval of ``PCM_SIGMA_OD`` for |g| <= 52.5 and of ``PCM_SIGMA_TD`` above;
    about 2.58 at 0, 8.4 at 52.5, 8.9 at 120 and 19.2 at 180. A float32 input is
    evaluated in float32 (in-place Horner, for speed), anything else in float64.
    """
    g = np.asarray(g_abs)
    if g.dtype != np.float32:
        g = g.astype(np.float64)
    return np.where(g <= PCM_SIGMA_BRANCH, _horner(PCM_SIGMA_OD, g), _horner(PCM_SIGMA_TD, g))


def _horner(coeffs: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    """numpy.polyval(coeffs, x) in x's dtype, in place on one buffer."""
    out = np.full_like(x, coeffs[0])
    for c in coeffs[1:]:
        out *= x
        out += c
    return out


def layer_rng(seed: int, layer_index: int) -> np.random.Generator:
    """The random stream of one layer of one chip instance.

    ``SeedSequence(seed, spawn_key=(layer_index,))`` is the ``layer_index``-th child
    that ``SeedSequence(seed).spawn`` would give: the same (seed, layer) reproduces the
    same stream, and streams of different layers or seeds are independent.
    """
    if seed < 0 or layer_index < 0:
        raise ValueError(
            f"seed and layer_index must be >= 0, got seed={seed}, layer_index={layer_index}"
        )
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(layer_index,)))


def program_weights(
    weight: np.ndarray,
    slice_sizes: Sequence[int],
    config: NoiseConfig,
    rng: np.random.Generator,
    devices: int = 1,
) -> np.ndarray:
    """Sample the programmed weights of one layer on one chip instance.

    Args:
        weight: [N, K] weights (N output rows, K inputs); not modified.
        slice_sizes: sizes of the layer's input slices, summing to K (e.g. [512, 512, 488]).
        config: the noise model and its parameters.
        rng: the layer's random stream (see :func:`layer_rng`).
        devices: device pairs per weight (``hardware.devices_per_weight``), whose readings
            the chip averages. ``pcm``: the mean of d copies g + sigma(|g|) N_i is exactly
            g + sigma(|g|) / sqrt(d) N (one draw per weight, as for d = 1), still 0 where
            the target |g| < pcm_zero_threshold; ``additive``: std / sqrt(d), likewise
            exact; the aihwkit models (``pcm-drift``, ``reram-*``): the mean over d
            independent device draws (programming, drift, read noise each), drawn one
            copy after the other from `rng`; with compensation, alpha is read out on the
            averaged weights. d = 1 gives the same numbers as without the argument.

    Returns:
        The programmed weights, float32 [N, K].
    """
    w = np.asarray(weight)
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {w.shape}")
    sizes = [int(s) for s in slice_sizes]
    if any(s <= 0 for s in sizes):
        raise ValueError(f"slice_sizes must all be positive, got {sizes}")
    if sum(sizes) != w.shape[1]:
        raise ValueError(
            f"slice_sizes {sizes} sum to {sum(sizes)} but weight has K = {w.shape[1]} inputs"
        )
    if config.model == "none":
        return w.astype(np.float32, copy=True)
    if config.model in AIHWKIT_MODELS:
        return _program_aihwkit(w, sizes, config, rng, _devices(devices))
    config = averaged(config, devices)
    if config.model == "pcm" and programming.available():
        return _program_pcm_fused(w, sizes, config, rng)
    noisy = _pcm_block if config.model == "pcm" else _additive_block
    out = np.empty(w.shape, dtype=np.float32)
    for cols, block, wmax in _blocks(w, sizes, config.per_slice):
        out[:, cols] = noisy(block, wmax, config, rng)
    return out


def _devices(devices: int) -> int:
    """`devices` checked: an int >= 1."""
    if isinstance(devices, bool) or int(devices) != devices or devices < 1:
        raise ValueError(f"devices (device pairs per weight) must be an integer >= 1, "
                         f"got {devices!r}")
    return int(devices)


def averaged(config: NoiseConfig, devices: int) -> NoiseConfig:
    """The ``pcm`` / ``additive`` model of the mean of `devices` independent programmings:
    its Gaussian noise std (pcm_scale, additive_std) divided by sqrt(devices); `config`
    itself for one device (so d = 1 is bit-identical to no averaging)."""
    devices = _devices(devices)
    if devices == 1:
        return config
    root = math.sqrt(devices)
    return config.model_copy(update={"pcm_scale": config.pcm_scale / root,
                                     "additive_std": config.additive_std / root})


def _blocks(
    w: np.ndarray, sizes: list[int], per_slice: bool
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Yield (columns, float32 block, max |w| of each block row [N, 1]) per scaling block.

    A block is one input slice with ``per_slice``, else the whole row.
    """
    bounds = np.cumsum([0, *sizes]) if per_slice else np.array([0, w.shape[1]])
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        block = w[:, start:stop].astype(np.float32, copy=False)
        wmax = np.abs(block).max(axis=1, keepdims=True)
        yield slice(start, stop), block, wmax


def _unit(block: np.ndarray, wmax: np.ndarray) -> np.ndarray:
    """The block scaled to max |w| = 1 per row; an all-zero row (max 0) stays zero, and
    multiplying the result back by its max 0 keeps it exactly zero."""
    return block / np.where(wmax > 0, wmax, np.float32(1.0))


def _pcm_block(
    block: np.ndarray, wmax: np.ndarray, config: NoiseConfig, rng: np.random.Generator
) -> np.ndarray:
    """``pcm``: g = w / max|w| * gmax; g + pcm_scale * sigma(|g|) N(0, 1); 0 where the target
    |g| < zero_threshold; back to weights by * max|w| / gmax.

    The normal draws are taken for the whole block first (the stream's order), and the
    element-wise rest runs on row chunks of about CHUNK_VALUES values that stay in the
    CPU cache: the same float32 operations per value, so the same numbers, 2-3x faster
    than whole-block passes for large layers.
    """
    noise = rng.standard_normal(block.shape, dtype=np.float32)
    rows = max(1, CHUNK_VALUES // max(1, block.shape[1]))
    gmax, scale = np.float32(config.pcm_gmax), np.float32(config.pcm_scale)
    for start in range(0, block.shape[0], rows):
        part = slice(start, start + rows)
        g = _unit(block[part], wmax[part]) * gmax
        g_abs = np.abs(g)
        drawn = noise[part]
        drawn *= pcm_sigma(g_abs) * scale
        g += drawn
        g[g_abs < config.pcm_zero_threshold] = 0.0
        g *= wmax[part] / gmax
        noise[part] = g
    return noise


def program_prepared(weight: np.ndarray, slice_sizes: Sequence[int], config: NoiseConfig,
                     rng: np.random.Generator, slices: int,
                     attributes: dict[str, float],
                     devices: int = 1) -> programming.Prepared | None:
    """The prepared form (ops.analog_linear_onnx.prepare_weights with `slices` and the
    analog node's `attributes`) of :func:`program_weights`' result (with the same
    `devices`), sampled straight into it by afmc's programming kernel
    (runtime.fused.programming) without holding the programmed layer whole; bit-identical
    to preparing program_weights' weights. None unless the model is ``pcm`` and the kernel
    is available."""
    if config.model != "pcm" or not programming.available():
        return None
    config = averaged(config, devices)
    w = np.asarray(weight)
    noise, bounds = _pcm_draws(w, [int(s) for s in slice_sizes], config, rng)
    return programming.program_pcm_prepared(
        w, noise, bounds, PCM_SIGMA, config.pcm_gmax, config.pcm_scale,
        config.pcm_zero_threshold, slices, attributes)


def _program_pcm_fused(w: np.ndarray, sizes: list[int], config: NoiseConfig,
                       rng: np.random.Generator) -> np.ndarray:
    """``pcm`` on afmc's programming kernel (runtime.fused.programming): one pass over the
    layer, bit-identical to :func:`_pcm_block` block by block."""
    noise, bounds = _pcm_draws(w, sizes, config, rng)
    return programming.program_pcm(w, noise, bounds, PCM_SIGMA, config.pcm_gmax,
                                   config.pcm_scale, config.pcm_zero_threshold)


def _pcm_draws(w: np.ndarray, sizes: list[int], config: NoiseConfig,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(the layer's N(0, 1) draws for the pcm kernels, the scaling blocks' column bounds):
    the draws of every block in the stream's order, as :func:`_pcm_block` takes them,
    block after block, each [N, block width] row-major."""
    rows, cols = w.shape
    bounds = np.cumsum([0, *sizes]) if config.per_slice else np.array([0, cols])
    noise = np.empty(rows * cols, dtype=np.float32)
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        rng.standard_normal(dtype=np.float32,
                            out=noise[rows * start:rows * stop].reshape(rows, stop - start))
    return noise, bounds


def _additive_block(
    block: np.ndarray, wmax: np.ndarray, config: NoiseConfig, rng: np.random.Generator
) -> np.ndarray:
    """``additive``: w + additive_std * max|w| * N(0, 1)."""
    noise = rng.standard_normal(block.shape, dtype=np.float32)
    noise *= np.float32(config.additive_std) * wmax
    noise += block
    return noise


def _pcm_drift_block(
    wn: np.ndarray, t_inference: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """aihwkit 1.2.0 ``PCMLikeNoiseModel`` on a block normalised to max |w| = 1.

    Returns the weights (units of max |w|) at t = 0 (programmed) and at ``t_inference``.

    - Each weight is a pair of devices, target g+ = 25 uS * max(w, 0) and
      g- = 25 uS * max(-w, 0); w = (g+ - g-) / 25 uS.
    - Programming: g_prog = max(g + sigma N(0, 1), 0), sigma = 0.26348 + 1.9650 x
      - 1.1731 x^2 uS with x = g / 25 uS (both devices of the pair).
    - Drift: nu = |mu + s N(0, 1)| per device from its target x (clamped >= 1e-7),
      mu = clip(-0.0155 ln x + 0.0244, 0.049, 0.1),
      s = clip(-0.0125 ln x - 0.0059, 0.008, 0.045); g_drift = g_prog (t / t0)^-nu
      with t0 = 20 s and, as in aihwkit, t = t0 + t_inference (time from the start
      of programming; t_inference counts from its completion).
    - 1/f read noise: g = max(g_drift + |g_drift| q_s sqrt(ln((t + t_read) / (2 t_read)))
      N(0, 1), 0), q_s = min(0.0088 / max((g_prog / 25 uS)^0.65, 1e-3), 0.2),
      t_read = 250 ns. (Placing the 1e-3 floor before or after the power gives the same
      q_s: both hit the 0.2 cap first.)
    """
    x = np.stack([np.maximum(wn, 0.0), np.maximum(-wn, 0.0)])  # g / g_max of g+, g-
    c0, c1, c2 = DRIFT_PROG_COEFF
    sigma_prog = c0 + c1 * x + c2 * x**2  # uS, fitted at g_max = 25 uS
    g_prog = np.maximum(
        x * DRIFT_G_MAX + sigma_prog * rng.standard_normal(x.shape, dtype=np.float32), 0.0
    )

    log_x = np.log(np.maximum(x, _ZERO_CLIP))
    mu = np.clip(-0.0155 * log_x + 0.0244, 0.049, 0.1)
    s = np.clip(-0.0125 * log_x - 0.0059, 0.008, 0.045)
    nu = np.abs(mu + s * rng.standard_normal(x.shape, dtype=np.float32))

    t = t_inference + DRIFT_T0
    g_drift = g_prog * np.exp(-np.log(t / DRIFT_T0) * nu)  # g_prog (t / t0)^-nu
    q_s = np.minimum(0.0088 / np.maximum((g_prog / DRIFT_G_MAX) ** 0.65, 1e-3), 0.2)
    sig_read = q_s * np.sqrt(np.log((t + DRIFT_T_READ) / (2 * DRIFT_T_READ)))
    g_t = np.maximum(
        g_drift + np.abs(g_drift) * sig_read * rng.standard_normal(x.shape, dtype=np.float32), 0.0
    )
    return (g_prog[0] - g_prog[1]) / DRIFT_G_MAX, (g_t[0] - g_t[1]) / DRIFT_G_MAX


def _aihwkit_draw(config: NoiseConfig) -> Callable[
        [np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]:
    """The block draw of an aihwkit model: (block in unit range, rng) -> (programmed,
    read at ``drift_time_s``), both in that unit."""
    t = config.drift_time_s
    if config.model == "reram-wan2022":
        return lambda unit, rng: reram.wan_block(unit, t, rng)
    if config.model == "reram-cmo":
        return lambda unit, rng: reram.cmo_block(unit, t, config.cmo_acceptance_pct, rng)
    return lambda unit, rng: _pcm_drift_block(unit, t, rng)


def _conductance_blocks(
    w: np.ndarray, sizes: list[int], config: NoiseConfig
) -> Iterator[tuple[slice, np.ndarray, np.ndarray | None, np.ndarray]]:
    """Yield (columns, float32 block, offset or None, span) per conductance-scaling block,
    each [N, 1] per row, the block's unit being (block - offset) / span.

    ``drift_scaling`` ``layer``: one block, the whole layer, with one scale (aihwkit's
    converters); ``row``: the blocks of the other models (:func:`_blocks`). The device
    pairs (``pcm-drift``, ``reram-wan2022``) have no offset and span max |w|;
    ``reram-cmo``'s single device has offset min w and span max w - min w.
    """
    layer = config.drift_scaling == "layer"
    if layer:
        block = w.astype(np.float32, copy=False)
        blocks: Iterable[tuple[slice, np.ndarray, np.ndarray]] = [
            (slice(0, w.shape[1]), block,
             np.full((w.shape[0], 1), np.abs(block).max(), dtype=np.float32))]
    else:
        blocks = _blocks(w, sizes, config.per_slice)
    for cols, part, wmax in blocks:
        if config.model != "reram-cmo":
            yield cols, part, None, wmax
            continue
        axis = None if layer else 1  # the layer's min and max, or each row's
        low = np.broadcast_to(part.min(axis=axis, keepdims=True), wmax.shape)
        yield cols, part, low, np.broadcast_to(part.max(axis=axis, keepdims=True), wmax.shape) - low


def _program_aihwkit(
    w: np.ndarray, sizes: list[int], config: NoiseConfig, rng: np.random.Generator,
    devices: int = 1,
) -> np.ndarray:
    """An aihwkit model (``pcm-drift``, ``reram-wan2022``, ``reram-cmo``) on a whole layer,
    with optional global drift compensation.

    Each conductance-scaling block (:func:`_conductance_blocks`: the layer, or each row
    or row slice with ``drift_scaling`` ``row``) is mapped to its unit, drawn by the
    model (:func:`_aihwkit_draw`) and mapped back. A block of span 0 (all zero; for
    reram-cmo all equal) comes back exactly as it was.

    With `devices` d > 1 every block is d devices (pairs) per weight, each drawn in full
    (copy after copy, from `rng`), and the weights at t = 0 and at t are the means of the
    d readings.

    Compensation is aihwkit's ``GlobalDriftCompensation``: one scalar per layer,
    alpha = mean |output at t = 0| / mean |output at t|, read out once on the fixed
    input of the K one-hot vectors (identity), where the output is exactly the weights,
    so alpha = mean |W_programmed| / mean |W_t| over the layer. alpha multiplies W_t.
    """
    draw = _aihwkit_draw(config)
    w0 = np.empty(w.shape, dtype=np.float32)
    wt = np.empty(w.shape, dtype=np.float32)
    for cols, block, low, span in _conductance_blocks(w, sizes, config):
        unit = _unit(block if low is None else block - low, span)
        b0, bt = draw(unit, rng)
        for _ in range(devices - 1):
            c0, ct = draw(unit, rng)
            b0, bt = b0 + c0, bt + ct
        if devices > 1:
            b0, bt = b0 / np.float32(devices), bt / np.float32(devices)
        w0[:, cols], wt[:, cols] = b0 * span, bt * span
        if low is not None:
            w0[:, cols] += low
            wt[:, cols] += low
    if config.drift_compensation:
        readout_t = np.abs(wt).mean(dtype=np.float64)
        if readout_t > 0:
            wt *= np.float32(np.abs(w0).mean(dtype=np.float64) / readout_t)
    return wt

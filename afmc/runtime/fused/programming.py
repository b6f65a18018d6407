"""Chip programming on afmc's kernel library (programming.cc), through ctypes.

Rule: each function does what the numpy code it stands for does (runtime.noise's pcm
model, ops.analog_linear_onnx.prepare_weights), with the same float32 operations in the same
order, so its results are bit-identical; it returns None where the library is not
available (AFMC_KERNELS=0, no compiler: fused.enabled()), and the caller runs the
numpy code. ctypes releases the GIL during a call, so layers programmed on a thread
pool use all cores.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence

import numpy as np

from afmc.ops.analog_linear_onnx import TINY, prepared_scale
from afmc.runtime import fused

_FLOATS = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
_INTS = np.ctypeslib.ndpointer(np.int64, flags="C_CONTIGUOUS")
_I64, _F32 = ctypes.c_int64, ctypes.c_float


def _library() -> ctypes.CDLL | None:
    """The kernel library's programming functions, or None where the kernels are off
    (AFMC_KERNELS=0, read on every call) or not built."""
    return _functions() if fused.enabled() else None


@functools.cache
def _functions() -> ctypes.CDLL:
    library = ctypes.CDLL(str(fused.library()))
    library.afmc_program_pcm.restype = None
    library.afmc_program_pcm.argtypes = [_FLOATS, _FLOATS, _FLOATS, _I64, _I64, _INTS, _I64,
                                         _FLOATS, _FLOATS, _F32, _F32, _F32, _F32]
    library.afmc_program_pcm_prepared.restype = None
    library.afmc_program_pcm_prepared.argtypes = [
        _FLOATS, _FLOATS, _I64, _I64, _INTS, _I64, _FLOATS, _FLOATS, _F32, _F32, _F32, _F32,
        _I64, _F32, _F32, _FLOATS, _FLOATS]
    library.afmc_prepare.restype = None
    library.afmc_prepare.argtypes = [_FLOATS, _I64, _I64, _I64, _F32, _F32, _FLOATS, _FLOATS]
    return library


def available() -> bool:
    """Whether the programming kernels run here (else callers use numpy)."""
    return _library() is not None


PcmSigma = tuple[Sequence[float], Sequence[float], float]  # OD cubic, TD cubic, branch
Prepared = tuple[list[np.ndarray], list[np.ndarray]]  # w_eff [k, N], w_max [N] per slice


def program_pcm(weight: np.ndarray, noise: np.ndarray, bounds: Sequence[int],
                sigma: PcmSigma, gmax: float, scale: float,
                threshold: float) -> np.ndarray | None:
    """The pcm model's programmed float32 [N, K] weights; the scaling blocks are the
    column ranges between consecutive `bounds`, and `noise` (float32, N * K) holds the
    layer's N(0, 1) draws block after block, each [N, block width] row-major (the
    stream's order). None without the library."""
    library = _library()
    if library is None:
        return None
    out = np.empty(weight.shape, dtype=np.float32)
    library.afmc_program_pcm(_f32(weight), noise, out, *weight.shape,
                             *_pcm_args(bounds, sigma, gmax, scale, threshold))
    return out


def program_pcm_prepared(weight: np.ndarray, noise: np.ndarray, bounds: Sequence[int],
                         sigma: PcmSigma, gmax: float, scale: float, threshold: float,
                         slices: int, attributes: dict[str, float]) -> Prepared | None:
    """prepare(program_pcm(...), slices, attributes) without the programmed layer ever
    held whole; None without the library."""
    library = _library()
    if library is None:
        return None
    effective, maxima = _prepared_arrays(weight.shape, slices)
    library.afmc_program_pcm_prepared(
        _f32(weight), noise, *weight.shape, *_pcm_args(bounds, sigma, gmax, scale, threshold),
        slices, prepared_scale(**attributes), np.float32(TINY), effective, maxima)
    return list(effective), list(maxima)


def prepare(weight: np.ndarray, slices: int, attributes: dict[str, float]) -> Prepared | None:
    """prepare_weights(weight, slices, **attributes) (w_eff per slice [k, N], w_max per
    slice [N]) of float32 [N, K] `weight`, computed in one pass; None without the
    library."""
    library = _library()
    if library is None:
        return None
    effective, maxima = _prepared_arrays(weight.shape, slices)
    library.afmc_prepare(_f32(weight), *weight.shape, slices, prepared_scale(**attributes),
                         np.float32(TINY), effective, maxima)
    return list(effective), list(maxima)


def _f32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def _pcm_args(bounds: Sequence[int], sigma: PcmSigma, gmax: float, scale: float,
              threshold: float) -> tuple:
    """The kernels' pcm arguments after the weight shape, in their float32 / int64 types."""
    od, td, branch = sigma
    f32 = np.float32
    return (np.asarray(bounds, dtype=np.int64), len(bounds) - 1, np.asarray(od, dtype=f32),
            np.asarray(td, dtype=f32), f32(branch), f32(gmax), f32(scale), f32(threshold))


def _prepared_arrays(shape: tuple[int, ...], slices: int) -> tuple[np.ndarray, np.ndarray]:
    """Uninitialised w_eff [slices, k, N] and w_max [slices, N] for [N, K] weights."""
    rows, cols = shape
    return (np.empty((slices, cols // slices, rows), dtype=np.float32),
            np.empty((slices, rows), dtype=np.float32))

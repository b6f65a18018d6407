"""Tensors from files (.npy, .npz and .pt), and calibration batches cut from them.

read_tensor_file reads any of the three, for calibration and for afmc run/eval
inputs alike. As calibration data (load_tensor_batches), batched along the first axis:

- .npy: one array [samples, ...] for a single-input model;
- .npz: one array per model input, keyed by input name;
- .pt: a tensor, a dict of tensors keyed by input name, or a list of input tuples
  (taken as ready-made batches).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SUFFIXES = (".npy", ".npz", ".pt")


def name_mismatch(given: list[str], expected: list[str]) -> str | None:
    """How the names `given` differ from the model's inputs `expected` (None: they match)."""
    missing = [name for name in expected if name not in given]
    unknown = [name for name in given if name not in expected]
    if not missing and not unknown:
        return None
    return (f"{sorted(given)} do not match the model's inputs {expected}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unknown {unknown})" if unknown else ""))


def read_tensor_file(path: Path, noun: str) -> object:
    """The content of a .npy (an array), .npz (a dict of arrays) or .pt file (what torch
    saved: a tensor, a dict or a list); errors name `path` and the `noun` file it is."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {noun} file not found")
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{path}: {noun} file must be one of {', '.join(SUFFIXES)}")
    try:
        if path.suffix == ".npy":
            return np.load(path)
        if path.suffix == ".npz":
            with np.load(path) as archive:
                return {key: archive[key] for key in archive.files}
        return torch.load(path, weights_only=True)
    except (OSError, ValueError, RuntimeError, EOFError) as error:
        raise ValueError(f"{path}: cannot read {noun} file: {error}") from None


def tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A torch tensor as a numpy array (bfloat16, which numpy lacks, as float32)."""
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _batched(arrays: dict[str, np.ndarray | torch.Tensor], batch_size: int,
             source: Path) -> list[tuple]:
    counts = {name: a.shape[0] if len(a.shape) else 0 for name, a in arrays.items()}
    if 0 in counts.values() or len(set(counts.values())) > 1:
        raise ValueError(f"{source}: calibration tensors are empty or differ in sample count "
                         f"(first axis: {counts})")
    arrays = list(arrays.values())
    count = arrays[0].shape[0]
    return [tuple(a[i:i + batch_size] for a in arrays) for i in range(0, count, batch_size)]


def load_tensor_batches(path: Path, input_names: list[str], batch_size: int) -> list[tuple]:
    """Calibration batches (tuples in input order) from a .npy / .npz / .pt file."""
    data = read_tensor_file(path, "calibration")
    if isinstance(data, (np.ndarray, torch.Tensor)):
        if len(input_names) != 1:
            raise ValueError(f"{path}: one array given, the model has inputs {input_names}")
        return _batched({input_names[0]: data}, batch_size, path)
    if isinstance(data, dict):
        mismatch = name_mismatch(list(data), input_names)
        if mismatch:
            raise ValueError(f"{path}: arrays {mismatch}")
        return _batched({name: data[name] for name in input_names}, batch_size, path)
    if isinstance(data, (list, tuple)) and data:
        return [tuple(item) if isinstance(item, (list, tuple)) else (item,) for item in data]
    raise ValueError(f"{path}: unsupported calibration content {type(data).__name__}")

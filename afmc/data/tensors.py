"""Calibration tensors from files: .npy, .npz and .pt, batched along the first axis.

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


def _batched(arrays: dict[str, torch.Tensor], batch_size: int, source: Path) -> list[tuple]:
    counts = {name: a.shape[0] if a.dim() else 0 for name, a in arrays.items()}
    if 0 in counts.values() or len(set(counts.values())) > 1:
        raise ValueError(f"{source}: calibration tensors are empty or differ in sample count "
                         f"(first axis: {counts})")
    arrays = list(arrays.values())
    count = arrays[0].shape[0]
    return [tuple(a[i:i + batch_size] for a in arrays) for i in range(0, count, batch_size)]


def load_tensor_batches(path: Path, input_names: list[str], batch_size: int) -> list[tuple]:
    """Calibration batches (tuples in input order) from a .npy / .npz / .pt file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: calibration file not found")
    try:
        if path.suffix == ".npy":
            data: object = torch.from_numpy(np.load(path))
        elif path.suffix == ".npz":
            with np.load(path) as archive:
                data = {key: torch.from_numpy(archive[key]) for key in archive.files}
        elif path.suffix == ".pt":
            data = torch.load(path, weights_only=True)
        else:
            raise ValueError(f"{path}: calibration tensors must be one of {', '.join(SUFFIXES)}")
    except (OSError, ValueError, RuntimeError, EOFError) as error:
        if isinstance(error, ValueError) and str(error).startswith(str(path)):
            raise
        raise ValueError(f"{path}: cannot read calibration tensors: {error}") from None
    if isinstance(data, torch.Tensor):
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

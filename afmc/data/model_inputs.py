"""A compiled model's inputs and class labels from tensor files, checked before any run.

Files: .npy, one array (a model with one input); .npz, one array per input keyed
by input name; .pt, a tensor, a dict of tensors keyed by input name, or a list
of input tuples (batches, joined along the first axis). Labels: a .npy of integer
class ids, one per sample.

Rules, each broken one a ValueError naming the file and the input or field:
- names: every model input has an array, and every array is a model input;
- dtype: an array is cast to the input's type when numpy calls the cast safe
  (int32 -> int64, uint8 -> float32) or when both are floating point
  (float64 -> float32); anything else (float for an integer input) is refused;
- shape: the rank is the graph input's, and every dimension the graph fixes is
  matched, except the first (samples): a fixed first dimension B is the compiled
  batch size, so the sample count must be a multiple of B (run B at a time);
- values: floating-point inputs are finite (no NaN or inf, also after the cast);
- samples: the first dimension is the sample axis, the same (> 0) for all inputs;
- labels: integer, one dimension, one per sample, within [0, classes) of the
  first output, which must be [samples, classes] (checked once its size is known).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from afmc.runtime.signature import TensorSpec

SUFFIXES = (".npy", ".npz", ".pt")


@dataclass
class ModelInputs:
    """Checked input arrays in the model's input order, their sample count and batch size."""

    arrays: dict[str, np.ndarray]
    samples: int
    batch: int | None  # the compiled (fixed) batch size; None: any


def _numpy(path: Path, value: object) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    if isinstance(value, np.ndarray):
        return value
    raise ValueError(f"{path}: expected tensors, found {type(value).__name__}")


def _joined(path: Path, batches: list | tuple) -> list[np.ndarray]:
    items = [item if isinstance(item, (list, tuple)) else (item,) for item in batches]
    if len({len(item) for item in items}) != 1:
        raise ValueError(f"{path}: the input tuples differ in length")
    try:
        return [np.concatenate([_numpy(path, item[i]) for item in items])
                for i in range(len(items[0]))]
    except ValueError as error:
        if str(error).startswith(str(path)):
            raise
        raise ValueError(f"{path}: the batches of an input differ in shape: {error}") from None


def read_arrays(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The file's arrays by input name (unchecked); a lone array or tuple is in input order."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: inputs file not found")
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{path}: inputs must be one of {', '.join(SUFFIXES)}")
    try:
        if path.suffix == ".npy":
            data: object = np.load(path)
        elif path.suffix == ".npz":
            with np.load(path) as archive:
                data = {key: archive[key] for key in archive.files}
        else:
            data = torch.load(path, weights_only=True)
    except (OSError, ValueError, RuntimeError, EOFError) as error:
        raise ValueError(f"{path}: cannot read tensors: {error}") from None
    if isinstance(data, dict):
        return {str(key): _numpy(path, value) for key, value in data.items()}
    arrays = _joined(path, data) if isinstance(data, (list, tuple)) and data \
        else [_numpy(path, data)]
    if len(arrays) != len(names):
        raise ValueError(f"{path}: {len(arrays)} array(s) given, the model has inputs "
                         f"{', '.join(names)} (give a .npz keyed by input name)")
    return dict(zip(names, arrays, strict=True))


def _cast(path: Path, spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    wanted = spec.dtype
    if array.dtype == wanted:
        return array
    both_float = array.dtype.kind == "f" and wanted.kind == "f"
    if both_float or np.can_cast(array.dtype, wanted, "safe"):
        with np.errstate(over="ignore"):
            return array.astype(wanted)
    raise ValueError(f"{path}: input '{spec.name}' is {array.dtype}, the model takes "
                     f"{wanted} (no safe cast)")


def _check_shape(path: Path, spec: TensorSpec, array: np.ndarray) -> None:
    if spec.shape is None:
        return
    if array.ndim != len(spec.shape):
        raise ValueError(f"{path}: input '{spec.name}' has rank {array.ndim} "
                         f"{list(array.shape)}, the model takes {spec.describe()}")
    for axis, (got, fixed) in enumerate(zip(array.shape, spec.shape, strict=True)):
        if axis and fixed is not None and got != fixed:
            raise ValueError(f"{path}: input '{spec.name}' has size {got} on axis {axis}, "
                             f"the model takes {spec.describe()}")


def _check_finite(path: Path, spec: TensorSpec, given: np.ndarray, cast: np.ndarray) -> None:
    if cast.dtype.kind not in "fc" or np.isfinite(cast).all():
        return
    if given.dtype.kind in "fc" and not np.isfinite(given).all():
        raise ValueError(f"{path}: input '{spec.name}' has NaN or inf values")
    raise ValueError(f"{path}: input '{spec.name}' has values beyond the range of {cast.dtype}")


def _samples(path: Path, specs: list[TensorSpec], arrays: dict[str, np.ndarray]) -> int:
    counts = {spec.name: arrays[spec.name].shape[0] if arrays[spec.name].ndim else 0
              for spec in specs}
    if len(set(counts.values())) != 1:
        raise ValueError(f"{path}: the inputs differ in sample count (first axis): "
                         + ", ".join(f"'{name}' {count}" for name, count in counts.items()))
    samples = next(iter(counts.values()))
    if samples == 0:
        raise ValueError(f"{path}: input '{specs[0].name}' has no samples")
    return samples


def _batch(path: Path, specs: list[TensorSpec], samples: int) -> int | None:
    fixed = {spec.name: spec.shape[0] for spec in specs if spec.shape and spec.shape[0]}
    if not fixed:
        return None
    name, batch = next(iter(fixed.items()))
    if len(set(fixed.values())) > 1:
        raise ValueError(f"{path}: the model's inputs fix different first dimensions "
                         f"({fixed}); no common sample axis")
    if samples % batch:
        raise ValueError(f"{path}: input '{name}' has {samples} samples, the model is "
                         f"compiled for batches of {batch}: give a multiple of {batch}")
    return batch


def load_inputs(path: Path, specs: list[TensorSpec]) -> ModelInputs:
    """The model inputs in `path`, checked against the graph inputs `specs` (module rules)."""
    names = [spec.name for spec in specs]
    arrays = read_arrays(path, names)
    missing = [name for name in names if name not in arrays]
    if missing:
        raise ValueError(f"{path}: no array for input(s) {', '.join(missing)} "
                         f"(the model takes {', '.join(names)})")
    unknown = [name for name in arrays if name not in names]
    if unknown:
        raise ValueError(f"{path}: unknown input(s) {', '.join(unknown)} "
                         f"(the model takes {', '.join(names)})")
    checked = {}
    for spec in specs:
        array = _cast(path, spec, arrays[spec.name])
        _check_shape(path, spec, array)
        _check_finite(path, spec, arrays[spec.name], array)
        checked[spec.name] = array
    samples = _samples(path, specs, checked)
    return ModelInputs(checked, samples, _batch(path, specs, samples))


def load_labels(path: Path, samples: int) -> np.ndarray:
    """Class ids from a .npy file: integer, one per sample, not negative (module rules)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labels file not found")
    try:
        labels = np.load(path)
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"{path}: cannot read labels (a .npy of class ids): {error}") from None
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: labels are {labels.dtype}, expected integer class ids")
    if labels.ndim != 1 or labels.size != samples:
        raise ValueError(f"{path}: labels have shape {list(labels.shape)}, expected one per "
                         f"sample [{samples}]")
    if labels.min() < 0:
        raise ValueError(f"{path}: labels hold a negative class id ({labels.min()})")
    return labels.astype(np.int64)


def check_label_classes(path: Path, labels: np.ndarray, output: str, logits: np.ndarray) -> None:
    """Labels need a first output [samples, classes] with every label below `classes`."""
    if logits.ndim != 2:
        raise ValueError(f"{path}: labels need a first output [samples, classes]; output "
                         f"'{output}' has shape {list(logits.shape)}")
    if labels.max() >= logits.shape[1]:
        raise ValueError(f"{path}: labels hold class id {labels.max()}, outside [0, "
                         f"{logits.shape[1]}) of output '{output}'")

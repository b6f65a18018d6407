"""A compiled model's inputs and class labels from tensor files, checked before any run.

Files: .npy, one array (a model with one input); .npz, one array per input keyed
by input name; .pt, a tensor, a dict of tensors keyed by input name, or a list
of input tuples (batches, joined along the first axis). Labels: a .npy of integer
class ids, one per sample.

Rules, each broken one a ValueError naming the file and the input or field:
- samples: the first axis is the sample axis, of the same (> 0) length in every array;
- batches: a model whose inputs fix the first axis to B (the compiled batch size)
  runs B samples at a time, so the sample count must be a multiple of B; a model
  with a free first axis runs BATCH_SIZE at a time;
- every batch then passes the calibration checks against the model's signature
  (data.calibration.validate_batches): input names (missing, unknown), dtype kind
  (a float for an integer input is refused; the width is cast, float64 -> float32,
  int32 -> int64), rank, every static dimension, finite values, token ids within
  the vocabulary;
- labels: integer, one dimension, one per sample, within [0, classes) of the
  first output, which must be [samples, classes] (checked once its size is known).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from afmc.data.calibration import Batch, ModelSignature, validate_batches
from afmc.data.tensors import read_tensor_file, tensor_to_numpy

BATCH_SIZE = 64


@dataclass
class ModelInputs:
    """Checked input batches (dicts by input name, cast to the model's dtypes) and their
    sample count."""

    batches: list[Batch]
    samples: int


def _numpy(path: Path, value: object) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return tensor_to_numpy(value)
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
    data = read_tensor_file(path, "inputs")
    if isinstance(data, dict):
        return {str(key): _numpy(path, value) for key, value in data.items()}
    arrays = _joined(path, data) if isinstance(data, (list, tuple)) and data \
        else [_numpy(path, data)]
    if len(arrays) != len(names):
        raise ValueError(f"{path}: {len(arrays)} array(s) given, the model has inputs "
                         f"{', '.join(names)} (give a .npz keyed by input name)")
    return dict(zip(names, arrays, strict=True))


def _samples(path: Path, arrays: dict[str, np.ndarray]) -> int:
    counts = {name: array.shape[0] if array.ndim else 0 for name, array in arrays.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"{path}: the inputs differ in sample count (first axis): "
                         + ", ".join(f"'{name}' {count}" for name, count in counts.items()))
    samples = next(iter(counts.values()))
    if samples == 0:
        raise ValueError(f"{path}: input '{next(iter(counts))}' has no samples")
    return samples


def _batch_size(path: Path, signature: ModelSignature, samples: int) -> int:
    fixed = {spec.name: spec.shape[0] for spec in signature.inputs
             if spec.shape and isinstance(spec.shape[0], int)}
    if not fixed:
        return BATCH_SIZE
    name, batch = next(iter(fixed.items()))
    if len(set(fixed.values())) > 1:
        raise ValueError(f"{path}: the model's inputs fix different first dimensions "
                         f"({fixed}); no common sample axis")
    if samples % batch:
        raise ValueError(f"{path}: input '{name}' has {samples} samples, the model is "
                         f"compiled for batches of {batch}: give a multiple of {batch}")
    return batch


def load_inputs(path: Path, signature: ModelSignature) -> ModelInputs:
    """The model inputs in `path` as checked batches (rules in the module docstring)."""
    arrays = read_arrays(path, signature.names)
    samples = _samples(path, arrays)
    step = _batch_size(path, signature, samples)
    batches = [{name: array[start:start + step] for name, array in arrays.items()}
               for start in range(0, samples, step)]
    return ModelInputs(validate_batches(batches, signature, str(path)), samples)


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

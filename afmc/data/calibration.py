"""Calibration data for any model: from text, tensor files or batches, checked against the
model's input signature, or drawn from the signature when none is given.

One layer for every front end (torch program, ONNX file). A batch is a dict from input
name to a numpy array. Rules:

- Text (a file or stdlib:SPLIT) is tokenized into non-overlapping windows of
  calibration.seq_len tokens (a model whose input_ids fix the sequence length: that
  length; one that fixes the batch size: batches of exactly that many windows, the
  ragged rest dropped, an error when the text does not fill one), at most the model's
  max_positions, over at most calibration.max_tokens; the windows after those (a
  static-batch model: one whole batch) are kept apart for the compile's fidelity check.
  Each window feeds every input by its name: input_ids the ids, attention_mask ones,
  token_type_ids zeros, position_ids 0..T-1; a model with another input cannot read
  text (an error naming it).
- Tensor files (.npy, .npz keyed by input name, .pt; data.tensors) are cut into
  batches of calibration.batch_size samples, or, for a model whose inputs all fix the
  first axis, of that size (a ragged tail is dropped). Batches given in Python (tuples
  in input order, or dicts) are taken as they are, all for calibration (the fidelity
  check then reads the first batch).
- Every batch is then validated against the signature: the input names (missing or
  unknown), the dtype kind (ints for integer inputs, floats for float inputs; the width
  is cast to the model's), the rank, every static dimension, one batch size across the
  inputs, finite values, and token ids within the vocabulary (0 <= id < vocab_size)
  and sequences within max_positions. A problem is a ValueError naming the source,
  the batch and the input. Data for a compiled model whose signature carries the max |x|
  of its calibration data (`InputSpec.calibrated`, afmc.json's calibration_inputs) that
  reaches RANGE_FACTOR times it is usable but suspicious: one InputRangeWarning per input.
- Without data, `synthetic_calibration` draws batches from the signature (seeded):
  standard normal floats, token ids uniform over the vocabulary, masks of ones, zero
  type ids, positions 0..T-1; a dynamic first axis takes calibration.batch_size, a
  dynamic second axis of an integer input calibration.seq_len, any other dynamic axis
  SYNTHETIC_DIM. The caller warns (SyntheticCalibrationWarning) and records it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from afmc.config import CalibrationConfig
from afmc.data.tensors import SUFFIXES as TENSOR_SUFFIXES
from afmc.data.tensors import load_tensor_batches, name_mismatch, tensor_to_numpy
from afmc.data.text_source import read_text
from afmc.data.tokenizer import Tokenizer, token_windows
from afmc.io.user_errors import InputWarning

Batch = dict[str, np.ndarray]
Dim = int | str | None  # static size, or a dynamic axis (its name, or None)

SYNTHETIC_DIM = 16
SYNTHETIC_BATCHES = 4
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
SYNTHETIC_SOURCE = "synthetic inputs drawn from the input signature (no calibration data)"


class SyntheticCalibrationWarning(UserWarning):
    """No calibration data was given: input ranges come from synthetic inputs."""


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, element type, and shape (None: rank unknown)."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...] | None
    calibrated: float | None = None  # a compiled model's: max |x| of its calibration data

    def describe(self) -> str:
        dims = "?" if self.shape is None else ", ".join(
            str(d) if isinstance(d, int) else (d or "?") for d in self.shape)
        return f"{self.name} {self.dtype}[{dims}]"


@dataclass(frozen=True)
class ModelSignature:
    """The inputs a model takes, and for a text model its vocabulary and context length."""

    inputs: tuple[InputSpec, ...]
    vocab_size: int | None = None
    max_positions: int | None = None

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.inputs]


@dataclass
class CalibrationData:
    """Validated calibration batches, the held-back batches and where they came from."""

    batches: list[Batch]
    source: str
    held: list[Batch] = field(default_factory=list)
    synthetic: bool = False


def load_calibration(
    data: Any,
    signature: ModelSignature,
    config: CalibrationConfig,
    tokenizer: Callable[[], Tokenizer],
    held_back: int = 0,
) -> CalibrationData:
    """Calibration batches from `data` (text path or stdlib:SPLIT, tensor file, or an
    iterable of batches), validated against `signature`. `tokenizer` is called only for
    text; it raises ValueError when the model has none."""
    if not isinstance(data, (str, Path)):
        batches = [_as_dict(batch, signature.names, index) for index, batch in
                   enumerate(_iterate(data))]
        return CalibrationData(validate_batches(batches, signature, "calibration batches"),
                               "user batches")
    source = str(data)
    if Path(source).suffix in TENSOR_SUFFIXES:
        static = _static_batch_size(signature)
        tensors = load_tensor_batches(Path(source), signature.names, static or config.batch_size)
        batches = [_as_dict(batch, signature.names, index, source)
                   for index, batch in enumerate(tensors)]
        if static and len(batches) > 1:  # a model of fixed batch size: drop the ragged tail
            batches = [batch for batch in batches
                       if all(len(array) == static for array in batch.values())]
        return CalibrationData(validate_batches(batches, signature, source), source)
    text = read_text(source)
    reader = text_reader(signature, source)
    if signature.max_positions is not None and config.seq_len > signature.max_positions:
        config = config.model_copy(update={"seq_len": signature.max_positions})
    static, length = _static_batch_size(signature), _static_sequence_length(signature)
    if static or length:
        config = config.model_copy(update={"batch_size": static or config.batch_size,
                                           "seq_len": length or config.seq_len})
        held_back = static if held_back and static else held_back
    ids_batches, held = split_text(tokenizer(), text, source, config, held_back)
    if static:  # a model of fixed batch size: whole batches only
        windows = sum(len(ids) for ids in ids_batches)
        ids_batches = [ids for ids in ids_batches if len(ids) == static]
        held = [ids for ids in held if len(ids) == static]
        if not ids_batches:
            raise ValueError(f"{source}: the text gives {windows} window(s) of "
                             f"{config.seq_len} tokens; the model takes batches of {static}: "
                             "give more text")
    batches = validate_batches([reader(ids) for ids in ids_batches], signature, source)
    held_batches = [reader(ids) for ids in held]
    return CalibrationData(batches, source, validate_batches(held_batches, signature, source)
                           if held_batches else [])


def split_text(tokenizer: Tokenizer, text: str, source: str, calibration: CalibrationConfig,
               held_back: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(calibration batches, held-back batches) of token windows [batch, seq] of `text`.

    The calibration windows cover at most calibration.max_tokens; the held-back batch
    has `held_back` windows: the windows after max_tokens, or, when the text ends
    before, the last calibration windows (one at least stays for calibration).
    """
    ids = tokenizer.encode(text)
    if ids.size < 2:
        raise ValueError(f"{source}: calibration text is empty (needs at least 2 tokens)")
    seq_len = min(calibration.seq_len, int(ids.size))
    windows = token_windows(ids, seq_len, calibration.max_tokens + held_back * seq_len)
    count = min(len(windows), max(1, calibration.max_tokens // seq_len))
    if held_back and count == len(windows):
        count = max(1, count - held_back)
    size = calibration.batch_size
    batches = [windows[i:min(i + size, count)] for i in range(0, count, size)]
    held = [windows[count:]] if count < len(windows) else []
    return batches, held


def text_reader(signature: ModelSignature, source: str) -> Callable[[np.ndarray], Batch]:
    """The feeds of every model input for token windows [batch, seq] (rule in the module
    docstring); an input that text cannot fill is an error naming it."""
    fill = {
        "input_ids": lambda ids: ids,
        "attention_mask": np.ones_like,
        "token_type_ids": np.zeros_like,
        "position_ids": lambda ids: np.broadcast_to(
            np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy(),
    }
    unknown = [name for name in signature.names if name not in fill]
    if unknown or "input_ids" not in signature.names:
        raise ValueError(
            f"{source}: text calibration feeds a model whose inputs are among "
            f"{', '.join(TEXT_INPUTS)} (with input_ids); this model takes "
            f"{', '.join(spec.describe() for spec in signature.inputs)}: give tensors "
            "(.npz keyed by input name)")
    return lambda ids: {name: fill[name](ids) for name in signature.names}


def synthetic_calibration(signature: ModelSignature, config: CalibrationConfig,
                          seed: int = 0) -> CalibrationData:
    """Batches drawn from the signature by the rule in the module docstring."""
    generator = np.random.default_rng(seed)
    batches = [{spec.name: _draw(spec, signature, config, generator)
                for spec in signature.inputs} for _ in range(SYNTHETIC_BATCHES)]
    return CalibrationData(validate_batches(batches, signature, "synthetic inputs"),
                           SYNTHETIC_SOURCE, synthetic=True)


def validate_batches(batches: list[Batch], signature: ModelSignature, source: str) -> list[Batch]:
    """The batches with each array cast to its input's dtype; a ValueError naming `source`,
    the batch and the input for anything the model cannot take (module docstring)."""
    if not batches:
        raise ValueError(f"{source}: no calibration batches")
    specs = {spec.name: spec for spec in signature.inputs}
    checked = []
    for index, batch in enumerate(batches):
        where = f"{source}: batch {index}"
        mismatch = name_mismatch(list(batch), list(specs))
        if mismatch:
            raise ValueError(f"{where}: inputs {mismatch}")
        arrays = {name: _check_array(np.asarray(batch[name]), specs[name], signature,
                                     f"{where}, input {name!r}") for name in specs}
        sizes = {name: a.shape[0] for name, a in arrays.items()
                 if a.ndim and _dynamic(specs[name], 0)}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{where}: the inputs differ in batch size {sizes}")
        checked.append(arrays)
    _warn_beyond_calibration(checked, specs.values(), source)
    return checked


class InputRangeWarning(InputWarning):
    """Inputs far beyond the range of the data the model was calibrated on (unnormalized
    images, another scale): the static DAC ranges will clip them."""


RANGE_FACTOR = 4.0  # max |x| beyond this many times the calibration data's: a warning


def input_ranges(batches: list[Batch]) -> dict[str, float]:
    """max |x| of every float input over `batches` (what a compiled model records)."""
    names = [name for name, array in batches[0].items() if np.asarray(array).dtype.kind == "f"]
    return {name: float(max(np.abs(np.asarray(batch[name])).max() for batch in batches))
            for name in names}


def _warn_beyond_calibration(batches: list[Batch], specs: Iterable[InputSpec],
                             source: str) -> None:
    """One InputRangeWarning per float input whose values reach RANGE_FACTOR times the
    max |x| of the compiled model's calibration data."""
    for spec in specs:
        if not spec.calibrated or spec.dtype.kind != "f":
            continue
        reach = max(float(np.abs(batch[spec.name]).max()) for batch in batches)
        if reach > RANGE_FACTOR * spec.calibrated:
            warnings.warn(f"{source}: input '{spec.name}' reaches |x| = {reach:.4g}, "
                          f"{reach / spec.calibrated:.0f}x the {spec.calibrated:.4g} of the "
                          "data the model was calibrated on (another scale, e.g. images not "
                          "normalized as in calibration?); the analog input ranges clip it",
                          InputRangeWarning, stacklevel=2)


def _check_array(array: np.ndarray, spec: InputSpec, signature: ModelSignature,
                 where: str) -> np.ndarray:
    kind, wanted = array.dtype.kind, spec.dtype.kind
    integer = {"i", "u", "b"}
    if (kind in integer) != (wanted in integer) or kind not in integer | {"f"}:
        raise ValueError(f"{where}: dtype {array.dtype}, the model takes {spec.dtype}")
    if spec.shape is not None:
        if array.ndim != len(spec.shape):
            raise ValueError(f"{where}: rank {array.ndim} (shape {list(array.shape)}), the "
                             f"model takes rank {len(spec.shape)} ({spec.describe()})")
        for axis, (size, dim) in enumerate(zip(array.shape, spec.shape, strict=True)):
            if isinstance(dim, int) and size != dim:
                raise ValueError(f"{where}: axis {axis} has size {size}, the model takes "
                                 f"{dim} ({spec.describe()})")
    if array.size == 0:
        raise ValueError(f"{where}: empty array (shape {list(array.shape)})")
    array = array.astype(spec.dtype, copy=False)  # float64 beyond float32 becomes inf here
    if kind == "f" and not np.isfinite(array).all():
        bad = array[~np.isfinite(array)].flat[0]
        raise ValueError(f"{where}: {np.count_nonzero(~np.isfinite(array))} non-finite "
                         f"value(s) (first {bad})")
    if spec.name == "input_ids":
        _check_token_ids(array, signature, where)
    return np.ascontiguousarray(array)


def _check_token_ids(ids: np.ndarray, signature: ModelSignature, where: str) -> None:
    low, high = int(ids.min()), int(ids.max())
    vocab = signature.vocab_size
    if low < 0 or (vocab is not None and high >= vocab):
        raise ValueError(f"{where}: token ids span [{low}, {high}], the vocabulary is "
                         f"[0, {vocab - 1 if vocab else '...'}]")
    limit = signature.max_positions
    if limit is not None and ids.ndim >= 2 and ids.shape[-1] > limit:
        raise ValueError(f"{where}: sequences of {ids.shape[-1]} tokens, the model's context "
                         f"is {limit} (max_position_embeddings)")


def _static_batch_size(signature: ModelSignature) -> int | None:
    """The first-axis size every input fixes, if all do and agree (a static-batch model)."""
    sizes = {spec.shape[0] if spec.shape else None for spec in signature.inputs}
    return sizes.pop() if len(sizes) == 1 and isinstance(next(iter(sizes)), int) else None


def _static_sequence_length(signature: ModelSignature) -> int | None:
    """The sequence length input_ids fixes (its second axis), if it does."""
    spec = next((spec for spec in signature.inputs if spec.name == "input_ids"), None)
    shape = spec.shape if spec is not None else None
    return shape[1] if shape and len(shape) > 1 and isinstance(shape[1], int) else None


def _dynamic(spec: InputSpec, axis: int) -> bool:
    return spec.shape is None or (axis < len(spec.shape) and not isinstance(spec.shape[axis],
                                                                             int))


def _draw(spec: InputSpec, signature: ModelSignature, config: CalibrationConfig,
          generator: np.random.Generator) -> np.ndarray:
    integer = spec.dtype.kind in "iub"
    dims = spec.shape if spec.shape is not None else (None, None) if integer else (None,)
    shape = []
    for axis, dim in enumerate(dims):
        if isinstance(dim, int):
            shape.append(dim)
        elif axis == 0:
            shape.append(config.batch_size)
        elif axis == 1 and integer:
            limit = signature.max_positions or config.seq_len
            shape.append(min(config.seq_len, limit))
        else:
            shape.append(SYNTHETIC_DIM)
    if spec.name == "attention_mask" or spec.dtype.kind == "b":
        return np.ones(shape, dtype=spec.dtype)
    if spec.name == "position_ids" and len(shape) == 2:
        return np.broadcast_to(np.arange(shape[1]), shape).astype(spec.dtype)
    if spec.name == "token_type_ids" or (integer and signature.vocab_size is None
                                         and spec.name != "input_ids"):
        return np.zeros(shape, dtype=spec.dtype)
    if integer:
        high = signature.vocab_size or 2
        return generator.integers(0, high, size=shape).astype(spec.dtype)
    return generator.standard_normal(shape).astype(spec.dtype)


def _iterate(data: Any) -> Iterable:
    try:
        return list(data)
    except TypeError:
        raise ValueError(f"calibration data: a text or tensor file path, or an iterable of "
                         f"input batches; got {type(data).__name__}") from None


def _as_dict(batch: Any, names: list[str], index: int, source: str = "calibration batches",
             ) -> Batch:
    if isinstance(batch, Mapping):
        return {str(name): _numpy(value) for name, value in batch.items()}
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        batch = (batch,)
    if not isinstance(batch, (tuple, list)) or len(batch) != len(names):
        count = len(batch) if isinstance(batch, (tuple, list)) else type(batch).__name__
        raise ValueError(f"{source}: batch {index} has {count} tensor(s), the model takes "
                         f"{len(names)} ({', '.join(names)})")
    return {name: _numpy(value) for name, value in zip(names, batch, strict=True)}


def _numpy(value: Any) -> np.ndarray:
    return tensor_to_numpy(value) if isinstance(value, torch.Tensor) else np.asarray(value)

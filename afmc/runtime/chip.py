"""A chip instance: one programming of a compiled aimc model's weights on ONNX Runtime.

Programming noise is sampled once per chip (seed) for every analog layer from
the weights stored in the file, and swapped into the in-memory model the
session is built from (program_into), so the file is never rewritten and each
inference costs the same as with the stored weights. Same seed, same chip.
Optional read noise draws fresh output noise on every inference.

A digital target (int8, int4; its record has a "digital" section) has no noise:
every seed is the same one chip, the session runs the quantized file, and the FP
view is the floating-point lowering stored beside it (OUT/reference.onnx).

Bad input is a one-line error naming the file: OUT/afmc.json that is not JSON or
lacks one of RECORD_KEYS, a model.onnx that does not parse or that onnxruntime
cannot load or run. When the record holds "max_positions" (the language
model's max_position_embeddings), running a longer sequence is an error naming
the length and the limit.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from afmc.input_files import read_json_object
from afmc.layout import MODEL_FILE, RECORD_FILE
from afmc.runtime.noise import NoiseConfig, layer_rng, program_weights
from afmc.runtime.sessions import complete_feeds, open_session, run_session, session_options
from afmc.runtime.views import fp_reference, with_read_noise
from afmc.user_errors import first_line

INLINE_LIMIT = 3 << 29  # 1.5 GiB: protobuf cannot serialise a model over 2 GiB
RECORD_KEYS = ("target", "inputs", "outputs", "config", "layers")


def load_record(out_dir: Path) -> dict[str, Any]:
    """OUT/afmc.json of a compiled model; a clear error if OUT is not one."""
    path = out_dir / RECORD_FILE
    if not path.is_file() or not (out_dir / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{out_dir}: not a compiled afmc model (no {RECORD_FILE} "
                                f"and {MODEL_FILE}; run 'afmc compile' first)")
    return read_json_object(path, "afmc record", RECORD_KEYS)


def load_model_file(path: Path) -> onnx.ModelProto:
    """The ONNX model in `path` (external data loaded); ValueError naming it if corrupt."""
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf's DecodeError and onnx's errors vary by version
        raise ValueError(f"{path}: not a valid ONNX model ({first_line(error, None)})") from None


def check_sequence_length(inputs: tuple[np.ndarray, ...], max_positions: int | None) -> None:
    """Raise ValueError when an input's sequence axis (axis 1) exceeds `max_positions`."""
    if max_positions is None:
        return
    for array in inputs:
        if array.ndim >= 2 and array.shape[1] > max_positions:
            raise ValueError(f"a sequence of {array.shape[1]} tokens exceeds the model's "
                             f"{max_positions} positions (max_position_embeddings)")


@dataclass
class Chip:
    """One ONNX Runtime session of a compiled model: an analog chip instance or the FP view."""

    session: ort.InferenceSession
    seed: int | None
    input_names: list[str]
    output_name: str
    path: Path | None = None
    max_positions: int | None = None

    def run(self, *inputs: np.ndarray) -> np.ndarray:
        """The first output for the model's inputs, given in the order of its graph inputs."""
        if len(inputs) != len(self.input_names):
            raise ValueError(f"the model takes {len(self.input_names)} input(s) "
                             f"({', '.join(self.input_names)}), got {len(inputs)}")
        check_sequence_length(inputs, self.max_positions)
        feeds = complete_feeds(self.session, dict(zip(self.input_names, inputs, strict=True)))
        return run_session(self.session, [self.output_name], feeds,
                           self.path or MODEL_FILE)[0]


def programmed_weights(model: onnx.ModelProto, record: dict[str, Any], noise: NoiseConfig,
                       seed: int) -> dict[str, np.ndarray]:
    """Sample the programmed weights of every analog layer for chip `seed`."""
    initializers = {init.name: init for init in model.graph.initializer}
    programmed = {}
    analog = [layer for layer in record["layers"] if layer.get("onnx_weight")]
    for index, layer in enumerate(analog):
        name = layer["onnx_weight"]
        weight = numpy_helper.to_array(initializers[name]).astype(np.float32)
        programmed[name] = program_weights(weight, layer["slice_sizes"], noise,
                                           layer_rng(seed, index))
    return programmed


def open_chip(out_dir: str | Path, seed: int | None = 0, *, read_noise: float = 0.0,
              fp: bool = False, threads: int | None = None,
              noise: NoiseConfig | None = None) -> Chip:
    """A session for chip `seed` (None: the stored weights, no programming noise).

    fp=True gives the floating-point reference view of the same file instead.
    `noise` replaces the programming-noise model of the file's record (its
    config.noise) for this chip; digital targets ignore it.
    """
    if read_noise < 0:
        raise ValueError(f"read noise must be >= 0, got {read_noise}")
    out_dir = Path(out_dir)
    record = load_record(out_dir)
    if is_digital(record):
        return _open_digital(out_dir, record, read_noise=read_noise, fp=fp, threads=threads)
    model = load_model_file(out_dir / MODEL_FILE)
    if noise is None:
        noise = NoiseConfig.model_validate(record["config"]["noise"])
    if fp:
        model = fp_reference(model)
        seed = None
    elif seed is not None and noise.model != "none":
        program_into(model, programmed_weights(model, record, noise, seed))
    if read_noise > 0 and not fp:
        model = with_read_noise(model, read_noise)
    session = model_session(model, session_options(threads), out_dir / MODEL_FILE)
    return Chip(session, seed, list(record["inputs"]), record["outputs"][0],
                out_dir / MODEL_FILE, record.get("max_positions"))


def program_into(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> None:
    """Replace the named initializers of the in-memory `model` (the file is not touched).

    The weights go into the model before the session is built, not through
    SessionOptions.add_initializer: onnxruntime constant-folds the weight-only part
    of the analog function bodies from the initializers it reads from the model,
    before overrides would apply, so an override would be folded away.
    """
    for initializer in model.graph.initializer:
        if initializer.name in weights:
            initializer.CopyFrom(numpy_helper.from_array(weights[initializer.name],
                                                         initializer.name))


def model_session(model: onnx.ModelProto, options: ort.SessionOptions,
                  name: Path = Path(MODEL_FILE)) -> ort.InferenceSession:
    """An onnxruntime session of an in-memory model; over 1.5 GiB via a temporary file.

    `name` (the file the model came from) names it in a load error."""
    if model.ByteSize() < INLINE_LIMIT:
        return open_session(model.SerializeToString(), options, name)
    with tempfile.TemporaryDirectory(prefix="afmc-chip-") as tmp:
        path = Path(tmp) / MODEL_FILE
        onnx.save(model, str(path), save_as_external_data=True, location=f"{MODEL_FILE}.data")
        return open_session(path, options, name)


def is_digital(record: dict[str, Any]) -> bool:
    """Whether a compiled model is a digital target's (int8, int4): no programming noise."""
    return "digital" in record


def _open_digital(out_dir: Path, record: dict[str, Any], *, read_noise: float, fp: bool,
                  threads: int | None) -> Chip:
    """The quantized file (or with fp=True its FP reference) as one noiseless chip."""
    if read_noise > 0:
        raise ValueError(f"read noise applies to analog targets; {out_dir} is a "
                         f"{record['target']} (digital) model")
    path = out_dir / (record["digital"]["reference"] if fp else MODEL_FILE)
    session = open_session(path, session_options(threads), path)
    return Chip(session, None, list(record["inputs"]), record["outputs"][0], path,
                record.get("max_positions"))

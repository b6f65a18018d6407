"""A chip instance: one ONNX Runtime session of a compiled model, and the record it runs by.

How a chip's session is made belongs to the target's runtime (runtime.analog for
aimc, runtime.stored for int8, int4 and fp; runtime.compiled picks one); a Chip
only runs it.

Bad input is a one-line error naming the file: OUT/afmc.json that is not JSON or
lacks one of RECORD_KEYS, a model.onnx that does not parse or that onnxruntime
cannot load or run. When the record holds "max_positions" (the language
model's max_position_embeddings), running a longer sequence is an error naming
the length and the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from afmc.data.kv_cache import KVCacheSpec, with_empty_pasts
from afmc.io.input_files import read_json_object
from afmc.io.layout import MODEL_FILE, RECORD_FILE
from afmc.io.user_errors import first_line
from afmc.runtime.sessions import run_session, session_kv_cache

RECORD_KEYS = ("target", "inputs", "outputs", "config", "layers")


def load_record(out_dir: Path) -> dict[str, Any]:
    """OUT/afmc.json of a compiled model; a clear error if OUT is not one."""
    path = out_dir / RECORD_FILE
    if not path.is_file() or not (out_dir / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{out_dir}: not a compiled afmc model (no {RECORD_FILE} "
                                f"and {MODEL_FILE}; run 'afmc compile' first)")
    return read_json_object(path, "afmc record", RECORD_KEYS)


def load_model_file(path: Path, *, weights: bool = True) -> onnx.ModelProto:
    """The ONNX model in `path` (external data loaded unless weights=False); ValueError
    naming it if corrupt."""
    try:
        return onnx.load(str(path), load_external_data=weights)
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
    kv_cache: KVCacheSpec | None = None  # the pasts fed empty when only data is given
    borrowed: list[np.ndarray] | None = None  # weights the session reads in place

    def run(self, *inputs: np.ndarray) -> np.ndarray:
        """The first output for the model's inputs, given in the order of its graph inputs."""
        if len(inputs) != len(self.input_names):
            raise ValueError(f"the model takes {len(self.input_names)} input(s) "
                             f"({', '.join(self.input_names)}), got {len(inputs)}")
        check_sequence_length(inputs, self.max_positions)
        feeds = with_empty_pasts(dict(zip(self.input_names, inputs, strict=True)),
                                 self.kv_cache)
        return run_session(self.session, [self.output_name], feeds,
                           self.path or MODEL_FILE)[0]


def chip_from_session(session: ort.InferenceSession, seed: int | None,
                      record: dict[str, Any], path: Path, *,
                      borrowed: list[np.ndarray] | None = None) -> Chip:
    """A Chip of `session`, fed and read by the names of the compiled model's `record`;
    `borrowed`: values the session computes on in place (kept alive with the chip)."""
    return Chip(session, seed, list(record["inputs"]), record["outputs"][0], path,
                record.get("max_positions"), session_kv_cache(session), borrowed or None)

"""ONNX Runtime sessions shared by the chip runtime and ORT-based calibration.

Rule: onnxruntime's own exception types (Fail, InvalidArgument, InvalidGraph, ...)
derive from Exception only; `open_session` and `run_session` turn them into a
one-line ValueError naming the model file, so a corrupt or unrunnable model.onnx
is a user error, not a traceback.
"""

from __future__ import annotations

import contextlib
import ctypes
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from afmc.data.kv_cache import KVCacheSpec, kv_cache_of_inputs
from afmc.io.user_errors import first_line

PROVIDERS = ["CPUExecutionProvider"]
INLINE_LIMIT = 3 << 29  # 1.5 GiB: protobuf cannot serialise a model over 2 GiB


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Silent session options (failures surface as exceptions), with `threads` intra-op
    threads when given."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    if threads:
        options.intra_op_num_threads = threads
    return options


def is_ort_error(error: BaseException) -> bool:
    """Whether `error` is one of onnxruntime's exception types."""
    return type(error).__module__.startswith("onnxruntime")


def open_session(model: bytes | str | Path, options: ort.SessionOptions,
                 name: Path) -> ort.InferenceSession:
    """A CPU session of `model` (serialized bytes or a file); ValueError naming `name`."""
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                    options, providers=PROVIDERS)
    except Exception as error:
        if not is_ort_error(error):
            raise
        raise ValueError(f"{name}: onnxruntime cannot load the model "
                         f"({first_line(error)})") from None


def run_session(session: ort.InferenceSession, outputs: list[str],
                feeds: dict[str, np.ndarray], name: Path | str) -> list[np.ndarray]:
    """session.run(outputs, feeds); onnxruntime's failure a ValueError naming `name`."""
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4
    try:
        return session.run(outputs, feeds, quiet)
    except Exception as error:
        if not is_ort_error(error):
            raise
        raise ValueError(f"{name}: onnxruntime failed to run the model "
                         f"({first_line(error)})") from None


def session_kv_cache(session: ort.InferenceSession) -> KVCacheSpec | None:
    """The KV cache the session's model takes (afmc.data.kv_cache), or None; read once per
    session by whoever runs it, not per run."""
    return kv_cache_of_inputs((arg.name, arg.shape) for arg in session.get_inputs())


def model_session(model: onnx.ModelProto, options: ort.SessionOptions,
                  name: Path = Path("model.onnx")) -> ort.InferenceSession:
    """A session of an in-memory model with its weights; over 1.5 GiB via a temporary
    file with external data. `name` (the file the model came from) names it in a
    load error."""
    if model.ByteSize() < INLINE_LIMIT:
        return open_session(model.SerializeToString(), options, name)
    with tempfile.TemporaryDirectory(prefix="afmc-session-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data")
        return open_session(path, options, name)


def release_free_memory() -> None:
    """Give the heap memory freed so far back to the system (glibc's malloc_trim).

    Many weight-sized arrays of a few MB each come from the heap once glibc has raised
    its mmap threshold, and stay counted in the process's memory after they are
    freed; a chip's session build frees a copy of every analog weight. No-op where
    the C library has no malloc_trim.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)

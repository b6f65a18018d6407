"""ONNX Runtime session options shared by the chip runtime and ORT-based calibration."""

from __future__ import annotations

import onnxruntime as ort


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Quiet session options, with `threads` intra-op threads when given."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return options

"""ONNX Runtime's quantization tools, imported and run without their logging side effects.

Importing ONNX Runtime's weight-only quantizers (its GPTQ, via onnxruntime.quantization)
may call ``logging.basicConfig(level=INFO)``, which would make every library in the
process log at INFO; quantize_static warns on the root logger that the model was not
pre-processed (afmc deliberately does not pre-process: ONNX Runtime's pre-processing
renames and fuses nodes, and afmc selects the nodes to quantize by name); GPTQ prints a
progress bar on stdout. Rules: the root logger's handlers and level are restored right
after the import, and `quiet()` silences warnings and stdout while a quantizer runs.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

_root = logging.getLogger()
_handlers, _level = list(_root.handlers), _root.level
try:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.neural_compressor.weight_only import gptq_quantize
finally:
    for handler in list(_root.handlers):
        if handler not in _handlers:
            _root.removeHandler(handler)
    _root.setLevel(_level)

__all__ = [
    "CalibrationDataReader",
    "CalibrationMethod",
    "QuantFormat",
    "QuantType",
    "gptq_quantize",
    "quantize_static",
    "quiet",
]

_LOGGERS = ("", "onnxruntime", "neural_compressor")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Run a quantizer with its loggers at ERROR and its stdout discarded."""
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)

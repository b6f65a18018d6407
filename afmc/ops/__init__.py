"""The afmc op set: torch custom ops, their ONNX functions, and the translation between them.

Importing this package registers every op's ONNX function with the domain `afmc`
(afmc.ops.analog_linear_onnx, no torch); the torch ops and the translation table
(`TRANSLATIONS`, `analog_linear`) load with torch on first use, so a compiled model
opens and runs without importing torch.
"""

from typing import Any

from afmc.ops import analog_linear_onnx, sparse_outliers_onnx  # noqa: F401  (ONNX schemas)
from afmc.ops.onnx_domain import DOMAIN, VERSION, function_protos

__all__ = ["DOMAIN", "VERSION", "TRANSLATIONS", "analog_linear", "function_protos"]


def __getattr__(name: str) -> Any:
    if name == "TRANSLATIONS":
        from afmc.ops import analog_linear, sparse_outliers

        return {**analog_linear.TRANSLATIONS, **sparse_outliers.TRANSLATIONS}
    if name == "analog_linear":  # registers afmc::analog_linear with torch
        import importlib

        return importlib.import_module("afmc.ops.analog_linear")
    raise AttributeError(f"module 'afmc.ops' has no attribute {name!r}")

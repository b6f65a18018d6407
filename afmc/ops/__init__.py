"""The afmc op set: torch custom ops, their ONNX functions, and the translation between them.

Importing this package registers every op with torch and with the ONNX domain `afmc`.
"""

from afmc.ops import analog_linear
from afmc.ops.onnx_domain import DOMAIN, VERSION, function_protos

TRANSLATIONS = {**analog_linear.TRANSLATIONS}

__all__ = ["DOMAIN", "VERSION", "TRANSLATIONS", "analog_linear", "function_protos"]

"""afmc passes: FX passes on the torch-level program, ONNX passes on ONNX graphs.

Importing this package registers every pass by name (see registry.PASSES).
"""

from afmc.passes.fx import calibrate, insert_analog_linear, place_layers
from afmc.passes.registry import PASSES, get_pass, register_pass

__all__ = ["PASSES", "calibrate", "get_pass", "insert_analog_linear", "place_layers",
           "register_pass"]

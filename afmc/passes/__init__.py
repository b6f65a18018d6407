"""afmc passes: FX passes on the torch-level program, ONNX passes on ONNX graphs.

Importing this package registers every pass by name (see registry.PASSES).
"""

from afmc.passes.fx import (
    calibrate,
    chip_smooth_inputs,
    fold_batchnorm,
    fold_norms,
    insert_analog_linear,
    learned_ranges,
    place_layers,
    smooth_inputs,
    split_outliers,
)
from afmc.passes.onnx import calibrate as onnx_calibrate
from afmc.passes.onnx import chip_smooth_inputs as onnx_chip_smooth_inputs
from afmc.passes.onnx import fold_norms as onnx_fold_norms
from afmc.passes.onnx import insert_analog_linear as onnx_insert_analog_linear
from afmc.passes.onnx import learned_ranges as onnx_learned_ranges
from afmc.passes.onnx import place_layers as onnx_place_layers
from afmc.passes.onnx import smooth_inputs as onnx_smooth_inputs
from afmc.passes.onnx import split_outliers as onnx_split_outliers
from afmc.passes.onnx import upgrade_opset as onnx_upgrade_opset
from afmc.passes.registry import PASSES, get_pass, register_pass

__all__ = ["PASSES", "calibrate", "chip_smooth_inputs", "fold_batchnorm", "fold_norms", "get_pass",
           "insert_analog_linear", "learned_ranges", "onnx_calibrate", "onnx_chip_smooth_inputs",
           "onnx_fold_norms", "onnx_insert_analog_linear", "onnx_learned_ranges",
           "onnx_place_layers", "onnx_smooth_inputs", "onnx_split_outliers",
           "onnx_upgrade_opset", "place_layers", "register_pass", "smooth_inputs",
           "split_outliers"]

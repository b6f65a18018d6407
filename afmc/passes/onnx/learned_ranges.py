"""Learned ranges on an ONNX graph: each analog layer takes the input ranges that
hardware-aware training learned.

Rule (the FX pass learned-ranges' rule, on the ONNX graph): the analog node of layer NAME
(its LayerRecord name, as onnx-place-layers gives it) takes the ranges stored under NAME in
the trained model's afmc_ranges.safetensors (``model.meta["afmc_learned_ranges"]``, set by
the ONNX front end) into its input_range initializer; it must have one range per input
slice of the compile's hardware.max_in. An analog layer without learned ranges, or with
another slice count, is an error naming it: the model was trained with another placement
or hardware, so compile with the trained configuration or recalibrate.

A layer trained with a digital input scale s (entry ``NAME.input_scale``, one value per
crossbar input: a Conv's in im2col order) gets it back as the training computed it: a
digital ``Div(X, s)`` on the crossbar input (after im2col, before afmc.SliceInput), and
its crossbar matrix becomes W diag(s), in place: onnx-insert-analog-linear gives every
analog node a weight initializer of its own (a copy when the model's weight is also read
elsewhere), so no other reader sees the scaled matrix. A layer trained with outlier
weights (entry ``NAME.outliers_per_slice`` = m) is then split as onnx-split-outliers
splits it at count m (split_outliers.split_layer: the m largest |w| of every row slice of
W diag(s) to the exact digital sparse path). Each record's ``calibrated`` becomes
"learned".
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import torch

from afmc.config import AfmcConfig
from afmc.ops import onnx_model
from afmc.passes.layers import META_KEY
from afmc.passes.learned_ranges import (
    META_RANGES,
    OUTLIERS_SUFFIX,
    SCALE_SUFFIX,
    layer_ranges,
)
from afmc.passes.onnx.graph_edit import Names, add_initializer
from afmc.passes.onnx.ordering import OrderedOnnxPass
from afmc.passes.onnx.split_outliers import split_layer
from afmc.passes.registry import register_pass
from afmc.passes.stages import Needs

PASS = "onnx-learned-ranges"


@register_pass(PASS, "onnx")
class OnnxLearnedRanges(OrderedOnnxPass):
    """Set analog input ranges from a trained model's learned ranges (no calibration)."""

    needs = Needs(analog_ops=True)

    def __init__(self, config: AfmcConfig) -> None:
        super().__init__()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        ranges: dict[str, torch.Tensor] | None = model.meta.get(META_RANGES)
        if ranges is None:
            raise ValueError(f"{PASS}: the model has no learned input ranges "
                             "(afmc_ranges.safetensors of afmc train beside the ONNX file)")
        analog = [node for node in onnx_model.analog_nodes(model) if META_KEY in node.meta]
        names = Names(model.graph)
        split = False
        for node in analog:
            record = node.meta[META_KEY]
            name = record.name
            learned = layer_ranges(ranges, name, record, PASS)
            input_range = node.inputs[2]
            input_range.const_value = ir.tensor(_float32(learned), name=input_range.name)
            scale = ranges.get(name + SCALE_SUFFIX)
            if scale is not None:
                if scale.numel() != record.in_features:
                    raise ValueError(f"{PASS}: {name}{SCALE_SUFFIX} has {scale.numel()} "
                                     f"values but the layer has {record.in_features} inputs")
                _scale_input(model.graph, names, node, _float32(scale))
            count = ranges.get(name + OUTLIERS_SUFFIX)
            if count is not None and int(count):
                split_layer(model.graph, names, node, int(count))
                split = True
            record.calibrated = "learned"
        if split:
            onnx_model.attach_afmc_functions(model)
        return ir.passes.PassResult(model, bool(analog))


def _float32(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).reshape(-1).numpy()


def _scale_input(graph: ir.Graph, names: Names, node: ir.Node, scale: np.ndarray) -> None:
    """X -> Div(X, s) before the analog `node` (before its afmc.SliceInput, if any); its
    crossbar matrix W -> W diag(s)."""
    weight = onnx_model.source_initializer(node.inputs[1])
    scaled = np.asarray(weight.const_value.numpy(), dtype=np.float32) * scale
    weight.const_value = ir.tensor(scaled, name=weight.name)
    x = onnx_model.source_initializer(node.inputs[0])
    reader = node if node.inputs[0] is x else node.inputs[0].producer()
    divisor = add_initializer(graph, names, f"{node.meta[META_KEY].name}.input_scale", scale)
    div = ir.node("Div", [x, divisor], name=names.fresh(f"{node.name}/InputScale"))
    divided = div.outputs[0]
    divided.name = names.fresh(f"{x.name}_scaled")
    divided.type, divided.shape = x.type, x.shape
    graph.insert_before(reader, div)
    reader.replace_input_with(0, divided)

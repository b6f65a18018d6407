"""Analog insertion on an ONNX graph: analog-placed layers become afmc.AnalogLinear nodes.

Rule: each static-weight layer marked analog by onnx-place-layers becomes
``afmc.AnalogLinear(X, W, input_range)`` (``NoisyAnalogLinear`` when
hardware.out_noise > 0; both X and W through ``afmc.SliceInput`` when the input
slices are unequal) with W the [N, K] crossbar matrix (a MatMul's [K, N] weight
transposed, a Gemm's times alpha, a Conv's flattened) and input_range a new
initializer with one entry per slice (ones; onnx-calibrate sets it). The stored
weight is reused when it already is that matrix and nothing else reads it. The
bias stays digital: an Add of beta * C (Gemm) or B (Conv) after the analog node.
A Gemm with transA=1 gets a Transpose on X. A Conv becomes im2col +
AnalogLinear: a depthwise Conv (group C) with a one-hot kernel [C*k, 1, k...] (same
strides, pads, dilations) gathers every patch exactly, channel by channel, in the
flattened weight's order (c * k + position), Transpose moves the patch axis last, and
a Transpose after the bias add restores [batch, N, spatial...]. A grouped Conv
placed analog (placement.grouped_convs=analog) reads the whole patch through its
block-diagonal [N, C*k] matrix, exact in FP; its record keeps `groups` for the
tile count (a slice's tiles hold only its groups' columns). The model-local
functions of the afmc ops used are attached, so the model runs on a stock
onnxruntime.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import onnx_ir as ir

from afmc.config import AfmcConfig, HardwareConfig
from afmc.ops import onnx_domain, onnx_model
from afmc.ops.analog_linear import slice_sizes
from afmc.passes.layers import META_KEY, LayerRecord, tile_count
from afmc.passes.onnx.graph_edit import Names, add_initializer, drop_if_unused
from afmc.passes.onnx.ordering import OrderedOnnxPass
from afmc.passes.onnx.static_layers import (
    OnnxLayer,
    constant,
    crossbar_matrix,
    find_static_layers,
)
from afmc.passes.onnx.upgrade_opset import default_opset
from afmc.passes.registry import register_pass
from afmc.passes.stages import Needs

_CONV_ATTRIBUTES = ("auto_pad", "dilations", "kernel_shape", "pads", "strides")


class _Builder:
    """Collects the new nodes of one layer's rewrite."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[ir.Node] = []

    def op(
        self, op_type: str, inputs: list[ir.Value | None], domain: str = "", **attributes: Any
    ) -> ir.Value:
        node = ir.Node(
            domain,
            op_type,
            inputs,
            attributes=ir.convenience.convert_attributes(attributes),
            name=f"{self.prefix}/{op_type}_{len(self.nodes)}",
        )
        self.nodes.append(node)
        return node.outputs[0]


@register_pass("onnx-insert-analog-linear", "onnx")
class InsertOnnxAnalogLinear(OrderedOnnxPass):
    """Replace analog-placed MatMul/Gemm/Conv layers by afmc.AnalogLinear plus a digital bias."""

    needs = Needs(placed=True)

    def __init__(self, config: AfmcConfig) -> None:
        super().__init__()
        self.hardware = config.hardware

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = default_opset(model)
        if opset < onnx_domain.MIN_OPSET:
            raise ValueError(
                f"afmc analog ops need ONNX opset >= {onnx_domain.MIN_OPSET}, the "
                f"model has {opset} (run onnx-upgrade-opset first)"
            )
        graph = model.graph
        names = Names(graph)
        modified = False
        for layer in find_static_layers(graph):
            record = layer.node.meta.get(META_KEY)
            if record is None or record.placement != "analog" or layer.unsupported:
                continue
            _rewrite(graph, names, layer, record, self.hardware)
            modified = True
        if modified:
            onnx_model.attach_afmc_functions(model)
        return ir.passes.PassResult(model, modified)


def _exclusive(layer: OnnxLayer) -> bool:
    """Whether the stored weight is read by this layer only (directly or via its Transpose)."""
    return (
        layer.weight.is_initializer()
        and len(layer.weight.uses()) == 1
        and len(layer.weight_input.uses()) == 1
    )


def _rewrite(
    graph: ir.Graph, names: Names, layer: OnnxLayer, record: LayerRecord, hw: HardwareConfig
) -> None:
    layer = dataclasses.replace(layer, name=record.name)
    node = layer.node
    alpha = node.attributes.get_float("alpha", 1.0) if node.op_type == "Gemm" else 1.0
    if layer.layout == "nk" and alpha == 1.0 and _exclusive(layer):
        weight = layer.weight
    else:
        weight = add_initializer(
            graph, names, f"{layer.name}.analog_weight", crossbar_matrix(layer) * np.float32(alpha)
        )
    sizes = slice_sizes(layer.crossbar_features, hw.max_in)
    input_range = add_initializer(
        graph, names, f"{layer.name}.input_range", np.ones(len(sizes), np.float32)
    )
    build = _Builder(node.name or layer.name)
    x = node.inputs[0]
    if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
        x = build.op("Transpose", [x], perm=[1, 0])
    if node.op_type == "Conv":
        x = _im2col(graph, names, build, layer, x)
    x_in, w_in = x, weight
    if len(set(sizes)) > 1:
        x_in = build.op("SliceInput", [x], domain=onnx_domain.DOMAIN, slice_sizes=sizes)
        w_in = build.op("SliceInput", [weight], domain=onnx_domain.DOMAIN, slice_sizes=sizes)
    attributes = {
        "inp_res": float(hw.inp_res),
        "out_res": float(hw.out_res),
        "out_bound": float(hw.out_bound),
    }
    if hw.out_noise > 0:
        y = build.op(
            "NoisyAnalogLinear",
            [x_in, w_in, input_range],
            domain=onnx_domain.DOMAIN,
            out_noise=float(hw.out_noise),
            **attributes,
        )
    else:
        y = build.op(
            "AnalogLinear", [x_in, w_in, input_range], domain=onnx_domain.DOMAIN, **attributes
        )
    analog = y.producer()
    # Typed, so that onnxruntime need not infer it through the function body: a chip's
    # fused form of that body holds afmc.kernels ops, which it cannot infer through.
    y.dtype = ir.DataType.FLOAT
    y = _bias(graph, names, build, layer, y)
    if node.op_type == "Conv":
        rank = len(constant(layer.weight).shape)
        y = build.op("Transpose", [y], perm=[0, rank - 1, *range(1, rank - 1)])
    old_inputs = list(node.inputs)
    ir.convenience.replace_nodes_and_values(
        graph, node, [node], build.nodes, [node.outputs[0]], [y]
    )
    for value in old_inputs:
        drop_if_unused(graph, value)
    record.slice_sizes = sizes
    record.in_features, record.groups = layer.crossbar_features, layer.groups
    record.tiles = tile_count(sizes, layer.out_features, hw.tile_rows, hw.tile_cols,
                              layer.groups)
    record.input_range = record.onnx_input_range = input_range.name
    record.onnx_weight = weight.name
    analog.meta[META_KEY] = record
    analog.metadata_props.update(node.metadata_props)


def _bias(
    graph: ir.Graph, names: Names, build: _Builder, layer: OnnxLayer, y: ir.Value
) -> ir.Value:
    """Add the layer's bias digitally: beta * C for a Gemm, B for a Conv."""
    node = layer.node
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is None:
        return y
    beta = node.attributes.get_float("beta", 1.0) if node.op_type == "Gemm" else 1.0
    if beta == 0.0:
        return y
    if beta != 1.0:
        value = constant(bias)
        if value is not None:
            bias = add_initializer(graph, names, f"{layer.name}.bias", value * np.float32(beta))
        else:
            scale = add_initializer(graph, names, f"{layer.name}.beta", np.float32(beta))
            bias = build.op("Mul", [bias, scale])
    return build.op("Add", [y, bias])


def _im2col(
    graph: ir.Graph, names: Names, build: _Builder, layer: OnnxLayer, x: ir.Value
) -> ir.Value:
    """Every input patch of the Conv as the last axis: [batch, spatial..., C * k1 * ...]
    (all C input channels, also of a grouped Conv)."""
    node = layer.node
    shape = constant(layer.weight).shape
    channels, kernel = shape[1] * layer.groups, tuple(shape[2:])
    positions = math.prod(kernel)
    # channel c's patch values are outputs c * positions + p: a one-hot kernel per channel
    one_hot = np.tile(np.eye(positions, dtype=np.float32).reshape(positions, 1, *kernel),
                      (channels, 1, *[1] * len(kernel)))
    patches_kernel = add_initializer(graph, names, f"{layer.name}.im2col", one_hot)
    attributes = {
        key: node.attributes[key].value for key in _CONV_ATTRIBUTES if key in node.attributes
    }
    patches = build.op("Conv", [x, patches_kernel], group=channels, **attributes)
    spatial = len(kernel)
    return build.op("Transpose", [patches], perm=[0, *range(2, spatial + 2), 1])

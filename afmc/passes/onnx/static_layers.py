"""Find the static-weight layers of an ONNX graph: the products an analog crossbar can hold.

A layer is a node of the main graph with a constant weight (an initializer or a
Constant node's value):

- ``MatMul(X, W)`` with W [K, N], or W = ``Transpose(V, perm=[1, 0])`` with V [N, K];
- ``Gemm(A, B, C)`` with B constant: B is [K, N], or [N, K] with transB=1 (transA,
  alpha and beta are handled where the layer is rewritten);
- ``Conv(X, W)`` with W [N, C / group, k1, ...]: an im2col product with W as
  [N, C / group * k1 * ...] per group. A grouped convolution (``groups`` > 1, depthwise
  included) is a layer that an integer accelerator computes as it is; a crossbar holds
  it only as the block-diagonal [N, C * k1 * ...] matrix of the whole im2col patch (zero
  outside each group's block), so the placement pass decides by target and by
  ``placement.grouped_convs``.

Layers that stay digital, with the reason in `unsupported` (the placement pass
records and warns): a constant left MatMul/Gemm operand (W @ X), a MatMul weight
of rank other than 2, a weight that is not float32 or is
computed from constants by another node (DequantizeLinear, Cast: fold constants
first), and ops with a constant matrix operand that afmc does not map
(ConvTranspose, Einsum, quantized and contrib matrix products). A MatMul of two
activations (attention scores and values) is not a layer at all. Subgraphs of
control-flow nodes and model-local functions are not searched.

The layer name is the module path the torch exporter records in the node's
``pkg.torch.onnx.name_scopes`` metadata (the same name the torch path gives the
layer), else the node name, else the weight's name. A Conv into which the exporter's
optimizer fused a batch norm carries the norm's scope: it is named after its weight's
module instead (``_blocks.0._depthwise_conv.weight`` -> ``_blocks.0._depthwise_conv``).
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_ir as ir

from afmc.passes.layers import META_KEY, LayerRecord

Layout = Literal["kn", "nk", "conv"]
"""How the stored weight maps onto the crossbar's [N, K]: transpose, as is, or flatten."""

_UNMAPPED = {
    "ConvTranspose",
    "ConvInteger",
    "Einsum",
    "FusedMatMul",
    "MatMulInteger",
    "MatMulNBits",
    "QGemm",
    "QLinearConv",
    "QLinearMatMul",
    "DynamicQuantizeMatMul",
}
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"
_REWRITE_RULES = "pkg.onnxscript.rewriter.rule_name"


class UnsupportedLayerWarning(UserWarning):
    """A static-weight layer stays digital because afmc cannot map it to an analog op."""


@dataclass(frozen=True)
class OnnxLayer:
    """One static-weight layer: y = x @ W^T with W the [N, K] crossbar matrix after layout."""

    node: ir.Node
    name: str
    weight: ir.Value
    layout: Layout
    in_features: int
    out_features: int
    unsupported: str = ""
    groups: int = 1  # a Conv's group attribute

    @property
    def crossbar_limit(self) -> str:
        """Why crossbars hold this layer only block-diagonally ('' if they hold it as it is)."""
        if self.groups != 1:
            return f"grouped Conv (group={self.groups})"
        return ""

    @property
    def crossbar_features(self) -> int:
        """K of the crossbar matrix: the whole im2col patch of a grouped Conv."""
        return self.in_features * self.groups

    @property
    def weight_input(self) -> ir.Value:
        """The node's weight operand as wired (a Transpose output when the weight is behind one)."""
        return self.node.inputs[1]


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The value of an initializer or Constant node output, else None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def crossbar_matrix(layer: OnnxLayer) -> np.ndarray:
    """The layer's weight as the [N, K] float32 matrix a crossbar holds (block-diagonal
    for a grouped Conv: group g's outputs read only group g's channels)."""
    stored = constant(layer.weight)
    if layer.layout == "kn":
        return np.ascontiguousarray(stored.T)
    if layer.groups == 1:
        return np.ascontiguousarray(stored.reshape(stored.shape[0], -1))
    outputs, per_group = stored.shape[0] // layer.groups, layer.in_features
    matrix = np.zeros((stored.shape[0], layer.crossbar_features), np.float32)
    for group in range(layer.groups):
        rows = slice(group * outputs, (group + 1) * outputs)
        matrix[rows, group * per_group:(group + 1) * per_group] = \
            stored[rows].reshape(outputs, per_group)
    return matrix


def layer_name(node: ir.Node, weight: ir.Value) -> str:
    """The torch exporter's module path of `node`, else the node name, else `weight`'s name
    (a Conv with a fused batch norm: the module of its weight)."""
    fused_norm = "BatchNorm" in node.metadata_props.get(_REWRITE_RULES, "")
    if fused_norm and weight.name and weight.name.endswith(".weight"):
        return weight.name.removesuffix(".weight")
    scopes = node.metadata_props.get(_NAME_SCOPES)
    if scopes:
        try:
            parsed = ast.literal_eval(scopes)
        except (SyntaxError, ValueError):
            parsed = None
        if isinstance(parsed, list) and len(parsed) >= 2 and parsed[-2]:
            return str(parsed[-2])
    return node.name or weight.name or node.op_type


def find_static_layers(graph: ir.Graph) -> list[OnnxLayer]:
    """Every static-weight layer of `graph`'s own nodes, in graph order."""
    layers = []
    for node in graph:
        layer = _layer(node)
        if layer is not None:
            layers.append(layer)
    return layers


def _layer(node: ir.Node) -> OnnxLayer | None:
    if node.domain not in ("", "ai.onnx"):
        return _unmapped(node)
    if node.op_type == "MatMul":
        return _matmul(node)
    if node.op_type == "Gemm":
        return _gemm(node)
    if node.op_type == "Conv":
        return _conv(node)
    return _unmapped(node)


def _make(
    node: ir.Node,
    weight: ir.Value,
    layout: Layout,
    in_features: int,
    out_features: int,
    unsupported: str = "",
    groups: int = 1,
) -> OnnxLayer:
    stored = ir.convenience.get_const_tensor(weight)
    if not unsupported and stored is not None and stored.dtype != ir.DataType.FLOAT:
        unsupported = f"{stored.dtype.name.lower()} weight (afmc analog ops take float32)"
    return OnnxLayer(
        node, layer_name(node, weight), weight, layout, in_features, out_features, unsupported,
        groups,
    )


def _const_derived(value: ir.Value | None) -> str:
    """The op type of the node computing `value` from constants only, else ''."""
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type == "Constant":
        return ""
    if all(v is None or constant(v) is not None for v in producer.inputs):
        return producer.op_type
    return ""


def _matmul(node: ir.Node) -> OnnxLayer | None:
    x, w = node.inputs[0], node.inputs[1]
    if constant(x) is not None:
        if constant(w) is None and (shape := constant(x).shape) and len(shape) >= 2:
            return _make(
                node,
                x,
                "nk",
                shape[-1],
                shape[-2],
                "constant left operand (W @ X): not a crossbar product x @ W^T",
            )
        return None
    weight, layout = w, "kn"
    producer = w.producer()
    if producer is not None and producer.op_type == "Transpose" and constant(w) is None:
        inner = producer.inputs[0]
        perm = producer.attributes.get_ints("perm", None)
        value = constant(inner)
        if value is not None and value.ndim == 2 and (perm is None or list(perm) == [1, 0]):
            weight, layout = inner, "nk"
    value = constant(weight)
    if value is None:
        return _computed_weight(node, w)
    if value.ndim != 2:
        return _make(node, weight, layout, 0, 0, f"weight of rank {value.ndim} (needs 2)")
    k, n = value.shape if layout == "kn" else value.shape[::-1]
    return _make(node, weight, layout, int(k), int(n))


def _computed_weight(node: ir.Node, weight: ir.Value) -> OnnxLayer | None:
    """A layer left digital because its weight is computed from constants, else None."""
    derived = _const_derived(weight)
    if not derived:
        return None
    return _make(node, weight, "kn", 0, 0,
                 f"weight computed from constants by {derived} (fold constants first)")


def _gemm(node: ir.Node) -> OnnxLayer | None:
    b = node.inputs[1]
    trans_b = node.attributes.get_int("transB", 0)
    value = constant(b)
    if value is None:
        if constant(node.inputs[0]) is not None:
            shape = constant(node.inputs[0]).shape
            return _make(
                node,
                node.inputs[0],
                "nk",
                shape[-1],
                shape[-2],
                "constant left operand (W @ X): not a crossbar product x @ W^T",
            )
        return _computed_weight(node, b)
    layout: Layout = "nk" if trans_b else "kn"
    k, n = value.shape if layout == "kn" else value.shape[::-1]
    return _make(node, b, layout, int(k), int(n))


def _conv(node: ir.Node) -> OnnxLayer | None:
    w = node.inputs[1]
    value = constant(w)
    if value is None:
        derived = _const_derived(w)
        if derived:
            return _make(
                node,
                w,
                "conv",
                0,
                0,
                f"weight computed from constants by {derived} (fold constants first)",
            )
        return None
    in_features, out_features = int(math.prod(value.shape[1:])), int(value.shape[0])
    groups = node.attributes.get_int("group", 1)
    return _make(node, w, "conv", in_features, out_features, groups=groups)


def _unmapped(node: ir.Node) -> OnnxLayer | None:
    if node.op_type not in _UNMAPPED:
        return None
    for value in node.inputs:
        stored = constant(value)
        if stored is not None and stored.ndim >= 2:
            return _make(
                node,
                value,
                "nk",
                0,
                0,
                f"{node.domain + '.' if node.domain else ''}{node.op_type} has no afmc analog form",
            )
    return None


def onnx_layer_records(model: ir.Model) -> list[LayerRecord]:
    """The records of every static-weight layer of `model`'s graph, in graph order."""
    return [node.meta[META_KEY] for node in model.graph if META_KEY in node.meta]

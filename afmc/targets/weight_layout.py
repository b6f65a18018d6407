"""Give every static-weight layer of a lowered model a MatMul with a constant [in, out] weight.

ONNX Runtime's quantizers (quantize_static, MatMulNBitsQuantizer) quantize a MatMul whose
second input is an initializer. The floating-point lowering writes a layer as
MatMul(x, Transpose(W)) (aten.linear, W is [out, in]), as Gemm(x, W, b) (aten.linear or
aten.addmm on a 2-D input) or as MatMul(x, W) (W already [in, out], e.g. GPT-2's Conv1D).
Each layer is found by its weight's initializer name (LayerRecord.weight, the torch
parameter name, which the lowering keeps) and rewritten by these rules:

- Transpose(W, perm=[1, 0]) is folded: a new initializer ``<W>.T`` holds W^T, and every
  MatMul that read the Transpose reads it instead.
- Gemm(x, W, b) with alpha = beta = 1 and transA = 0 becomes MatMul(x, W') then Add(b),
  where W' is W^T when transB = 1; the MatMul takes the Gemm's name.
- MatMul(x, W) is kept as it is.
- W itself is dropped once nothing reads it (a tied embedding table still does).

A layer whose weight reaches no MatMul or Gemm is an error naming the layer. Other
layers are not touched, so a layer kept in floating point stays exactly as lowered.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from afmc.passes.layers import LayerRecord


def layer_convs(model: ir.Model, layers: Sequence[LayerRecord]) -> dict[str, list[ir.Node]]:
    """The Conv nodes of each layer whose weight is a convolution kernel (ONNX input), by
    layer name; layers that are matrix products are not listed."""
    graph = model.graph
    found: dict[str, list[ir.Node]] = {}
    for layer in layers:
        weight = graph.initializers.get(layer.weight)
        convs = [user for user, index in weight.uses() if user.op_type == "Conv" and index == 1
                 ] if weight is not None else []
        if convs:
            found[layer.name] = convs
    return found


def layer_matmuls(model: ir.Model, layers: Sequence[LayerRecord]) -> dict[str, list[ir.Node]]:
    """Rewrite `layers` of `model` in place; return each layer's MatMul node(s) by layer name."""
    graph = model.graph
    found: dict[str, list[ir.Node]] = {}
    for layer in layers:
        weight = graph.initializers.get(layer.weight)
        if weight is None or weight.const_value is None:
            raise RuntimeError(
                f"layer {layer.name}: the lowered model has no initializer {layer.weight!r}"
            )
        nodes: list[ir.Node] = []
        for user, index in list(weight.uses()):
            if user.op_type == "Transpose" and _perm(user) == [1, 0]:
                nodes.extend(_fold_transpose(graph, user, weight))
            elif user.op_type == "Gemm" and index == 1:
                nodes.append(_gemm_to_matmul(graph, user, weight, layer.name))
            elif user.op_type == "MatMul" and index == 1:
                nodes.append(user)
        if not nodes:
            raise RuntimeError(
                f"layer {layer.name}: its weight {layer.weight!r} reaches no "
                "MatMul or Gemm in the lowered model"
            )
        if not weight.uses():
            graph.initializers.pop(weight.name)
        found[layer.name] = nodes
    return found


def _perm(node: ir.Node) -> list[int] | None:
    attribute = node.attributes.get("perm")
    return list(attribute.as_ints()) if attribute is not None else None


def _transposed(graph: ir.Graph, weight: ir.Value) -> ir.Value:
    """The initializer ``<W>.T`` holding W^T (created once per weight)."""
    name = f"{weight.name}.T"
    existing = graph.initializers.get(name)
    if existing is not None:
        return existing
    array = np.ascontiguousarray(weight.const_value.numpy().T)
    value = ir.val(name, weight.dtype, array.shape, const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value


def _fold_transpose(graph: ir.Graph, transpose: ir.Node, weight: ir.Value) -> list[ir.Node]:
    """Point the MatMuls reading Transpose(W) at ``<W>.T``; drop the Transpose if unused."""
    matmuls = [
        user
        for user, index in transpose.outputs[0].uses()
        if user.op_type == "MatMul" and index == 1
    ]
    if not matmuls:
        return []
    folded = _transposed(graph, weight)
    for matmul in matmuls:
        matmul.replace_input_with(1, folded)
    if not transpose.outputs[0].uses():
        graph.remove(transpose, safe=True)
    return matmuls


def _gemm_to_matmul(graph: ir.Graph, gemm: ir.Node, weight: ir.Value, layer: str) -> ir.Node:
    """Replace Gemm(x, W, b) by MatMul(x, W') and Add(b) (the rule in the module docstring)."""
    attributes = {name: attr.value for name, attr in gemm.attributes.items()}
    if (
        attributes.get("alpha", 1.0) != 1.0
        or attributes.get("beta", 1.0) != 1.0
        or attributes.get("transA", 0) != 0
    ):
        raise RuntimeError(
            f"layer {layer}: Gemm {gemm.name} scales or transposes its input "
            "(alpha, beta, transA); only x @ W (+ b) is supported"
        )
    b = _transposed(graph, weight) if attributes.get("transB", 0) else weight
    matmul = ir.node("MatMul", [gemm.inputs[0], b], name=gemm.name)
    new_nodes = [matmul]
    result = matmul.outputs[0]
    if len(gemm.inputs) > 2 and gemm.inputs[2] is not None:
        add = ir.node("Add", [result, gemm.inputs[2]], name=f"{gemm.name}_bias")
        new_nodes.append(add)
        result = add.outputs[0]
    ir.convenience.replace_nodes_and_values(graph, gemm, [gemm], new_nodes, gemm.outputs, [result])
    return matmul

"""Fold normalisation scale and bias into the static-weight layers that read the norm.

Rule: a norm whose output y = n * g (+ b) (n the normalised input, g and b constant
vectors over the last axis) is read only by static-weight MatMul/Gemm layers
(as their X, Gemm transA=0; static_layers.find_static_layers) and is no graph
output is rewritten so the layers read n: each weight W [K, N] becomes
diag(g) W, and b becomes a digital bias alpha * b @ W (a new Add after a
MatMul; merged into C, beta * C + alpha * b @ W with beta=1, for a Gemm). The
results are unchanged up to float rounding (Brevitas' MergeLnAffine). Norms:

- LayerNormalization(X, Scale, B): Scale -> ones, B dropped (1-D Scale only);
- RMSNormalization / SimplifiedLayerNormalization(X, scale): scale -> ones;
- the decomposed RMSNorm n = x * Reciprocal(Sqrt(Add(ReduceMean(Pow(x, 2)), eps)))
  (or x / Sqrt(...)) followed by Mul(n, g): the Mul is removed.

A norm with g all ones and no (or a zero) bias has nothing to fold and is left
alone; a norm read by anything else (a Conv, a residual Add) is left unchanged.
A weight also read elsewhere is copied before it is scaled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from afmc.config import AfmcConfig
from afmc.passes.layers import NOTES_KEY
from afmc.passes.onnx.graph_edit import Names, add_initializer, drop_if_unused
from afmc.passes.onnx.ordering import OrderedOnnxPass
from afmc.passes.onnx.static_layers import OnnxLayer, constant, find_static_layers, layer_name
from afmc.passes.registry import register_pass
from afmc.passes.stages import Needs

logger = logging.getLogger("afmc.passes.fold")
_NORM_OPS = {"LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization"}
_RMS_CHAIN = {"Pow", "Mul", "ReduceMean", "Add", "Sqrt", "Reciprocal", "Cast"}


@dataclass(frozen=True)
class _Norm:
    """A foldable norm: its affine output, the normalised value n, and g, b."""

    node: ir.Node
    output: ir.Value
    scale: np.ndarray
    bias: np.ndarray | None


@register_pass("onnx-fold-norms", "onnx")
class FoldNorms(OrderedOnnxPass):
    """Fold norm scale/bias (LayerNorm, RMSNorm) into the MatMul/Gemm weights that read it."""

    needs = Needs(analog_ops=False)

    def __init__(self, config: AfmcConfig | None = None) -> None:
        super().__init__()  # takes the config like every registered pass; needs none

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        names = Names(graph)
        modified = False
        layers = {layer.node: layer for layer in find_static_layers(graph)}
        notes = model.meta.setdefault(NOTES_KEY, [])
        for node in list(graph):
            norm = _norm(node)
            if norm is None:
                continue
            consumers, reason = _consumers(norm, layers)
            if not _worth_folding(norm):
                consumers, reason = [], "nothing to fold (scale one, no bias)"
            name = layer_name(node, norm.output)
            notes.append({"norm": name, "folded": bool(consumers), "reason": reason})
            logger.info("%s: %s (%s)", name, "folded" if consumers else "left unchanged", reason)
            if not consumers:
                continue
            for layer in consumers:
                _fold_into(graph, names, layer, norm)
            _strip_affine(graph, names, norm)
            modified = True
        return ir.passes.PassResult(model, modified)


def _norm(node: ir.Node) -> _Norm | None:
    if node.op_type in _NORM_OPS and node.domain in ("", "ai.onnx", "com.microsoft"):
        scale = constant(node.inputs[1]) if len(node.inputs) > 1 else None
        bias = None
        if node.op_type == "LayerNormalization" and len(node.inputs) > 2:
            bias = constant(node.inputs[2])
            if node.inputs[2] is not None and bias is None:
                return None
        if scale is None or scale.ndim != 1:
            return None
        return _Norm(node, node.outputs[0], scale.astype(np.float32), bias)
    if node.op_type == "Mul" and node.domain in ("", "ai.onnx"):
        for index in (0, 1):
            scale, other = constant(node.inputs[index]), node.inputs[1 - index]
            if scale is not None and scale.ndim == 1 and _is_rms_normalised(other):
                return _Norm(node, node.outputs[0], scale.astype(np.float32), None)
    return None


def _is_rms_normalised(value: ir.Value | None) -> bool:
    """Whether `value` is x * r or x / r with r computed from x by an RMS chain."""
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type not in ("Mul", "Div") or constant(value) is not None:
        return False
    x, r = producer.inputs[0], producer.inputs[1]
    candidates = [(x, r), (r, x)] if producer.op_type == "Mul" else [(x, r)]
    return any(_reaches(base, chain) for base, chain in candidates)


def _reaches(x: ir.Value, chain: ir.Value, depth: int = 8) -> bool:
    seen: set[str] = set()
    current = chain
    for _ in range(depth):
        node = current.producer()
        if node is None or node.op_type not in _RMS_CHAIN:
            return False
        seen.add(node.op_type)
        dynamic = {v for v in node.inputs if v is not None and constant(v) is None}
        if x in dynamic:
            return dynamic == {x} and {"ReduceMean", "Sqrt"} <= seen
        if len(dynamic) != 1:
            return False
        current = next(iter(dynamic))
    return False


def _worth_folding(norm: _Norm) -> bool:
    has_bias = norm.bias is not None and bool(np.any(norm.bias))
    return has_bias or not np.all(norm.scale == 1)


def _consumers(norm: _Norm, layers: dict[ir.Node, OnnxLayer]) -> tuple[list[OnnxLayer], str]:
    """The layers reading the norm, or none and why when anything else reads it."""
    if norm.output.is_graph_output():
        return [], "the norm output is a graph output"
    found: list[OnnxLayer] = []
    for user, index in norm.output.uses():
        layer = layers.get(user)
        if (
            layer is None
            or layer.unsupported
            or index != 0
            or layer.layout == "conv"
            or user.attributes.get_int("transA", 0)
            or layer.in_features != norm.scale.shape[0]
        ):
            return [], f"read by {user.op_type} {user.name or ''}, not a static MatMul/Gemm X"
        if layer not in found:
            found.append(layer)
    if not found:
        return [], "nothing reads the norm"
    return found, f"folded into {', '.join(layer.name for layer in found)}"


def _fold_into(graph: ir.Graph, names: Names, layer: OnnxLayer, norm: _Norm) -> None:
    stored = constant(layer.weight).astype(np.float32)
    kn = stored.T if layer.layout == "nk" else stored
    alpha = layer.node.attributes.get_float("alpha", 1.0)
    folded_kn = kn * norm.scale[:, None]
    behind_transpose = layer.weight is not layer.weight_input
    exclusive = (
        layer.weight.is_initializer()
        and len(layer.weight.uses()) == 1
        and len(layer.weight_input.uses()) == 1
    )
    if exclusive:
        new_stored = folded_kn.T if layer.layout == "nk" else folded_kn
        layer.weight.const_value = ir.tensor(
            np.ascontiguousarray(new_stored), name=layer.weight.name
        )
    else:
        direct = folded_kn.T if layer.layout == "nk" and not behind_transpose else folded_kn
        old = layer.weight_input
        base = layer.weight.name or layer.name
        layer.node.replace_input_with(1, add_initializer(graph, names, f"{base}.folded", direct))
        drop_if_unused(graph, old)
    if norm.bias is None or not np.any(norm.bias):
        return
    extra = (alpha * norm.bias.astype(np.float32) @ kn).astype(np.float32)
    _add_bias(graph, names, layer, extra)


def _add_bias(graph: ir.Graph, names: Names, layer: OnnxLayer, extra: np.ndarray) -> None:
    node = layer.node
    if node.op_type == "Gemm":
        c = node.inputs[2] if len(node.inputs) > 2 else None
        c_value = constant(c)
        if c is None or c_value is not None:
            beta = node.attributes.get_float("beta", 1.0)
            merged = extra if c is None else (beta * c_value + extra).astype(np.float32)
            if len(node.inputs) < 3:
                node.resize_inputs(3)
            node.replace_input_with(2, add_initializer(graph, names, f"{layer.name}.bias", merged))
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
            drop_if_unused(graph, c)
            return
    bias = add_initializer(graph, names, f"{layer.name}.norm_bias", extra)
    out = node.outputs[0]
    uses = list(out.uses())
    add = ir.Node("", "Add", [out, bias], name=f"{node.name or layer.name}/norm_bias")
    graph.insert_after(node, add)
    result = add.outputs[0]
    result.type, result.shape = out.type, out.shape
    for user, index in uses:
        user.replace_input_with(index, result)
    if out.is_graph_output():
        position = list(graph.outputs).index(out)
        name = out.name
        out.name = names.fresh(f"{name}.pre_bias")
        result.name = name
        graph.outputs[position] = result


def _strip_affine(graph: ir.Graph, names: Names, norm: _Norm) -> None:
    node = norm.node
    if node.op_type == "Mul":
        inputs = list(node.inputs)
        normalised = next(v for v in inputs if constant(v) is None)
        norm.output.replace_all_uses_with(normalised)
        graph.remove(node, safe=True)
        for value in inputs:
            drop_if_unused(graph, value)
        return
    old_scale = node.inputs[1]
    ones = np.ones_like(norm.scale)
    node.replace_input_with(
        1, add_initializer(graph, names, f"{node.name or 'norm'}.scale_one", ones)
    )
    drop_if_unused(graph, old_scale)
    if node.op_type == "LayerNormalization" and len(node.inputs) > 2:
        old_bias = node.inputs[2]
        node.resize_inputs(2)
        drop_if_unused(graph, old_bias)

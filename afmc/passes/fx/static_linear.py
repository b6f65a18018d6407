"""Find the matrix products of an FX graph whose weight is a static parameter.

These are the layers an analog crossbar can hold (HARDWARE.md, "Which operations
are analog"): ``aten.linear(x, W, b)`` with W [N, K], and ``aten.addmm(b, x, W)``,
``aten.mm(x, W)``, ``aten.matmul(x, W)`` with W [K, N] (e.g. GPT-2's Conv1D), where
W is a ``get_attr`` node. Products of two activations (attention scores and
values) have no static operand and are never listed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

aten = torch.ops.aten

_LINEAR = {aten.linear.default}
_TRANSPOSED = {aten.addmm.default, aten.mm.default, aten.matmul.default}


@dataclass(frozen=True)
class StaticLinear:
    """One static-weight matrix product: y = x @ W^T (+ b) with W as [out, in] after layout."""

    node: fx.Node
    name: str
    x: fx.Node
    weight: fx.Node
    bias: fx.Node | None
    transposed: bool
    in_features: int
    out_features: int


def _module_path(node: fx.Node, weight_target: str) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        if path:
            return path
    return weight_target.rsplit(".", 1)[0]


def _is_parameter(gm: fx.GraphModule, node: object) -> bool:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return False
    value = gm.get_parameter(node.target) if _has_parameter(gm, node.target) else None
    return value is not None and value.dim() == 2


def _has_parameter(gm: fx.GraphModule, target: str) -> bool:
    try:
        gm.get_parameter(target)
    except AttributeError:
        return False
    return True


def find_static_linears(gm: fx.GraphModule) -> list[StaticLinear]:
    """All static-weight matrix products of `gm`, in graph order."""
    found = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in _LINEAR:
            x, weight = node.args[0], node.args[1]
            bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
            transposed = False
        elif node.target in _TRANSPOSED:
            if node.target is aten.addmm.default:
                if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
                    continue
                bias, x, weight = node.args[:3]
            else:
                (x, weight), bias = node.args[:2], None
            transposed = True
        else:
            continue
        if not _is_parameter(gm, weight):
            continue
        shape = gm.get_parameter(weight.target).shape
        out_features, in_features = (shape[1], shape[0]) if transposed else (shape[0], shape[1])
        found.append(StaticLinear(
            node=node, name=_module_path(node, weight.target), x=x, weight=weight,
            bias=bias if isinstance(bias, fx.Node) else None, transposed=transposed,
            in_features=int(in_features), out_features=int(out_features),
        ))
    return found

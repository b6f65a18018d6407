"""Rewrite products with a transposed weight parameter into `aten.linear`.

Some modules compute a linear layer by hand, `x @ self.weight.T (+ self.bias)`
(Falcon's FalconLinear). torch.export records that as
`matmul(x, numpy_T(W))`, which no pass sees as a static-weight layer because
the product's operand is the transpose, not the parameter. Rule: a
`matmul(x, T)` where T is `numpy_T`, `t`, `permute(., [1, 0])` or
`transpose(., 0, 1)` of a 2-D parameter W becomes `linear(x, W)`; if the
product's only user adds a 1-D parameter b of W's output size, that add is
merged as `linear(x, W, b)`. The result is the same up to float rounding.
"""

from __future__ import annotations

import torch
from torch import fx

aten = torch.ops.aten

_TRANSPOSES = {aten.numpy_T.default, aten.t.default, aten.permute.default,
               aten.transpose.int}


def _parameter(gm: fx.GraphModule, node: object, dim: int) -> torch.Tensor | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    try:
        value = gm.get_parameter(node.target)
    except AttributeError:
        return None
    return value if value.dim() == dim else None


def _transposed_weight(gm: fx.GraphModule, node: object) -> fx.Node | None:
    """W when `node` is a plain 2-D transpose of the 2-D parameter W."""
    if not isinstance(node, fx.Node) or node.target not in _TRANSPOSES:
        return None
    if node.target is aten.permute.default and list(node.args[1]) != [1, 0]:
        return None
    if node.target is aten.transpose.int and sorted(d % 2 for d in node.args[1:3]) != [0, 1]:
        return None
    weight = node.args[0]
    return weight if _parameter(gm, weight, 2) is not None else None


def _bias_add(gm: fx.GraphModule, product: fx.Node, out_features: int) -> tuple | None:
    users = list(product.users)
    if len(users) != 1 or users[0].target is not aten.add.Tensor or users[0].kwargs:
        return None
    add = users[0]
    other = add.args[1] if add.args[0] is product else add.args[0]
    bias = _parameter(gm, other, 1)
    if bias is None or bias.shape[0] != out_features:
        return None
    return add, other


def linearize_transposed_products(gm: fx.GraphModule) -> int:
    """Apply the rule to `gm` in place; the number of products rewritten."""
    rewritten = 0
    for node in list(gm.graph.find_nodes(op="call_function", target=aten.matmul.default)):
        weight = _transposed_weight(gm, node.args[1])
        if weight is None:
            continue
        transpose = node.args[1]
        out_features = gm.get_parameter(weight.target).shape[0]
        merged = _bias_add(gm, node, out_features)
        args = (node.args[0], weight) if merged is None else (node.args[0], weight, merged[1])
        replaced = node if merged is None else merged[0]
        with gm.graph.inserting_before(node):
            linear = gm.graph.call_function(aten.linear.default, args)
        linear.meta = dict(replaced.meta)
        replaced.replace_all_uses_with(linear)
        if merged is not None:
            gm.graph.erase_node(merged[0])
        gm.graph.erase_node(node)
        if not transpose.users:
            gm.graph.erase_node(transpose)
        rewritten += 1
    if rewritten:
        gm.graph.lint()
        gm.recompile()
    return rewritten

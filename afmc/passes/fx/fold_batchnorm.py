"""Fold eval-mode BatchNorm into the convolution or linear layer that feeds it.

Rule: ``batch_norm(layer(x, W, b))`` on running statistics, where ``layer`` is
``aten.linear`` with a 2-D output or a batched, non-transposed convolution
(``aten.conv1d/2d/3d``, ``aten.convolution``), the BatchNorm is the only reader
of the layer's output, and W and b are parameters that no other node reads,
becomes ``layer(x, W', b')`` with, per output channel c::

    s_c  = gamma_c / sqrt(var_c + eps)
    W'_c = s_c * W_c
    b'_c = s_c * (b_c - mean_c) + beta_c

(gamma = 1 and beta = 0 for a BatchNorm without affine parameters; b = 0 for a
layer without bias, which then gains one). The BatchNorm node disappears, and
so do its parameters and statistics. Recognised forms: ``aten.batch_norm`` with
training=False (what torch.export gives for ``nn.BatchNorm1d/2d/3d`` in eval
mode) and ``aten._native_batch_norm_legit_no_training`` (after
run_decompositions; read through its first output only). Every BatchNorm gets a
note (passes.layers.NOTES_KEY): folded, or left unchanged and why.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx
from torch.fx.passes.infra.pass_base import PassResult

from afmc.config import AfmcConfig
from afmc.passes.fx.fold_common import (
    attr,
    describe,
    drop_if_unused,
    is_constant,
    is_parameter,
    module_path,
    new_parameter,
    record_note,
    replace_parameter,
    set_bias,
    sharing,
)
from afmc.passes.fx.ordering import OrderedPass
from afmc.passes.registry import register_pass
from afmc.passes.stages import Needs

aten = torch.ops.aten

_LINEAR = aten.linear.default
_CONVOLUTIONS = {
    aten.conv1d.default,
    aten.conv2d.default,
    aten.conv3d.default,
    aten.conv1d.padding,
    aten.conv2d.padding,
    aten.conv3d.padding,
    aten.convolution.default,
}
_LEGIT = aten._native_batch_norm_legit_no_training.default


@dataclass(frozen=True)
class _BatchNorm:
    """One BatchNorm call: its operands and the node whose value is its result."""

    node: fx.Node
    output: fx.Node | None
    x: fx.Node
    weight: fx.Node | None
    bias: fx.Node | None
    mean: fx.Node | None
    var: fx.Node | None
    eps: float
    training: bool


def _parse(node: fx.Node) -> _BatchNorm | None:
    if node.target is aten.batch_norm.default:
        x, weight, bias, mean, var, training, _, eps = node.args[:8]
        return _BatchNorm(node, node, x, weight, bias, mean, var, eps, bool(training))
    if node.target is _LEGIT:
        x, weight, bias, mean, var, _, eps = node.args
        read = [user for user in node.users if user.users or user.target is not operator.getitem]
        only_first = len(read) == 1 and read[0].target is operator.getitem and read[0].args[1] == 0
        output = read[0] if only_first else None
        return _BatchNorm(node, output, x, weight, bias, mean, var, eps, False)
    return None


def _layer_bias(layer: fx.Node) -> fx.Node | None:
    return layer.args[2] if len(layer.args) > 2 else layer.kwargs.get("bias")


def _refusal(gm: fx.GraphModule, bn: _BatchNorm) -> str | None:
    """Why `bn` cannot be folded into its input layer, or None."""
    if bn.training:
        return "it uses batch statistics (training mode or no running statistics)"
    if bn.output is None:
        return "it is read other than through its first output"
    if not all(is_constant(n) for n in (bn.mean, bn.var)) or not all(
        n is None or is_constant(n) for n in (bn.weight, bn.bias)
    ):
        return "its statistics or affine parameters are not constants of the module"
    layer = bn.x
    if layer.op != "call_function" or (
        layer.target is not _LINEAR and layer.target not in _CONVOLUTIONS
    ):
        return f"its input {describe(layer)} is not a convolution or linear layer"
    if layer.target is aten.convolution.default and layer.args[6]:
        return f"its input {describe(layer)} is a transposed convolution"
    weight, bias = layer.args[1], _layer_bias(layer)
    for operand in (weight, bias):
        if operand is None:
            continue
        if not is_parameter(gm, operand):
            return f"an operand of {describe(layer)} is not a parameter"
        shared = sharing(gm, operand, layer)
        if shared:
            return shared
    value = layer.meta.get("val")
    rank = 2 if layer.target is _LINEAR else attr(gm, weight.target).dim()
    if value is None or value.dim() != rank:
        return f"the channels of {describe(layer)} are not on dim 1 of its output"
    if len(layer.users) > 1:
        others = ", ".join(describe(user) for user in layer.users if user is not bn.node)
        return f"the output of {layer.name} is also read by {others}"
    return None


def _tensor(gm: fx.GraphModule, node: fx.Node | None) -> torch.Tensor | None:
    return None if node is None else attr(gm, node.target).detach().double()


def _fold(gm: fx.GraphModule, bn: _BatchNorm) -> None:
    """Rewrite W and b of the layer feeding `bn`, then remove `bn` from the graph."""
    layer = bn.x
    weight, bias = layer.args[1], _layer_bias(layer)
    var = _tensor(gm, bn.var)
    gamma = _tensor(gm, bn.weight) if bn.weight is not None else torch.ones_like(var)
    beta = _tensor(gm, bn.bias) if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    w = _tensor(gm, weight)
    b = _tensor(gm, bias) if bias is not None else torch.zeros_like(var)
    replace_parameter(gm, weight.target, w * scale.reshape(-1, *[1] * (w.dim() - 1)))
    new_bias = (b - _tensor(gm, bn.mean)) * scale + beta
    if bias is not None:
        replace_parameter(gm, bias.target, new_bias)
    else:
        owner = weight.target.rpartition(".")[0]
        dtype = attr(gm, weight.target).dtype
        target = new_parameter(gm, owner, "bias", new_bias.to(dtype))
        with gm.graph.inserting_before(layer):
            set_bias(layer, gm.graph.get_attr(target))
    bn.output.replace_all_uses_with(layer)
    for item in [user for user in bn.node.users if user.target is operator.getitem]:
        gm.graph.erase_node(item)
    gm.graph.erase_node(bn.node)
    for constant in (bn.weight, bn.bias, bn.mean, bn.var):
        drop_if_unused(gm, constant)


@register_pass("fold-batchnorm", "fx")
class FoldBatchNorm(OrderedPass):
    """Fold eval-mode BatchNorm into the preceding convolution or linear layer."""

    needs = Needs(analog_ops=False)

    preserves_output = True

    def __init__(self, config: AfmcConfig | None = None) -> None:
        """`config` is accepted as the registry constructs every pass; folding needs none."""
        super().__init__()

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        modified = False
        for node in list(graph_module.graph.nodes):
            bn = _parse(node) if node.op == "call_function" else None
            if bn is None:
                continue
            reason = _refusal(graph_module, bn)
            folded = reason is None
            if folded:
                _fold(graph_module, bn)
                reason = f"folded into {module_path(bn.x)}"
            record_note(graph_module, module_path(node), folded, reason)
            modified |= folded
        if modified:
            graph_module.graph.lint()
            graph_module.recompile()
        return PassResult(graph_module, modified)

"""Smoothing: move input-channel outliers of accelerator layers into their weights.

Rule (SmoothQuant, Xiao et al. 2023, applied to crossbar and int8 layers alike):
the accelerator-placed static-weight layers that read the same activation x
form a group. Over the calibration data, per input channel k,
``a_k = max |x_k|`` and ``w_k = max |W_jk|`` over every row j of every layer of
the group; the channel scale is ``s_k = a_k^alpha / w_k^(1 - alpha)``
(normalised to geometric mean 1, and 1 where a_k or w_k is 0). Then

    x' = x / s      W' = W diag(s)      so  x' @ W'^T = x @ W^T  exactly.

The static input range of a crossbar slice (one scalar for every row) and a
per-tensor int8 activation scale no longer have to span the few outlier
channels. Where x is an element-wise product ``a * (x0 @ U^T + c)`` whose linear
factor U is read nowhere else (the MLP's up projection feeding down_proj),
``1/s`` is folded into the rows of U and c, at no cost; otherwise a digital
per-channel multiply ``x * (1/s)`` is inserted before the group (after a folded
norm this is the norm's own scale, reintroduced). A layer whose weight is also
read elsewhere (an LM head tied to the embedding) gets its own scaled copy, as
the crossbar or the int8 kernel holds its own copy anyway. Every group gets a
note in ``graph_module.meta["afmc_fold_notes"]``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import fx
from torch.fx.passes.infra.pass_base import PassResult

from afmc.config import AfmcConfig
from afmc.passes.fx.fold_common import (
    attr,
    module_path,
    new_parameter,
    record_note,
    replace_parameter,
    sharing,
)
from afmc.passes.fx.ordering import OrderedPass
from afmc.passes.fx.static_linear import StaticLinear, find_static_linears
from afmc.passes.layers import META_KEY
from afmc.passes.registry import register_pass
from afmc.passes.smoothing_choice import smoothing_scale
from afmc.passes.stages import Needs

aten = torch.ops.aten


def accelerator_groups(gm: fx.GraphModule) -> dict[fx.Node, list[StaticLinear]]:
    """Accelerator-placed static linears grouped by the activation node they read."""
    groups: dict[fx.Node, list[StaticLinear]] = {}
    for layer in find_static_linears(gm):
        record = layer.node.meta.get(META_KEY)
        if record is not None and record.placement == "analog":
            groups.setdefault(layer.x, []).append(layer)
    return groups


def channel_maxima(gm: fx.GraphModule, nodes: Iterable[fx.Node],
                   batches: Iterable[tuple]) -> dict[fx.Node, torch.Tensor]:
    """max |x_k| per last-axis channel of each node's value over the batches."""
    watched = set(nodes)
    maxima: dict[fx.Node, torch.Tensor] = {}

    class Observer(fx.Interpreter):
        def run_node(self, node: fx.Node):
            value = super().run_node(node)
            if node in watched:
                amax = value.detach().abs().reshape(-1, value.shape[-1]).amax(0).float()
                maxima[node] = torch.maximum(maxima[node], amax) if node in maxima else amax
            return value

    observer = Observer(gm)
    with torch.no_grad():
        for batch in batches:
            observer.run(*batch)
    return maxima


def weight_matrix(gm: fx.GraphModule, layer: StaticLinear) -> torch.Tensor:
    """The layer's weight as [out, in]."""
    weight = attr(gm, layer.weight.target).detach()
    return weight.T if layer.transposed else weight


def _up_projection(gm: fx.GraphModule, x: fx.Node,
                   linears: dict[fx.Node, StaticLinear]) -> StaticLinear | None:
    """The linear factor of x = a * linear(...) that only this product reads, if any."""
    if x.op != "call_function" or x.target is not aten.mul.Tensor:
        return None
    for factor in x.args[:2]:
        layer = linears.get(factor) if isinstance(factor, fx.Node) else None
        if layer is None or len(factor.users) != 1 or layer.transposed:
            continue
        if sharing(gm, layer.weight, layer.node) is None and (
                layer.bias is None or sharing(gm, layer.bias, layer.node) is None):
            return layer
    return None


@register_pass("smooth-inputs", "fx", uses_calibration=True)
class SmoothInputs(OrderedPass):
    """Scale input channels of accelerator layers by x_max^a / w_max^(1-a) (exact in FP)."""

    needs = Needs(analog_ops=False)

    preserves_output = True

    def __init__(self, config: AfmcConfig, batches: Iterable[tuple] | None = None) -> None:
        super().__init__()
        self.alpha = config.smoothing.alpha
        self.batches = batches

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        if self.batches is None:
            raise ValueError("smooth-inputs: no calibration data given")
        groups = accelerator_groups(graph_module)
        maxima = channel_maxima(graph_module, groups, self.batches)
        linears = {layer.node: layer for layer in find_static_linears(graph_module)}
        modified = False
        for x, layers in groups.items():
            if x not in maxima:
                continue
            w_max = torch.stack([weight_matrix(graph_module, layer).abs().amax(0).float()
                                 for layer in layers]).amax(0)
            scale = smoothing_scale(maxima[x], w_max, self.alpha)
            self._smooth(graph_module, x, layers, scale, linears, f"alpha {self.alpha:g}")
            modified = True
        if modified:
            graph_module.graph.lint()
            graph_module.recompile()
        return PassResult(graph_module, modified)

    def _smooth(self, gm: fx.GraphModule, x: fx.Node, layers: list[StaticLinear],
                scale: torch.Tensor, linears: dict[fx.Node, StaticLinear], how: str) -> None:
        """Smooth the group `layers` reading `x` by `scale` (W diag(s), x / s) and note it,
        with `how` the strength was chosen."""
        for layer in layers:
            self._scale_columns(gm, layer, scale)
        where = self._divide_input(gm, x, layers, scale, linears)
        record_note(gm, ", ".join(layer.name for layer in layers), True,
                    f"smoothed ({how}, channel scales {float(scale.min()):.3g}.."
                    f"{float(scale.max()):.3g}); 1/s {where}")

    @staticmethod
    def _scale_columns(gm: fx.GraphModule, layer: StaticLinear, scale: torch.Tensor) -> None:
        weight = attr(gm, layer.weight.target).detach()
        factor = scale.to(weight.dtype)
        value = weight * factor[:, None] if layer.transposed else weight * factor
        if sharing(gm, layer.weight, layer.node) is None:
            replace_parameter(gm, layer.weight.target, value)
            return
        owner = layer.weight.target.rpartition(".")[0]
        target = new_parameter(gm, owner, "smoothed_weight", value)
        with gm.graph.inserting_before(layer.node):
            copy = gm.graph.get_attr(target)
        layer.node.replace_input_with(layer.weight, copy)
        layer.node.meta[META_KEY].weight = target

    @staticmethod
    def _divide_input(gm: fx.GraphModule, x: fx.Node, layers: list[StaticLinear],
                      scale: torch.Tensor, linears: dict[fx.Node, StaticLinear]) -> str:
        inverse = 1.0 / scale
        up = _up_projection(gm, x, linears)
        if up is not None:
            weight = attr(gm, up.weight.target).detach()
            replace_parameter(gm, up.weight.target, weight * inverse.to(weight.dtype)[:, None])
            if up.bias is not None:
                bias = attr(gm, up.bias.target).detach()
                replace_parameter(gm, up.bias.target, bias * inverse.to(bias.dtype))
            return f"folded into the rows of {up.name}"
        owner = layers[0].weight.target.rpartition(".")[0]
        target = new_parameter(gm, owner, "smooth_scale", inverse)
        attr(gm, target).requires_grad_(False)
        with gm.graph.inserting_after(x):
            constant = gm.graph.get_attr(target)
        with gm.graph.inserting_after(constant):
            scaled = gm.graph.call_function(aten.mul.Tensor, (x, constant))
        scaled.meta.update({k: v for k, v in x.meta.items() if k == "val"})
        for layer in layers:
            layer.node.replace_input_with(x, scaled)
        return f"as a digital scale after {module_path(x)}"

"""Analog insertion: turn analog-placed layers into afmc analog linear ops.

Rule: each static-weight matrix product marked analog by place-layers becomes
``afmc.analog_linear(x, W, input_range, slice_sizes, inp_res, out_res,
out_bound, out_noise)`` followed by a digital ``add`` of the bias, where W is
the [out, in] weight the crossbar holds and input_range a new parameter with one
entry per input slice (initialised to 1; the calibrate pass sets it). A weight
stored as [in, out] (addmm/mm/matmul) or also read elsewhere (tied embeddings)
gets its own ``analog_weight`` parameter, since the crossbar holds its own copy.
"""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.fx.passes.infra.pass_base import PassResult

from afmc.config import AfmcConfig
from afmc.ops.analog_linear import ANALOG_LINEAR, slice_sizes
from afmc.passes.fx.ordering import OrderedPass
from afmc.passes.fx.static_linear import StaticLinear, find_static_linears
from afmc.passes.layers import META_KEY, LayerRecord, tile_count
from afmc.passes.registry import register_pass
from afmc.passes.stages import Needs


def _owner(gm: fx.GraphModule, target: str) -> tuple[nn.Module, str]:
    path = target.rsplit(".", 1)[0] if "." in target else ""
    return gm.get_submodule(path), path


def _new_parameter(gm: fx.GraphModule, owner_path: str, name: str, value: torch.Tensor) -> str:
    owner = gm.get_submodule(owner_path)
    base, index = name, 0
    while hasattr(owner, name):
        index += 1
        name = f"{base}_{index}"
    owner.register_parameter(name, nn.Parameter(value, requires_grad=value.is_floating_point()))
    return f"{owner_path}.{name}" if owner_path else name


@register_pass("insert-analog-linear", "fx")
class InsertAnalogLinear(OrderedPass):
    """Replace analog-placed linear layers by afmc.analog_linear plus a digital bias add."""

    needs = Needs(placed=True)

    def __init__(self, config: AfmcConfig) -> None:
        super().__init__()
        self.hardware = config.hardware

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        modified = False
        for layer in find_static_linears(graph_module):
            record = layer.node.meta.get(META_KEY)
            if record is None or record.placement != "analog":
                continue
            self._rewrite(graph_module, layer, record)
            modified = True
        if modified:
            graph_module.graph.lint()
            graph_module.recompile()
        return PassResult(graph_module, modified)

    def _rewrite(self, gm: fx.GraphModule, layer: StaticLinear, record: LayerRecord) -> None:
        hw = self.hardware
        graph = gm.graph
        weight = gm.get_parameter(layer.weight.target)
        _, owner_path = _owner(gm, layer.weight.target)
        weight_target = layer.weight.target
        if layer.transposed or len(layer.weight.users) > 1:
            value = weight.detach().T.contiguous() if layer.transposed else weight.detach().clone()
            weight_target = _new_parameter(gm, owner_path, "analog_weight", value)
        sizes = slice_sizes(layer.in_features, hw.max_in)
        range_target = _new_parameter(gm, owner_path, "input_range", torch.ones(len(sizes)))
        with graph.inserting_before(layer.node):
            weight_node = graph.get_attr(weight_target)
            range_node = graph.get_attr(range_target)
            analog = graph.call_function(ANALOG_LINEAR, (
                layer.x, weight_node, range_node, sizes,
                hw.inp_res, hw.out_res, hw.out_bound, hw.out_noise,
            ))
            out = analog
            if layer.bias is not None:
                out = graph.call_function(torch.ops.aten.add.Tensor, (analog, layer.bias))
        record.slice_sizes = sizes
        record.tiles = tile_count(sizes, layer.out_features, hw.tile_rows, hw.tile_cols)
        record.weight = weight_target
        record.input_range = range_target
        analog.meta.update({k: v for k, v in layer.node.meta.items() if k != "val"})
        analog.meta[META_KEY] = record
        layer.node.replace_all_uses_with(out)
        graph.erase_node(layer.node)
        if not layer.weight.users:  # the analog op reads its own get_attr, next to it
            graph.erase_node(layer.weight)
            if weight_target != layer.weight.target:
                owner, _ = _owner(gm, layer.weight.target)
                delattr(owner, layer.weight.target.rsplit(".", 1)[-1])

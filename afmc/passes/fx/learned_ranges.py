"""Learned ranges: give each analog layer the input ranges hardware-aware training learned.

Rule: the analog layer named ``lm.NAME`` (a captured causal LM) or ``NAME`` takes
the ranges stored for module NAME in the trained model's afmc_ranges.safetensors
(``graph_module.meta["afmc_learned_ranges"]``, set by compile); it must have one
range per input slice of the compile's hardware.max_in. An analog layer without
learned ranges, or with another slice count, is an error naming it: the model was
trained with another placement or hardware, so compile with the trained
configuration or recalibrate.

A layer trained with a digital input scale s (training.smoothing; entry
``NAME.input_scale``) gets it back as the training computed it: a digital
``x / s`` before the analog op, whose weight becomes W diag(s) (its own copy when
the weight is also read elsewhere). A layer trained with outlier weights
(training.split_outliers; entry ``NAME.outliers_per_slice`` = m) is then split as
split-outliers splits it at count m: the m largest |w| of every row slice of that
weight to the exact digital sparse path.
"""

from __future__ import annotations

import torch
from torch import fx
from torch.fx.passes.infra.pass_base import PassResult

from afmc.config import AfmcConfig
from afmc.ops.analog_linear import ANALOG_LINEAR
from afmc.passes.fx.fold_common import new_parameter, replace_parameter
from afmc.passes.fx.ordering import OrderedPass
from afmc.passes.fx.split_outliers import SplitOutliers
from afmc.passes.layers import META_KEY
from afmc.passes.learned_ranges import (
    META_RANGES,
    OUTLIERS_SUFFIX,
    SCALE_SUFFIX,
    layer_ranges,
)
from afmc.passes.registry import register_pass
from afmc.passes.stages import Needs

_WRAPPER_PREFIX = "lm."


@register_pass("learned-ranges", "fx")
class LearnedRanges(OrderedPass):
    """Set analog input ranges from a trained model's learned ranges (no calibration)."""

    needs = Needs(analog_ops=True)

    def __init__(self, config: AfmcConfig) -> None:
        super().__init__()

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        ranges = graph_module.meta.get(META_RANGES)
        if ranges is None:
            raise ValueError("learned-ranges: the model has no learned input ranges "
                             "(afmc_ranges.safetensors of afmc train)")
        modified = False
        for node in graph_module.graph.nodes:
            if node.target is not ANALOG_LINEAR:
                continue
            record = node.meta[META_KEY]
            name = record.name.removeprefix(_WRAPPER_PREFIX)
            learned = layer_ranges(ranges, name, record, "learned-ranges")
            parameter = graph_module.get_parameter(node.args[2].target)
            parameter.data.copy_(learned.to(parameter.dtype).reshape(parameter.shape))
            scale = ranges.get(name + SCALE_SUFFIX)
            if scale is not None:
                _scale_input(graph_module, node, scale)
            count = ranges.get(name + OUTLIERS_SUFFIX)
            if count is not None:
                SplitOutliers.split(graph_module, node, int(count))
            record.calibrated = "learned"
            modified = True
        if modified:
            graph_module.graph.lint()
            graph_module.recompile()
        return PassResult(graph_module, modified)


def _scale_input(gm: fx.GraphModule, node: fx.Node, scale: torch.Tensor) -> None:
    """x -> x / s before the analog op `node`; its weight W -> W diag(s)."""
    record = node.meta[META_KEY]
    weight_node = node.args[1]
    weight = gm.get_parameter(weight_node.target).detach()
    programmed = weight * scale.to(weight.dtype)
    owner = weight_node.target.rpartition(".")[0]
    if len(weight_node.users) == 1:
        replace_parameter(gm, weight_node.target, programmed)
    else:
        target = new_parameter(gm, owner, "scaled_weight", programmed)
        with gm.graph.inserting_before(node):
            node.replace_input_with(weight_node, gm.graph.get_attr(target))
        record.weight = target
    scale_target = new_parameter(gm, owner, "input_scale", scale.to(weight.dtype))
    gm.get_parameter(scale_target).requires_grad_(False)
    with gm.graph.inserting_before(node):
        divided = gm.graph.call_function(torch.ops.aten.div.Tensor,
                                         (node.args[0], gm.graph.get_attr(scale_target)))
    node.replace_input_with(node.args[0], divided)

"""Learned ranges: give each analog layer the input ranges hardware-aware training learned.

Rule: the analog layer named ``lm.NAME`` (a captured causal LM) or ``NAME`` takes
the ranges stored for module NAME in the trained model's afmc_ranges.safetensors
(``graph_module.meta["afmc_learned_ranges"]``, set by compile); it must have one
range per input slice of the compile's hardware.max_in. An analog layer without
learned ranges, or with another slice count, is an error naming it: the model was
trained with another placement or hardware, so compile with the trained
configuration or recalibrate.
"""

from __future__ import annotations

from torch import fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from afmc.config import AfmcConfig
from afmc.ops.analog_linear import ANALOG_LINEAR
from afmc.passes.layers import META_KEY
from afmc.passes.registry import register_pass

META_RANGES = "afmc_learned_ranges"
_WRAPPER_PREFIX = "lm."


@register_pass("learned-ranges", "fx")
class LearnedRanges(PassBase):
    """Set analog input ranges from a trained model's learned ranges (no calibration)."""

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
            learned = ranges.get(name, ranges.get(record.name))
            if learned is None:
                raise ValueError(f"learned-ranges: analog layer {name} has no learned input "
                                 "ranges (trained with another placement); compile with the "
                                 "trained configuration or --recalibrate")
            if learned.numel() != len(record.slice_sizes):
                raise ValueError(f"learned-ranges: {name} has {learned.numel()} learned ranges "
                                 f"but {len(record.slice_sizes)} input slices here "
                                 "(hardware.max_in differs from training)")
            parameter = graph_module.get_parameter(node.args[2].target)
            parameter.data.copy_(learned.to(parameter.dtype).reshape(parameter.shape))
            record.calibrated = "learned"
            modified = True
        return PassResult(graph_module, modified)

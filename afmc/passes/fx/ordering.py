"""The FX adapter of passes.stages: an FX pass's `needs`, checked by torch.fx's
PassBase.requires before the pass runs (passes.stages states the rule)."""

from __future__ import annotations

from typing import ClassVar

from torch import fx
from torch.fx.passes.infra.pass_base import PassBase

from afmc.passes.fx.static_linear import find_static_linears
from afmc.passes.layers import layer_records
from afmc.passes.registry import registered_name
from afmc.passes.stages import Needs, Stage


class OrderedPass(PassBase):
    """An FX pass that refuses to run out of order (its `needs`)."""

    needs: ClassVar[Needs] = Needs()

    def requires(self, graph_module: fx.GraphModule) -> None:
        records = layer_records(graph_module)
        unplaced = len(find_static_linears(graph_module)) if self.needs.placement and not records \
            else 0
        Stage(unplaced, records).check(self.needs, registered_name(self))

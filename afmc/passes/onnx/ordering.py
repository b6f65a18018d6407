"""The ONNX adapter of passes.stages: an ONNX pass's `needs`, checked by onnx_ir's
PassBase.requires before the pass runs (passes.stages states the rule)."""

from __future__ import annotations

from typing import ClassVar

import onnx_ir as ir

from afmc.passes.onnx.static_layers import find_static_layers, onnx_layer_records
from afmc.passes.registry import registered_name
from afmc.passes.stages import Needs, Stage


class OrderedOnnxPass(ir.passes.InPlacePass):
    """An in-place ONNX pass that refuses to run out of order (its `needs`)."""

    needs: ClassVar[Needs] = Needs()

    def requires(self, model: ir.Model) -> None:
        records = onnx_layer_records(model)
        unplaced = len(find_static_layers(model.graph)) if self.needs.placement and not records \
            else 0
        Stage(unplaced, records).check(self.needs, registered_name(self), "onnx-")

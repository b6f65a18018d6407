"""Smoothing on an ONNX graph at a fixed strength: the FX pass smooth-inputs' rule.

Rule (SmoothQuant, afmc.passes.smoothing_choice.smoothing_scale, the same scales as the
FX pass smooth-inputs): for each group of analog nodes reading the same activation X,
over the calibration inputs of the FP view, a_k = max |x_k| and w_k = max |W_jk| over
every row of every node of the group; s_k = a_k^alpha / w_k^(1 - alpha) at
``smoothing.alpha`` (geometric mean 1). The group's crossbar matrices become W diag(s)
and a digital ``Mul(X, 1/s)`` goes before it (onnx.smoothing.smooth_group; the FX pass
folds 1/s into an up projection where it can, this one always multiplies). Every group
gets a note in the compile's fold notes. Runs after onnx-insert-analog-linear, before
onnx-split-outliers and onnx-calibrate; not in a target's default list (the aimc target
chooses the strength per group: onnx-chip-smooth-inputs).
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx_ir as ir
import torch

from afmc.config import AfmcConfig
from afmc.passes.layers import META_KEY, NOTES_KEY
from afmc.passes.onnx.calibrate import Batch
from afmc.passes.onnx.graph_edit import Names
from afmc.passes.onnx.ordering import OrderedOnnxPass
from afmc.passes.onnx.smoothing import analog_groups, crossbar_weight, observe_groups, smooth_group
from afmc.passes.registry import register_pass
from afmc.passes.smoothing_choice import smoothing_scale
from afmc.passes.stages import Needs


@register_pass("onnx-smooth-inputs", "onnx", uses_calibration=True)
class SmoothOnnxInputs(OrderedOnnxPass):
    """Scale input channels of analog nodes by x_max^a / w_max^(1-a) (exact in FP)."""

    needs = Needs(analog_ops=True, uncalibrated=True)

    def __init__(self, config: AfmcConfig, batches: Iterable[Batch] | None = None) -> None:
        super().__init__()
        self.alpha = config.smoothing.alpha
        self.batches = batches

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        groups = analog_groups(model)
        if not groups:
            return ir.passes.PassResult(model, False)
        if self.batches is None:
            raise ValueError("onnx-smooth-inputs: no calibration data given")
        maxima, _ = observe_groups(model, groups, self.batches, "onnx-smooth-inputs")
        notes = model.meta.setdefault(NOTES_KEY, [])
        names = Names(model.graph)
        for x, nodes in groups.items():
            weights = [crossbar_weight(node) for node in nodes]
            w_max = torch.stack([weight.abs().amax(0) for weight in weights]).amax(0)
            scale = smoothing_scale(maxima[x], w_max, self.alpha)
            smooth_group(model.graph, names, x, nodes, weights, scale)
            notes.append({"norm": ", ".join(node.meta[META_KEY].name for node in nodes),
                          "folded": True,
                          "reason": f"smoothed (alpha {self.alpha:g}, channel scales "
                                    f"{float(scale.min()):.3g}..{float(scale.max()):.3g}); "
                                    "1/s as a digital Mul before the group"})
        return ir.passes.PassResult(model, True)

"""Smoothing for the chip on an ONNX graph: each analog group's strength chosen by its
expected chip error.

Rule (the same choice as the FX pass chip-smooth-inputs, afmc.passes.smoothing_choice):
the analog nodes that read the same activation X (before afmc.SliceInput) form a group;
over the calibration inputs of the FP view, per input channel k, a_k = max |x_k| and a
row sample; the strength among ``smoothing.alphas``, or none, with the lowest sum of the
group's expected relative chip errors wins. A smoothed group gets its crossbar matrices
scaled by columns, W diag(s), and a digital ``Mul(X, 1/s)`` before it (a chip's fused
kernels take 1/s into the DAC); FP outputs are unchanged to rounding. Every group gets a
note in the compile's fold notes. Runs after onnx-insert-analog-linear (the groups are
analog nodes), before onnx-split-outliers and onnx-calibrate.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx_ir as ir

from afmc.config import AfmcConfig
from afmc.passes.layers import META_KEY, NOTES_KEY
from afmc.passes.onnx.calibrate import Batch
from afmc.passes.onnx.graph_edit import Names
from afmc.passes.onnx.ordering import OrderedOnnxPass
from afmc.passes.onnx.smoothing import analog_groups, crossbar_weight, observe_groups, smooth_group
from afmc.passes.range_search import ChipNoise
from afmc.passes.registry import register_pass
from afmc.passes.smoothing_choice import choose_smoothing
from afmc.passes.stages import Needs


@register_pass("onnx-chip-smooth-inputs", "onnx", uses_calibration=True)
class ChipSmoothOnnxInputs(OrderedOnnxPass):
    """Smooth each analog group at the alpha (or none) that its chip error favours."""

    needs = Needs(analog_ops=True, uncalibrated=True)

    def __init__(self, config: AfmcConfig, batches: Iterable[Batch] | None = None) -> None:
        super().__init__()
        self.alphas = config.smoothing.alphas
        self.hardware = config.hardware
        self.rows = config.outliers.sample_rows
        self.budget = config.outliers.budget
        self.noise = ChipNoise.of(config)
        self.batches = batches

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        groups = analog_groups(model)
        if not groups or not self.alphas:
            return ir.passes.PassResult(model, False)
        if self.batches is None:
            raise ValueError("onnx-chip-smooth-inputs: no calibration data given")
        maxima, samplers = observe_groups(model, groups, self.batches,
                                          "onnx-chip-smooth-inputs", self.rows)
        notes = model.meta.setdefault(NOTES_KEY, [])
        names = Names(model.graph)
        modified = False
        for x, nodes in groups.items():
            layer_names = ", ".join(node.meta[META_KEY].name for node in nodes)
            weights = [crossbar_weight(node) for node in nodes]
            choice = choose_smoothing(maxima[x], samplers[x].sample(), weights, self.alphas,
                                      self.hardware, self.noise, self.budget)
            notes.append({"norm": layer_names, "folded": choice.alpha is not None,
                          "reason": choice.note()})
            if choice.alpha is not None:
                smooth_group(model.graph, names, x, nodes, weights, choice.scale)
                modified = True
        return ir.passes.PassResult(model, modified)

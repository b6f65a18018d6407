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

import numpy as np
import onnx_ir as ir
import torch

from afmc.config import AfmcConfig
from afmc.ops import onnx_model
from afmc.passes.layers import META_KEY, NOTES_KEY
from afmc.passes.onnx.calibrate import Batch, analog_inputs
from afmc.passes.onnx.graph_edit import Names, add_initializer
from afmc.passes.range_search import ChipNoise
from afmc.passes.registry import register_pass
from afmc.passes.row_sample import RowSampler
from afmc.passes.smoothing_choice import choose_smoothing


@register_pass("onnx-chip-smooth-inputs", "onnx", uses_calibration=True)
class ChipSmoothOnnxInputs(ir.passes.InPlacePass):
    """Smooth each analog group at the alpha (or none) that its chip error favours."""

    def __init__(self, config: AfmcConfig, batches: Iterable[Batch] | None = None) -> None:
        super().__init__()
        self.alphas = config.smoothing.alphas
        self.hardware = config.hardware
        self.rows = config.outliers.sample_rows
        self.budget = config.outliers.budget
        self.noise = ChipNoise.of(config)
        self.batches = batches

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        analog = [node for node in onnx_model.analog_nodes(model) if META_KEY in node.meta]
        if not analog or not self.alphas:
            return ir.passes.PassResult(model, False)
        if self.batches is None:
            raise ValueError("onnx-chip-smooth-inputs: no calibration data given")
        groups: dict[ir.Value, list[ir.Node]] = {}
        for node in analog:
            groups.setdefault(onnx_model.source_initializer(node.inputs[0]), []).append(node)
        readers = {x: nodes[0] for x, nodes in groups.items()}
        first = [readers[x] for x in groups]
        maxima: dict[ir.Value, torch.Tensor] = {}
        samplers = {x: RowSampler(self.rows) for x in groups}
        for inputs in analog_inputs(model, first, self.batches, "onnx-chip-smooth-inputs"):
            for x, value in zip(groups, inputs, strict=True):
                flat = value.reshape(-1, value.shape[-1]).float()
                amax = flat.abs().amax(0)
                maxima[x] = torch.maximum(maxima[x], amax) if x in maxima else amax
                samplers[x].add(flat)
        notes = model.meta.setdefault(NOTES_KEY, [])
        names = Names(model.graph)
        modified = False
        for x, nodes in groups.items():
            layer_names = ", ".join(node.meta[META_KEY].name for node in nodes)
            choice = choose_smoothing(maxima[x], samplers[x].sample(),
                                      [_weight(node) for node in nodes], self.alphas,
                                      self.hardware, self.noise, self.budget)
            notes.append({"norm": layer_names, "folded": choice.alpha is not None,
                          "reason": choice.note()})
            if choice.alpha is not None:
                _smooth(model.graph, names, x, nodes, choice.scale)
                modified = True
        return ir.passes.PassResult(model, modified)


def _weight(node: ir.Node) -> torch.Tensor:
    value = onnx_model.source_initializer(node.inputs[1]).const_value
    return torch.from_numpy(np.array(value.numpy(), dtype=np.float32))


def _smooth(graph: ir.Graph, names: Names, x: ir.Value, nodes: list[ir.Node],
            scale: torch.Tensor) -> None:
    """W diag(s) on every node's crossbar matrix, and Mul(x, 1/s) before the group."""
    for node in nodes:
        value = onnx_model.source_initializer(node.inputs[1])
        scaled = (_weight(node) * scale).numpy()
        value.const_value = ir.tensor(scaled, name=value.name)
    inverse = add_initializer(graph, names, f"{nodes[0].meta[META_KEY].name}.smooth_scale",
                              (1.0 / scale).numpy().astype(np.float32))
    mul = ir.node("Mul", [x, inverse], name=names.fresh(f"{nodes[0].name}/Smooth"))
    smoothed = mul.outputs[0]
    smoothed.name = names.fresh(f"{x.name}_smoothed")
    smoothed.type, smoothed.shape = x.type, x.shape
    readers = [node if node.inputs[0] is x else node.inputs[0].producer() for node in nodes]
    order = {node: index for index, node in enumerate(graph)}
    graph.insert_before(min(readers, key=order.__getitem__), mul)
    for reader in readers:  # the analog node, or the SliceInput before it
        for index, value in enumerate(reader.inputs):
            if value is x:
                reader.replace_input_with(index, smoothed)

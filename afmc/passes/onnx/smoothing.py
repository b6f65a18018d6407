"""What both ONNX smoothing passes share: the analog groups, their inputs' statistics, and
the edit that smooths a group.

A group is the analog nodes that read the same activation X (before afmc.SliceInput).
Smoothing a group by channel scales s multiplies every node's crossbar matrix by columns,
W diag(s), and puts a digital ``Mul(X, 1/s)`` before the group: the FP output is
unchanged to rounding (x / s) (W diag(s))^T = x W^T.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_ir as ir
import torch

from afmc.ops import onnx_model
from afmc.passes.layers import META_KEY
from afmc.passes.onnx.calibrate import Batch, analog_inputs
from afmc.passes.onnx.graph_edit import Names, add_initializer
from afmc.passes.row_sample import RowSampler


def analog_groups(model: ir.Model) -> dict[ir.Value, list[ir.Node]]:
    """The analog nodes with a record, grouped by the activation they read."""
    groups: dict[ir.Value, list[ir.Node]] = {}
    for node in onnx_model.analog_nodes(model):
        if META_KEY in node.meta:
            groups.setdefault(onnx_model.source_initializer(node.inputs[0]), []).append(node)
    return groups


def observe_groups(model: ir.Model, groups: dict[ir.Value, list[ir.Node]],
                   batches: Iterable[Batch], step: str, rows: int | None = None
                   ) -> tuple[dict[ir.Value, torch.Tensor], dict[ir.Value, RowSampler]]:
    """Per group, max |x_k| per input channel over the batches (in the FP view), and with
    `rows` a row sampler of that many uniform rows."""
    maxima: dict[ir.Value, torch.Tensor] = {}
    samplers = {x: RowSampler(rows) for x in groups} if rows is not None else {}
    first = [nodes[0] for nodes in groups.values()]
    for inputs in analog_inputs(model, first, batches, step):
        for x, value in zip(groups, inputs, strict=True):
            flat = value.reshape(-1, value.shape[-1]).float()
            amax = flat.abs().amax(0)
            maxima[x] = torch.maximum(maxima[x], amax) if x in maxima else amax
            if samplers:
                samplers[x].add(flat)
    return maxima, samplers


def crossbar_weight(node: ir.Node) -> torch.Tensor:
    """The analog node's crossbar matrix [N, K] (float32)."""
    value = onnx_model.source_initializer(node.inputs[1]).const_value
    return torch.from_numpy(np.array(value.numpy(), dtype=np.float32))


def smooth_group(graph: ir.Graph, names: Names, x: ir.Value, nodes: list[ir.Node],
                 weights: list[torch.Tensor], scale: torch.Tensor) -> None:
    """W diag(s) on every node's crossbar matrix (`weights`: crossbar_weight of each node),
    and Mul(x, 1/s) before the group."""
    for node, weight in zip(nodes, weights, strict=True):
        value = onnx_model.source_initializer(node.inputs[1])
        value.const_value = ir.tensor((weight * scale).numpy(), name=value.name)
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

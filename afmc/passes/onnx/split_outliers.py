"""Outlier split on an ONNX graph: each analog row slice's largest weights go to an exact
digital path.

Rule (the same as the FX pass split-outliers, whose docstring gives the reasons): for an
analog node and a count m, the m largest |w| of every row of every input slice leave the
crossbar: ``AnalogLinear(X, W)`` becomes ``Add(AnalogLinear(X, W_dense),
SparseOutliers(X, indices, values))``, X the node's input before afmc.SliceInput, W_dense
W with those weights set to 0, (indices, values) [N, m * slices] new initializers holding
them exactly; the FP view is bit for bit the unsplit one (the runtime puts the values back
into W). m is chosen per layer by the chip objective on the calibration inputs of the FP
view (layer_score.LayerScore on a row_sample.RowSampler sample) and given out under
``outliers.budget`` by afmc.passes.outlier_allocation (an LM head counting as all the
other layers). The record of a split layer gets outliers_per_slice, outlier_weights and
the names of the two initializers.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_ir as ir
import torch

from afmc.config import AfmcConfig
from afmc.ops import onnx_domain, onnx_model
from afmc.ops.sparse_outliers_onnx import OP_TYPE as SPARSE_OUTLIERS
from afmc.passes.layer_score import LayerScore, dense_part, split_indices
from afmc.passes.layers import META_KEY
from afmc.passes.onnx.calibrate import Batch, analog_inputs
from afmc.passes.onnx.graph_edit import Names, add_initializer
from afmc.passes.onnx.ordering import OrderedOnnxPass
from afmc.passes.outlier_allocation import allocate, candidates, importance
from afmc.passes.range_search import ChipNoise
from afmc.passes.registry import register_pass
from afmc.passes.row_sample import RowSampler, WeightedRows
from afmc.passes.stages import Needs

HARDWARE = ("inp_res", "out_res", "out_bound")


@register_pass("onnx-split-outliers", "onnx", uses_calibration=True)
class SplitOnnxOutliers(OrderedOnnxPass):
    """Move each analog row slice's largest weights to an exact digital sparse path."""

    needs = Needs(analog_ops=True, uncalibrated=True)

    def __init__(self, config: AfmcConfig, batches: Iterable[Batch] | None = None) -> None:
        super().__init__()
        self.outliers = config.outliers
        self.noise = ChipNoise.of(config)
        self.batches = batches

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        analog = [node for node in onnx_model.analog_nodes(model) if META_KEY in node.meta]
        if not analog or self.outliers.budget == 0:
            return ir.passes.PassResult(model, False)
        if self.batches is None:
            raise ValueError("onnx-split-outliers: no calibration data given")
        samples = self._samples(model, analog)
        errors, per_count, total = {}, {}, 0
        for index, node in enumerate(analog):
            weight = _weight(node)
            sizes = node.meta[META_KEY].slice_sizes
            hardware = tuple(float(node.attributes[key].value) for key in HARDWARE)
            errors[index] = LayerScore(samples[index], weight, sizes, hardware, self.noise,
                                       candidates(self.outliers.max_per_slice, sizes)).errors
            per_count[index] = weight.shape[0] * len(sizes)
            total += node.meta[META_KEY].weights
        weights = importance({index: node.meta[META_KEY].name
                              for index, node in enumerate(analog)})
        chosen = allocate(errors, per_count, int(self.outliers.budget * total), weights)
        names = Names(model.graph)
        split = [(analog[index], count) for index, count in chosen.items() if count]
        for node, count in split:
            split_layer(model.graph, names, node, count)
        if split:
            onnx_model.attach_afmc_functions(model)
        return ir.passes.PassResult(model, bool(split))

    def _samples(self, model: ir.Model, analog: list[ir.Node]) -> list[list[WeightedRows]]:
        """The weighted calibration input rows of every analog node, cut into its slices."""
        samplers = [RowSampler(self.outliers.sample_rows) for _ in analog]
        for inputs in analog_inputs(model, analog, self.batches, "onnx-split-outliers"):
            for sampler, x in zip(samplers, inputs, strict=True):
                sampler.add(x)
        return [sampler.sample().split(node.meta[META_KEY].slice_sizes)
                for sampler, node in zip(samplers, analog, strict=True)]


def _weight(node: ir.Node) -> torch.Tensor:
    """The crossbar matrix [N, K] of an analog node."""
    value = onnx_model.source_initializer(node.inputs[1]).const_value
    return torch.from_numpy(np.array(value.numpy(), dtype=np.float32))


def split_layer(graph: ir.Graph, names: Names, node: ir.Node, count: int) -> None:
    """Split the analog `node` at `count` outliers per row slice (the module's rule):
    AnalogLinear(W_dense) + SparseOutliers(indices, values). The caller attaches the
    SparseOutliers functions afterwards (onnx_model.attach_afmc_functions)."""
    record = node.meta[META_KEY]
    weight_value = onnx_model.source_initializer(node.inputs[1])
    weight = _weight(node)
    indices = split_indices(weight, record.slice_sizes, count)
    values = weight.gather(1, indices)
    weight_value.const_value = ir.tensor(dense_part(weight, indices).numpy(),
                                         name=weight_value.name)
    index_value = add_initializer(graph, names, f"{record.name}.outlier_indices",
                                  indices.numpy().astype(np.int64))
    values_value = add_initializer(graph, names, f"{record.name}.outlier_values",
                                   values.numpy())
    x = onnx_model.source_initializer(node.inputs[0])
    analog_out = node.outputs[0]
    sparse = ir.node(SPARSE_OUTLIERS, [x, index_value, values_value],
                     domain=onnx_domain.DOMAIN, name=f"{node.name}/SparseOutliers")
    add = ir.node("Add", [analog_out, sparse.outputs[0]], name=f"{node.name}/AddOutliers")
    for value, suffix in ((sparse.outputs[0], "sparse"), (add.outputs[0], "split")):
        value.name = names.fresh(f"{analog_out.name}_{suffix}")
        value.type, value.shape = analog_out.type, analog_out.shape  # typed, as the analog one
    for user, index in list(analog_out.uses()):
        if user is not add:
            user.replace_input_with(index, add.outputs[0])
    if analog_out.is_graph_output():  # the sum takes over the output and its name
        name = analog_out.name
        analog_out.name = names.fresh(f"{name}_analog")
        add.outputs[0].name = name
        graph.outputs[graph.outputs.index(analog_out)] = add.outputs[0]
    graph.insert_after(node, [sparse, add])
    record.outliers_per_slice = count
    record.outlier_weights = int(np.count_nonzero(values.numpy()))
    record.outlier_indices = index_value.name
    record.outlier_values = values_value.name

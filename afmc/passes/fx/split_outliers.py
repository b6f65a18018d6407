"""Outlier split: the largest weights of each crossbar row slice go to an exact digital path.

Rule (dense + sparse, as SqueezeLLM splits digital weights): for an analog layer and
a count m, the m largest |w| of every row of every input slice leave the crossbar:
the layer becomes ``analog_linear(x, W_dense) + sparse_outliers(x, indices, values)``
where W_dense is W with those weights set to 0 and (indices, values) hold them
exactly, M = m * slices per row. In floating point the two parts add up to
``x @ W^T``: the program's FP output is unchanged (to rounding), and the file's FP view
is bit for bit the unsplit one (the runtime puts the values back into W). On a chip
the tile holds only W_dense, whose rows have a smaller max |w|, so its programming
noise (which scales with the row's max |w|) and its ADC step shrink.

m is chosen per layer by the chip objective (afmc.passes.chip_error; the choice is
afmc.passes.outlier_allocation's, shared with onnx-split-outliers): for every
candidate m up to ``outliers.max_per_slice``, the layer's expected relative output
error on a chip of ``noise.model`` (each slice at its best input range of a coarse
search, on ``outliers.sample_rows`` uniform calibration input rows plus the extreme
ones, weighted by their frequency (afmc.passes.row_sample), and at most 128 sampled
weight rows). The digital weights are then given out greedily across all analog layers,
each step to the layer whose weighted error falls most per weight moved, until
``outliers.budget`` (a fraction of all analog weights) is spent. A layer whose error
no candidate lowers keeps m = 0. The weight of a layer's relative error is 1, but for
an analog LM head (the name rule of ``placement.lm_head``): its error is the logits'
own, where every other layer's is diluted in the residual stream, so it counts as much
as all the other analog layers' together (their number). Measured on SmolLM2-135M
(issue 21, the raw model's programming noise): the LM head alone costs about as much
perplexity as all 210 other layers together (34.8 and 49.2 against FP 22.7); without
this weight the LM head got no digital weight at a budget of 1% or 2%, and the chips
stayed at 3.2x FP.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import fx
from torch.fx.passes.infra.pass_base import PassResult

from afmc.config import AfmcConfig
from afmc.ops.analog_linear import ANALOG_LINEAR
from afmc.ops.sparse_outliers import SPARSE_OUTLIERS
from afmc.passes.fx.calibrate import AnalogInputInterpreter
from afmc.passes.fx.fold_common import replace_parameter
from afmc.passes.fx.ordering import OrderedPass
from afmc.passes.layer_score import LayerScore, dense_part, split_indices
from afmc.passes.layers import META_KEY
from afmc.passes.outlier_allocation import allocate, candidates, importance
from afmc.passes.range_search import ChipNoise
from afmc.passes.registry import register_pass
from afmc.passes.row_sample import RowSampler, WeightedRows
from afmc.passes.stages import Needs


@register_pass("split-outliers", "fx", uses_calibration=True)
class SplitOutliers(OrderedPass):
    """Move each analog row slice's largest weights to an exact digital sparse path."""

    needs = Needs(analog_ops=True, uncalibrated=True)

    def __init__(self, config: AfmcConfig, batches: Iterable[tuple] | None = None) -> None:
        super().__init__()
        self.outliers = config.outliers
        self.noise = ChipNoise.of(config)
        self.batches = batches

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        nodes = [node for node in graph_module.graph.nodes
                 if node.op == "call_function" and node.target is ANALOG_LINEAR]
        if not nodes or self.outliers.budget == 0:
            return PassResult(graph_module, False)
        if self.batches is None:
            raise ValueError("split-outliers: no calibration data given")
        samples = self._samples(graph_module)
        errors, per_count = {}, {}
        for node in nodes:
            if node not in samples:
                continue
            weight = graph_module.get_parameter(node.args[1].target)
            sizes = list(node.args[3])
            errors[node] = LayerScore(samples[node], weight, sizes, tuple(node.args[4:7]),
                                      self.noise,
                                      candidates(self.outliers.max_per_slice, sizes)).errors
            per_count[node] = weight.shape[0] * len(sizes)
        total = sum(graph_module.get_parameter(n.args[1].target).numel() for n in nodes)
        weights = importance({node: node.meta[META_KEY].name for node in nodes})
        chosen = allocate(errors, per_count, int(self.outliers.budget * total), weights)
        modified = False
        for node, count in chosen.items():
            if count:
                self.split(graph_module, node, count)
                modified = True
        if modified:
            graph_module.graph.lint()
            graph_module.recompile()
        return PassResult(graph_module, modified)

    def _samples(self, gm: fx.GraphModule) -> dict[fx.Node, list[WeightedRows]]:
        """The weighted calibration input rows of every analog node, cut into its slices."""
        samplers: dict[fx.Node, RowSampler] = {}

        def observe(node: fx.Node, x: torch.Tensor, sizes: list[int]) -> None:
            samplers.setdefault(node, RowSampler(self.outliers.sample_rows)).add(x)

        interpreter = AnalogInputInterpreter(gm, observe)
        with torch.no_grad():
            for batch in self.batches:
                interpreter.run(*batch)
        return {node: sampler.sample().split(list(node.args[3]))
                for node, sampler in samplers.items()}

    @staticmethod
    def split(gm: fx.GraphModule, node: fx.Node, count: int) -> None:
        """Rewrite `node` into analog(W_dense) + sparse_outliers(indices, values)."""
        target = node.args[1].target
        weight = gm.get_parameter(target).detach()
        sizes = list(node.args[3])
        indices = split_indices(weight, sizes, count)
        values = weight.gather(1, indices)
        replace_parameter(gm, target, dense_part(weight, indices))
        owner_path, _, _ = target.rpartition(".")
        owner = gm.get_submodule(owner_path)
        suffix, index = "", 0
        while hasattr(owner, f"outlier_indices{suffix}"):
            index += 1
            suffix = f"_{index}"
        owner.register_buffer(f"outlier_indices{suffix}", indices)
        owner.register_parameter(f"outlier_values{suffix}", torch.nn.Parameter(values))
        prefix = f"{owner_path}." if owner_path else ""
        index_target = f"{prefix}outlier_indices{suffix}"
        value_target = f"{prefix}outlier_values{suffix}"
        graph = gm.graph
        with graph.inserting_after(node):
            index_node = graph.get_attr(index_target)
        with graph.inserting_after(index_node):
            value_node = graph.get_attr(value_target)
        with graph.inserting_after(value_node):
            sparse = graph.call_function(SPARSE_OUTLIERS, (node.args[0], index_node, value_node))
        with graph.inserting_after(sparse):
            total = graph.call_function(torch.ops.aten.add.Tensor, (node, sparse))
        node.replace_all_uses_with(total, delete_user_cb=lambda user: user is not total)
        for new in (sparse, total):
            if "val" in node.meta:
                new.meta["val"] = node.meta["val"]
        record = node.meta[META_KEY]
        record.outliers_per_slice = count
        record.outlier_weights = int(values.ne(0).sum())
        record.outlier_indices = index_target
        record.outlier_values = value_target

"""Smoothing for the chip: each layer group's strength chosen by its expected chip error.

Rule: as smooth-inputs (SmoothQuant scales s_k = a_k^alpha / w_k^(1 - alpha) per input
channel of a group of crossbar layers reading the same activation, x / s and W
diag(s), exact in FP), but alpha is chosen per group from ``smoothing.alphas``, or no
smoothing at all, by the sum over the group's layers of their expected relative output
error on a chip of ``noise.model`` on the calibration rows of afmc.passes.row_sample
(uniform ones and the extreme ones, weighted by frequency; afmc.passes.layer_score:
DAC and ADC at each slice's best coarse input range, plus the programming noise's
closed form; with the outlier split that the split-outliers pass will make at
``outliers.budget``, modelled as that fraction of every row slice). Smoothing moves
activation outliers into weight columns, and the programming noise of a row scales
with its largest weight, so a group is smoothed only as far as the chip gains from it;
a group whose chip error smoothing does not lower is left as it is. The note of each
group names the chosen alpha and the scores.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import fx
from torch.fx.passes.infra.pass_base import PassResult

from afmc.config import AfmcConfig
from afmc.passes.fx.fold_common import record_note
from afmc.passes.fx.smooth_inputs import SmoothInputs, accelerator_groups, weight_matrix
from afmc.passes.fx.static_linear import find_static_linears
from afmc.passes.range_search import ChipNoise
from afmc.passes.registry import register_pass
from afmc.passes.row_sample import RowSampler, WeightedRows
from afmc.passes.smoothing_choice import choose_smoothing
from afmc.passes.stages import Needs


def channel_statistics(gm: fx.GraphModule, nodes: Iterable[fx.Node], batches: Iterable[tuple],
                       rows: int) -> tuple[dict[fx.Node, torch.Tensor],
                                           dict[fx.Node, WeightedRows]]:
    """(max |x_k| per last-axis channel, a RowSampler sample of `rows` uniform rows and
    the extreme ones) of each node's value over the batches."""
    watched = set(nodes)
    maxima: dict[fx.Node, torch.Tensor] = {}
    samplers: dict[fx.Node, RowSampler] = {}

    class Observer(fx.Interpreter):
        def run_node(self, node: fx.Node):
            value = super().run_node(node)
            if node in watched:
                flat = value.detach().reshape(-1, value.shape[-1]).float()
                amax = flat.abs().amax(0)
                maxima[node] = torch.maximum(maxima[node], amax) if node in maxima else amax
                samplers.setdefault(node, RowSampler(rows)).add(flat)
            return value

    observer = Observer(gm)
    with torch.no_grad():
        for batch in batches:
            observer.run(*batch)
    return maxima, {node: sampler.sample() for node, sampler in samplers.items()}


@register_pass("chip-smooth-inputs", "fx", uses_calibration=True)
class ChipSmoothInputs(SmoothInputs):
    """Smooth each crossbar layer group at the alpha (or none) that its chip error favours."""

    needs = Needs(placed=True, analog_ops=False)

    def __init__(self, config: AfmcConfig, batches: Iterable[tuple] | None = None) -> None:
        super().__init__(config, batches)
        self.alphas = config.smoothing.alphas
        self.hardware = config.hardware
        self.rows = config.outliers.sample_rows
        self.budget = config.outliers.budget
        self.noise = ChipNoise.of(config)

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        if self.batches is None:
            raise ValueError("chip-smooth-inputs: no calibration data given")
        groups = accelerator_groups(graph_module)
        maxima, samples = channel_statistics(graph_module, groups, self.batches, self.rows)
        linears = {layer.node: layer for layer in find_static_linears(graph_module)}
        modified = False
        for x, layers in groups.items():
            if x not in maxima:
                continue
            names = ", ".join(layer.name for layer in layers)
            choice = choose_smoothing(maxima[x], samples[x],
                                      [weight_matrix(graph_module, layer) for layer in layers],
                                      self.alphas, self.hardware, self.noise, self.budget)
            if choice.alpha is None:
                record_note(graph_module, names, False, choice.note())
                continue
            self._smooth(graph_module, x, layers, choice.scale, linears, choice.note())
            modified = True
        if modified:
            graph_module.graph.lint()
            graph_module.recompile()
        return PassResult(graph_module, modified)

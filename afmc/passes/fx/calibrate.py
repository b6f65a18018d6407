"""Calibration: initialise each analog layer's static input ranges from sample data.

Rule: run the program on the calibration batches with every afmc.analog_linear
computed in floating point (x @ W^T, so each layer sees the activations of the
FP model), observe |x| per input slice, and set r_s by the configured method:

- ``max``: the largest |x_s| seen;
- ``percentile``: that percentile of |x_s| (default 99.995), over a uniform
  random sample of at most 2^20 values per slice and batch (fixed seed);
- ``kappa-std``: the running mean over batches of kappa * std(x_s)
  (HARDWARE.md, AFM kappa = 18);
- ``search``: the range that minimises the slice's expected output error on the
  chip (the whole DAC + ADC model plus the programming noise of ``noise.model``, with
  ``calibration.objective=chip``; without the noise with ``noise-free``) on a sample
  of at most ``search_rows`` uniform input rows plus the slice's extreme rows, each
  weighted by its frequency (afmc.passes.row_sample, afmc.passes.range_search), and with
  ``clip_weights`` each weight row's clipping bound with it (the programmed weights
  are then the clipped ones).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import fx
from torch.fx.passes.infra.pass_base import PassResult

from afmc.config import AfmcConfig
from afmc.ops.analog_linear import ANALOG_LINEAR
from afmc.passes.fx.fold_common import replace_parameter
from afmc.passes.fx.ordering import OrderedPass
from afmc.passes.layers import META_KEY
from afmc.passes.range_observer import LayerCalibration, SliceObserver
from afmc.passes.registry import register_pass
from afmc.passes.stages import Needs


class AnalogInputInterpreter(fx.Interpreter):
    """Runs a program with every analog linear in floating point (x @ W^T), handing each
    one's input, node and slice sizes to `observe`."""

    def __init__(self, gm: fx.GraphModule, observe: Callable[[fx.Node, torch.Tensor], None]):
        super().__init__(gm)
        self.observe = observe

    def call_function(self, target, args, kwargs):
        if target is ANALOG_LINEAR:
            x, weight, _, sizes = args[:4]
            self.observe(self.current_node, x, sizes)
            return torch.nn.functional.linear(x, weight)
        return super().call_function(target, args, kwargs)

    def run_node(self, node: fx.Node):
        self.current_node = node
        return super().run_node(node)


@register_pass("calibrate", "fx", uses_calibration=True, reports_progress=True)
class CalibrateInputRanges(OrderedPass):
    """Set static input ranges of analog layers from sample data (max / percentile / kappa-std)."""

    needs = Needs(analog_ops=True)

    def __init__(self, config: AfmcConfig, batches: Iterable[tuple] | None = None,
                 progress: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.rule = LayerCalibration.of(config)
        self.batches = batches
        self.progress = progress

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        if self.batches is None:
            raise ValueError("calibrate: no calibration data given")
        generator = torch.Generator().manual_seed(0)
        observers: dict[fx.Node, list[SliceObserver]] = {}

        def observe(node: fx.Node, x: torch.Tensor, sizes: list[int]) -> None:
            slots = observers.setdefault(node, self.rule.observers(len(sizes), generator))
            for slot, part in zip(slots, torch.split(x, list(sizes), dim=-1), strict=True):
                slot.update(part)

        interpreter = AnalogInputInterpreter(graph_module, observe)
        count = 0
        with torch.no_grad():
            for batch in self.batches:
                interpreter.run(*batch)
                count += 1
                if self.progress:
                    self.progress(count)
        if count == 0:
            raise ValueError("calibrate: the calibration data holds no batch")
        for node, slots in observers.items():
            weight_target, sizes = node.args[1].target, node.args[3]
            weight = graph_module.get_parameter(weight_target).detach()
            ranges, choice = self.rule.ranges(slots, lambda weight=weight: weight, list(sizes),
                                              tuple(node.args[4:7]))
            if choice is not None:
                if choice.weight is not None:
                    replace_parameter(graph_module, weight_target, choice.weight.to(weight.dtype))
                choice.annotate(node.meta[META_KEY])
            graph_module.get_parameter(node.args[2].target).data.copy_(torch.tensor(ranges))
            node.meta[META_KEY].calibrated = self.rule.calibration.method
        return PassResult(graph_module, bool(observers))

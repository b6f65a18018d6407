"""Calibration on an ONNX graph: set each analog layer's static input ranges from sample data.

Rule (the same as the FX pass calibrate): run the model on the calibration
batches with every afmc analog node computed in floating point (the FP view,
runtime.views.fp_reference), so each layer sees the activations of the FP
model; observe the input of every analog node (before afmc.SliceInput) per
input slice with range_observer.SliceObserver, and set the input_range initializer
by the configured method (max, percentile, kappa-std or search; search also
writes the clipped crossbar weights when it clips rows). The FP view runs in
onnxruntime on a copy written to a temporary directory with its weights as
external data, with the observed values as extra graph outputs; the model
itself is changed only in its input_range initializers.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import torch
from onnx import helper

from afmc.config import AfmcConfig
from afmc.ops import onnx_model
from afmc.passes.layers import META_KEY
from afmc.passes.onnx.ordering import OrderedOnnxPass
from afmc.passes.range_observer import LayerCalibration
from afmc.passes.registry import register_pass
from afmc.passes.stages import Needs
from afmc.runtime.sessions import session_options
from afmc.runtime.views import fp_reference

Batch = Mapping[str, np.ndarray]


@register_pass("onnx-calibrate", "onnx", uses_calibration=True, reports_progress=True)
class CalibrateOnnxInputRanges(OrderedOnnxPass):
    """Set static input ranges of analog ONNX nodes from sample data (onnxruntime, FP view)."""

    needs = Needs(analog_ops=True)

    def __init__(
        self,
        config: AfmcConfig,
        batches: Iterable[Batch] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        self.rule = LayerCalibration.of(config)
        self.batches = batches
        self.progress = progress

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if self.batches is None:
            raise ValueError("onnx-calibrate: no calibration data given")
        analog = [node for node in onnx_model.analog_nodes(model) if META_KEY in node.meta]
        if not analog:
            return ir.passes.PassResult(model, False)
        generator = torch.Generator().manual_seed(0)
        observers = [self.rule.observers(len(node.meta[META_KEY].slice_sizes), generator)
                     for node in analog]
        batches = analog_inputs(model, analog, self.batches, "onnx-calibrate")
        for count, inputs in enumerate(batches, start=1):
            for node, x, slots in zip(analog, inputs, observers, strict=True):
                parts = torch.split(x, node.meta[META_KEY].slice_sizes, dim=-1)
                for slot, part in zip(slots, parts, strict=True):
                    slot.update(part)
            if self.progress:
                self.progress(count)
        for node, slots in zip(analog, observers, strict=True):
            record = node.meta[META_KEY]
            weight_value = onnx_model.source_initializer(node.inputs[1])
            hardware = tuple(float(node.attributes[key].value)
                             for key in ("inp_res", "out_res", "out_bound"))
            ranges, choice = self.rule.ranges(slots, lambda value=weight_value: torch.from_numpy(
                value.const_value.numpy().astype(np.float32)), record.slice_sizes, hardware)
            if choice is not None:
                if choice.weight is not None:
                    weight_value.const_value = ir.tensor(choice.weight.numpy(),
                                                         name=weight_value.name)
                choice.annotate(record)
            value = node.inputs[2]
            value.const_value = ir.tensor(np.array(ranges, dtype=np.float32), name=value.name)
            record.calibrated = self.rule.calibration.method
        return ir.passes.PassResult(model, True)


def analog_inputs(model: ir.Model, analog: list[ir.Node], batches: Iterable[Batch],
                  step: str) -> Iterator[list[torch.Tensor]]:
    """Per calibration batch, the input of each node of `analog` (before afmc.SliceInput)
    in the FP view; a ValueError naming `step` when there is no batch."""
    observed = [onnx_model.source_initializer(node.inputs[0]) for node in analog]
    graph_inputs = {value.name for value in model.graph.inputs}
    fetch = list(dict.fromkeys(v.name for v in observed if v.name not in graph_inputs))
    count = 0
    with tempfile.TemporaryDirectory(prefix="afmc-calibrate-") as tmp:
        session = _fp_session(model, fetch, Path(tmp))
        for batch in batches:
            feed = _feed(session, batch, step)
            values = {
                **feed,
                **dict(zip(fetch, session.run(fetch, feed) if fetch else [], strict=True)),
            }
            count += 1
            yield [torch.from_numpy(np.require(values[value.name], requirements="W"))
                   for value in observed]
    if count == 0:
        raise ValueError(f"{step}: the calibration data holds no batch")


def _fp_session(model: ir.Model, outputs: list[str], directory: Path) -> ort.InferenceSession:
    """An onnxruntime session of the FP view of `model` that also returns `outputs`."""
    path = directory / "model.onnx"
    ir.save(model, path, external_data="model.onnx.data")
    proto = fp_reference(onnx.load(str(path), load_external_data=False))
    present = {output.name for output in proto.graph.output}
    proto.graph.output.extend(
        helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        for name in dict.fromkeys(outputs)
        if name not in present
    )
    fp_path = directory / "fp.onnx"
    onnx.save(proto, str(fp_path))
    return ort.InferenceSession(str(fp_path), session_options(), providers=["CPUExecutionProvider"])


def _feed(session: ort.InferenceSession, batch: Batch, step: str) -> dict[str, np.ndarray]:
    names = [value.name for value in session.get_inputs()]
    missing = [name for name in names if name not in batch]
    if missing:
        raise ValueError(
            f"{step}: a calibration batch lacks the model input(s) "
            f"{', '.join(missing)} (it has {', '.join(sorted(batch)) or 'none'})"
        )
    return {name: np.asarray(batch[name]) for name in names}

"""Checks run after every pass, so a broken pass names itself.

- check_graph (always): the FX graph lints, and every afmc.analog_linear node
  carries its LayerRecord with slice sizes that match its weight and its
  input-range parameter (one range per slice), and a hardware configuration.
- check_onnx_graph (always, ONNX input): the same rule for every afmc analog node of
  an ONNX graph: its record, a crossbar matrix [N, K] whose K the slices cover, one
  input range per slice, and the hardware attributes.
- output_drift (with --verify): the relative L2 difference of the program's
  output to the FP model's on the example inputs, in float64 by numpy's one-thread
  pairwise sum (a whole-tensor torch norm changes its last bits with the thread count,
  and the value is recorded in afmc.json).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import torch
from torch import fx

from afmc.ops import onnx_model
from afmc.ops.analog_linear import ANALOG_LINEAR
from afmc.passes.layers import META_KEY


class VerificationError(RuntimeError):
    """A pass left the graph in a broken state; the message names the pass and the node."""


def check_graph(gm: fx.GraphModule, pass_name: str) -> None:
    """Lint the graph and check every analog node's record against its parameters."""
    try:
        gm.graph.lint()
    except Exception as error:  # noqa: BLE001  (fx raises plain RuntimeError/AssertionError)
        raise VerificationError(f"after pass {pass_name}: graph lint failed: {error}") from None
    for node in gm.graph.nodes:
        if node.target is not ANALOG_LINEAR:
            continue
        record = node.meta.get(META_KEY)
        where = f"after pass {pass_name}: analog node {node.name}"
        if record is None or record.placement != "analog":
            raise VerificationError(f"{where} has no analog LayerRecord")
        weight = gm.get_parameter(node.args[1].target)
        ranges = gm.get_parameter(node.args[2].target)
        sizes = list(node.args[3])
        if sizes != record.slice_sizes or sum(sizes) != weight.shape[1]:
            raise VerificationError(f"{where}: slice sizes {sizes} do not cover weight "
                                    f"{list(weight.shape)} (record {record.slice_sizes})")
        if ranges.numel() != len(sizes):
            raise VerificationError(f"{where}: {ranges.numel()} input ranges for "
                                    f"{len(sizes)} slices")
        if len(node.args) < 8:
            raise VerificationError(f"{where}: hardware configuration missing")


def check_onnx_graph(model: ir.Model, pass_name: str) -> None:
    """Check every analog node of an ONNX graph against its record (module rules)."""
    for node in onnx_model.analog_nodes(model):
        record = node.meta.get(META_KEY)
        where = f"after pass {pass_name}: analog node {node.name}"
        if record is None or record.placement != "analog":
            raise VerificationError(f"{where} has no analog LayerRecord")
        weight = onnx_model.source_initializer(node.inputs[1]).shape
        ranges = node.inputs[2].shape if node.inputs[2] is not None else None
        sizes = list(record.slice_sizes)
        if weight is None or len(weight) != 2 or sum(sizes) != weight[1]:
            raise VerificationError(f"{where}: slice sizes {sizes} do not cover weight "
                                    f"{None if weight is None else list(weight)}")
        if ranges is None or list(ranges) != [len(sizes)]:
            raise VerificationError(f"{where}: input ranges of shape "
                                    f"{None if ranges is None else list(ranges)} for "
                                    f"{len(sizes)} slices")
        missing = [key for key in ("inp_res", "out_res", "out_bound")
                   if key not in node.attributes]
        if missing:
            raise VerificationError(f"{where}: hardware attribute(s) {', '.join(missing)} "
                                    "missing")


def output_drift(gm: fx.GraphModule, example_inputs: tuple, reference: torch.Tensor) -> float:
    """Relative L2 difference between the program's output and `reference`."""
    with torch.no_grad():
        output = gm(*example_inputs)
    output = output[0] if isinstance(output, (tuple, list)) else output
    return _norm(output - reference) / max(_norm(reference), 1e-12)


def _norm(tensor: torch.Tensor) -> float:
    """The L2 norm of `tensor` in float64, the same on any number of threads."""
    values = np.ascontiguousarray(tensor.detach().to("cpu", torch.float64).numpy())
    return math.sqrt(float(np.square(values).sum()))

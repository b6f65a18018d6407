"""Checks run after every pass, so a broken pass names itself.

- check_graph (always): the FX graph lints, and every afmc.analog_linear node
  carries its LayerRecord with slice sizes that match its weight and its
  input-range parameter (one range per slice), and a hardware configuration.
- output_drift (with --verify): the relative L2 difference of the program's
  output to the FP model's on the example inputs, in float64 by numpy's one-thread
  pairwise sum (a whole-tensor torch norm changes its last bits with the thread count,
  and the value is recorded in afmc.json).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import fx

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

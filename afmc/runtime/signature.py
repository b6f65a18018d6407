"""The input and output signature of a compiled model, read from OUT/model.onnx.

Only the graph is read (onnx.load with load_external_data=False): the weights,
inline or in an external .data file, are not loaded. A dimension is an int when
the graph fixes it and None when it is symbolic or unknown; a shape is None when
the graph does not give the rank. Graph inputs that are initializers (older IR
versions list them as inputs) are not model inputs and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from afmc.layout import MODEL_FILE


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, element type and (partly known) shape."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None

    def describe(self) -> str:
        """The spec as `float32[4, ?, 8]` (or `float32[...]` without a known rank)."""
        dims = "..." if self.shape is None else ", ".join(
            "?" if dim is None else str(dim) for dim in self.shape)
        return f"{self.dtype}[{dims}]"


@dataclass(frozen=True)
class Signature:
    """The model's inputs and outputs in graph order."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    shape = None
    if tensor.HasField("shape"):
        shape = tuple(dim.dim_value if dim.HasField("dim_value") else None
                      for dim in tensor.shape.dim)
    return TensorSpec(value.name, dtype, shape)


def read_signature(out_dir: Path) -> Signature:
    """The signature of OUT/model.onnx (rules in the module docstring)."""
    graph = onnx.load(str(out_dir / MODEL_FILE), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    return Signature([_spec(value) for value in graph.input if value.name not in weights],
                     [_spec(value) for value in graph.output])

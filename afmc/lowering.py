"""Lowering: torch-level program -> ONNX file with afmc ops.

The program (an FX GraphModule after the passes) is exported again with
torch.export and converted by torch.onnx (dynamo) with afmc's
custom_translation_table, so each afmc torch op becomes one node of the ONNX
domain `afmc`. The afmc function bodies are then attached as model-local
functions, the afmc record goes into the metadata, and the file is written
atomically (capture.onnx_export.save_model: external data above 1 GiB).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
from torch import fx

from afmc import ops
from afmc.capture.onnx_export import to_onnx_model
from afmc.ops import onnx_domain
from afmc.ops.analog_linear_onnx import ANALOG_OP_TYPES, slice_overload, sliced_function
from afmc.ops.sparse_outliers_onnx import OP_TYPE as SPARSE_OUTLIERS
from afmc.ops.sparse_outliers_onnx import slot_overload, sparse_outliers_function

METADATA_KEY = "afmc"


def export_program(
    gm: fx.GraphModule,
    example_inputs: tuple,
    dynamic_shapes: Any,
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> ir.Model:
    """Lower the program with the afmc translations and attach the afmc functions."""
    model = to_onnx_model(gm, example_inputs, dynamic_shapes, list(input_names),
                          list(output_names), ops.TRANSLATIONS, optimize=False)
    attach_afmc_functions(model)
    return model


def attach_afmc_functions(model: ir.Model) -> None:
    """Add the model-local function of every afmc op the graph uses.

    Each analog linear node gets the overload of its slice count (the length of
    its input_range) and the function body specialised to it
    (analog_linear_onnx.sliced_function), each SparseOutliers node that of its
    weights per row (sparse_outliers_onnx); other afmc ops get their generic body.
    """
    nodes = [node for node in model.graph.all_nodes() if node.domain == ops.DOMAIN]
    if not nodes:
        return
    opset = model.opset_imports.get("", onnx_domain.MIN_OPSET)
    model.opset_imports[ops.DOMAIN] = ops.VERSION
    protos, slots, generic = {}, set(), set()
    for node in nodes:
        if node.op_type in ANALOG_OP_TYPES:
            slices = _slice_count(node)
            node.overload = slice_overload(slices)
            protos[(node.op_type, slices)] = None
        elif node.op_type == SPARSE_OUTLIERS:
            count = _static_dim(node.inputs[2], 1, "values")
            node.overload = slot_overload(count)
            slots.add(count)
        else:
            generic.add(node.op_type)
    functions = ops.function_protos(generic, opset) + [
        sliced_function(op_type, opset, slices) for op_type, slices in sorted(protos)] + [
        sparse_outliers_function(opset, count) for count in sorted(slots)]
    for proto in functions:
        function = ir.serde.deserialize_function(proto)
        model.functions[function.identifier()] = function


def _static_dim(value: ir.Value | None, axis: int, what: str) -> int:
    """The static size of `value`'s axis `axis` (an initializer's shape)."""
    shape = None if value is None else value.shape
    if shape is None or len(shape) <= axis or not isinstance(shape[axis], int):
        raise ValueError(f"afmc node input {what}: axis {axis} must be static")
    return shape[axis]


def _slice_count(node: ir.Node) -> int:
    ranges = node.inputs[2]
    if ranges is None or ranges.shape is None or len(ranges.shape) != 1 \
            or not isinstance(ranges.shape[0], int):
        raise ValueError(f"analog node {node.name}: input_range must be a static 1-D tensor")
    return ranges.shape[0]


def set_metadata(model: ir.Model, record: dict[str, Any]) -> None:
    """Store the afmc record (configuration, placement, tiles) in the file's metadata."""
    model.metadata_props[METADATA_KEY] = json.dumps(record, sort_keys=True)


def read_metadata(path: Path) -> dict[str, Any]:
    """The afmc record stored in an ONNX file's metadata (without loading weights)."""
    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    raise ValueError(f"{path}: no afmc metadata")


def analog_nodes(model: ir.Model) -> list[ir.Node]:
    """The afmc analog linear nodes, in graph order."""
    return [node for node in model.graph if node.domain == ops.DOMAIN
            and node.op_type in ANALOG_OP_TYPES]


def source_initializer(value: ir.Value) -> ir.Value:
    """The initializer behind an analog node input (through afmc.SliceInput)."""
    producer = value.producer()
    if producer is not None and producer.domain == ops.DOMAIN and producer.op_type == "SliceInput":
        return producer.inputs[0]
    return value

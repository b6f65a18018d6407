"""The afmc ops inside an ONNX model: their functions attached, the analog nodes found.

attach_afmc_functions gives each afmc node the function body it runs (ONNX Runtime
inlines model-local functions); analog_nodes and source_initializer are how the ONNX
passes find the analog layers and the tensors behind their inputs.
"""

from __future__ import annotations

import onnx_ir as ir

from afmc.ops import onnx_domain
from afmc.ops.analog_linear_onnx import ANALOG_OP_TYPES, slice_overload, sliced_function
from afmc.ops.onnx_domain import DOMAIN, VERSION, function_protos
from afmc.ops.sparse_outliers_onnx import OP_TYPE as SPARSE_OUTLIERS
from afmc.ops.sparse_outliers_onnx import slot_overload, sparse_outliers_function


def attach_afmc_functions(model: ir.Model) -> None:
    """Add the model-local function of every afmc op the graph uses.

    Each analog linear node gets the overload of its slice count (the length of
    its input_range) and the function body specialised to it
    (analog_linear_onnx.sliced_function), each SparseOutliers node that of its
    weights per row (sparse_outliers_onnx); other afmc ops get their generic body.
    """
    nodes = [node for node in model.graph.all_nodes() if node.domain == DOMAIN]
    if not nodes:
        return
    opset = model.opset_imports.get("", onnx_domain.MIN_OPSET)
    model.opset_imports[DOMAIN] = VERSION
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
    functions = function_protos(generic, opset) + [
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



def analog_nodes(model: ir.Model) -> list[ir.Node]:
    """The afmc analog linear nodes, in graph order."""
    return [node for node in model.graph if node.domain == DOMAIN
            and node.op_type in ANALOG_OP_TYPES]


def source_initializer(value: ir.Value) -> ir.Value:
    """The initializer behind an analog node input (through afmc.SliceInput)."""
    producer = value.producer()
    if producer is not None and producer.domain == DOMAIN and producer.op_type == "SliceInput":
        return producer.inputs[0]
    return value

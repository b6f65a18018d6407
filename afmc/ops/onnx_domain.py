"""The ONNX domain `afmc`: its name, version, and the helpers that build function bodies.

Every afmc ONNX op ships as a model-local function made of standard ops, so a
stock onnxruntime runs the file and tools see one `afmc` node per analog
operation. Function bodies are built here with onnx.helper; attributes of the
calling node reach the body through attribute references.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
from onnx import AttributeProto, FunctionProto, NodeProto, helper
from onnx.defs import OpSchema

DOMAIN = "afmc"
VERSION = 1
MIN_OPSET = 18  # ReduceMax/ReduceSum take axes as inputs, Pad takes axes.

FunctionBuilder = Callable[[int], FunctionProto]
_FUNCTIONS: dict[str, FunctionBuilder] = {}


def register_function(
    op_type: str,
    inputs: list[tuple[str, str]],
    attributes: dict[str, tuple[float | list[int], str]],
    doc: str,
) -> Callable[[FunctionBuilder], FunctionBuilder]:
    """Register an afmc op: its ONNX schema (inputs, one output Y, attributes with defaults)
    and the builder of its function body (called with the model's opset)."""
    schema = OpSchema(
        op_type,
        DOMAIN,
        VERSION,
        doc,
        inputs=[OpSchema.FormalParameter(name, "T", text) for name, text in inputs],
        outputs=[OpSchema.FormalParameter("Y", "T", "result")],
        type_constraints=[("T", ["tensor(float)"], "float32 tensors")],
        attributes=[OpSchema.Attribute(name, helper.make_attribute(name, default), text)
                    for name, (default, text) in attributes.items()],
    )
    if not onnx.defs.has(op_type, DOMAIN):
        onnx.defs.register_schema(schema)

    def decorate(builder: FunctionBuilder) -> FunctionBuilder:
        _FUNCTIONS[op_type] = builder
        return builder

    return decorate


def op_types() -> list[str]:
    """Every registered afmc op type."""
    return sorted(_FUNCTIONS)


def function_protos(op_types: set[str], opset: int) -> list[FunctionProto]:
    """The function bodies of the given afmc op types, for a model of this opset."""
    if opset < MIN_OPSET:
        raise ValueError(f"afmc functions need ONNX opset >= {MIN_OPSET}, model has {opset}")
    unknown = sorted(op_types - _FUNCTIONS.keys())
    if unknown:
        raise ValueError(f"no afmc function body for op(s): {', '.join(unknown)}")
    return [_FUNCTIONS[name](opset) for name in sorted(op_types)]


def attribute_constant(output: str, attribute: str, kind: str = "float") -> NodeProto:
    """A Constant node whose value is the calling node's attribute `attribute`."""
    value_field, value_type = {
        "float": ("value_float", AttributeProto.FLOAT),
        "ints": ("value_ints", AttributeProto.INTS),
    }[kind]
    node = helper.make_node("Constant", [], [output])
    node.attribute.append(
        helper.make_attribute_ref(value_field, value_type, ref_attr_name=attribute)
    )
    return node


def make_function(
    op_type: str,
    inputs: list[str],
    outputs: list[str],
    nodes: list[NodeProto],
    opset: int,
    defaults: dict[str, float | list[int]],
    doc: str,
) -> FunctionProto:
    """An afmc-domain FunctionProto with default attribute values."""
    return helper.make_function(
        DOMAIN,
        op_type,
        inputs,
        outputs,
        nodes,
        [helper.make_opsetid("", opset)],
        attribute_protos=[helper.make_attribute(k, v) for k, v in defaults.items()],
        doc_string=doc,
    )


def ints_constant(output: str, values: list[int]) -> NodeProto:
    """A Constant int64 1-D tensor."""
    return helper.make_node(
        "Constant", [], [output], value=helper.make_tensor(output, onnx.TensorProto.INT64,
                                                           [len(values)], values)
    )

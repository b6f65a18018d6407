"""ONNX models of one afmc analog linear node, built inline, for the op tests."""

from __future__ import annotations

from collections.abc import Sequence

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

import afmc.ops

OPSET = 20


def analog_linear_model(
    sizes: Sequence[int], out_features: int, rank: int = 2, noisy: bool = False, **attributes
) -> onnx.ModelProto:
    """X -> [SliceInput] -> afmc.(Noisy)AnalogLinear <- [SliceInput] <- W, with input_range R."""
    k = sum(sizes)
    nodes = []
    x_name, w_name = "X", "W"
    if len(set(sizes)) > 1:
        nodes += [
            helper.make_node("SliceInput", ["X"], ["Xs"], domain="afmc", slice_sizes=list(sizes)),
            helper.make_node("SliceInput", ["W"], ["Ws"], domain="afmc", slice_sizes=list(sizes)),
        ]
        x_name, w_name = "Xs", "Ws"
    op_type = "NoisyAnalogLinear" if noisy else "AnalogLinear"
    nodes.append(
        helper.make_node(op_type, [x_name, w_name, "R"], ["Y"], domain="afmc", **attributes)
    )
    lead = [f"d{i}" for i in range(rank - 1)]
    graph = helper.make_graph(
        nodes,
        "analog_linear",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [*lead, k]),
            helper.make_tensor_value_info("W", TensorProto.FLOAT, [out_features, k]),
            helper.make_tensor_value_info("R", TensorProto.FLOAT, [len(sizes)]),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [*lead, out_features])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("afmc", 1)],
        functions=afmc.ops.function_protos({node.op_type for node in nodes}, OPSET),
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def analog_session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )

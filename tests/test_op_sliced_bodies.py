"""The slice-count overloads of AnalogLinear compute what the generic body and the torch op do."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import afmc.ops
from afmc.ops.analog_linear import slice_sizes
from afmc.ops.analog_linear_onnx import sliced_function

OPSET = 20


def _model(k: int, n_out: int, ranges: np.ndarray, weight: np.ndarray, overload: str) -> bytes:
    node = helper.make_node("AnalogLinear", ["X", "W", "R"], ["Y"], domain="afmc",
                            inp_res=254.0, out_res=254.0, out_bound=14.0)
    functions = afmc.ops.function_protos({"AnalogLinear"}, OPSET)
    if overload:
        node.overload = overload
        functions = [sliced_function("AnalogLinear", OPSET, len(ranges))]
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["b", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["b", n_out])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(ranges, "R")])
    model = helper.make_model(graph, functions=functions, ir_version=10, opset_imports=[
        helper.make_opsetid("", OPSET), helper.make_opsetid("afmc", 1)])
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


@pytest.mark.parametrize(("k", "max_in"), [(48, -1), (96, 48), (144, 48)])
def test_overload_matches_generic_body_and_torch(k, max_in):
    torch.manual_seed(k)
    n_out = 24
    sizes = slice_sizes(k, max_in)
    weight = torch.randn(n_out, k) * 0.2
    weight[3] = 0.0  # an all-zero row reads 0, not NaN
    ranges = torch.rand(len(sizes)) + 0.5
    x = torch.randn(32, k)
    expected = torch.ops.afmc.analog_linear(x, weight, ranges, sizes, 254.0, 254.0, 14.0, 0.0)
    step = float(sum((2 * 14 * r * w.abs().amax(1).max() / 254)
                     for r, w in zip(ranges, torch.split(weight, sizes, dim=1), strict=True)))
    outputs = {}
    for overload in ("", f"n{len(sizes)}"):
        session = ort.InferenceSession(_model(k, n_out, ranges.numpy(), weight.numpy(),
                                              overload))
        outputs[overload] = session.run(None, {"X": x.numpy()})[0]
        assert np.abs(outputs[overload] - expected.numpy()).max() <= step
        assert np.all(outputs[overload][:, 3] == 0)
    np.testing.assert_allclose(outputs[""], outputs[f"n{len(sizes)}"], atol=step)
    assert np.mean(np.isclose(outputs[""], outputs[f"n{len(sizes)}"], atol=1e-5)) > 0.99

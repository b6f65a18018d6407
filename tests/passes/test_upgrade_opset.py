"""onnx-upgrade-opset (ONNX only): a model below opset 18 converted, with its graph before
and after and its outputs unchanged; a model at 18 or above left alone."""

from __future__ import annotations

import numpy as np
from analog_models import onnx_graph, op_types, random_weights, run_onnx
from onnx import helper

from afmc.passes.onnx.upgrade_opset import UpgradeOpset, default_opset


def test_upgrade_opset_converts_old_models_only():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    x = rng.standard_normal((3, 8)).astype(np.float32)
    old = onnx_graph(nodes, {"x": [3, 8]}, ["y"], {"w": random_weights(rng, 8, 4)}, opset=13)
    expected = run_onnx(old, {"x": x})[0]
    assert UpgradeOpset()(old).modified
    assert default_opset(old) == 18
    np.testing.assert_allclose(run_onnx(old, {"x": x})[0], expected, rtol=1e-6)
    current = onnx_graph(nodes, {"x": [3, 8]}, ["y"], {"w": np.ones((8, 4))})
    assert not UpgradeOpset()(current).modified


def test_upgrade_opset_moves_an_attribute_that_became_an_input():
    """ReduceMean's axes, an attribute at opset 13, is an input at opset 18: the node reads
    a constant [-1] instead, and the outputs are those of the opset-13 model."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1], keepdims=1),
        helper.make_node("Sub", ["x", "m"], ["c"]),
        helper.make_node("MatMul", ["c", "w"], ["y"]),
    ]
    model = onnx_graph(nodes, {"x": [3, 8]}, ["y"], {"w": random_weights(rng, 8, 4)}, opset=13)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    expected = run_onnx(model, {"x": x})[0]
    (mean,) = [node for node in model.graph if node.op_type == "ReduceMean"]
    assert "axes" in mean.attributes and len(mean.inputs) == 1

    assert UpgradeOpset()(model).modified

    assert default_opset(model) == 18
    assert [op for op in op_types(model) if op != "Constant"] == ["ReduceMean", "Sub", "MatMul"]
    (mean,) = [node for node in model.graph if node.op_type == "ReduceMean"]
    assert "axes" not in mean.attributes and len(mean.inputs) == 2
    producer = mean.inputs[1].producer()
    axes = (producer.attributes["value"].value.numpy() if producer is not None
            else mean.inputs[1].const_value.numpy())
    assert axes.tolist() == [-1]
    np.testing.assert_array_equal(run_onnx(model, {"x": x})[0], expected)

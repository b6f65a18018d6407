"""onnx-place-integer-layers (ONNX only; the integer targets int8 and int4): placement as
onnx-place-layers, but a grouped convolution goes on the integer accelerator as it is
(onnx-place-layers keeps it digital on crossbars, with a warning). A placement is a record
on each layer's node: the graph and its outputs stay as they were."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from analog_models import onnx_graph, random_weights, run_onnx
from onnx import helper

from afmc.config import ConfigError, load_config
from afmc.passes.onnx.place_layers import (
    PLACEMENT_PROP,
    GroupedConvolutionWarning,
    PlaceOnnxIntegerLayers,
    PlaceOnnxLayers,
)
from afmc.passes.onnx.static_layers import onnx_layer_records
from afmc.targets import get_target


def _depthwise_net():
    """A depthwise 3x3 Conv (group 2) -> a pointwise Conv -> Relu, and an input."""
    rng = np.random.default_rng(4)
    model = onnx_graph(
        [
            helper.make_node("Conv", ["img", "wd"], ["d"], name="depthwise", group=2,
                             pads=[1, 1, 1, 1]),
            helper.make_node("Conv", ["d", "wp"], ["p"], name="pointwise"),
            helper.make_node("Relu", ["p"], ["y"]),
        ],
        {"img": [1, 2, 5, 5]},
        ["y"],
        {"wd": random_weights(rng, 2, 1, 3, 3), "wp": random_weights(rng, 3, 2, 1, 1)},
    )
    return model, {"img": rng.uniform(-1, 1, (1, 2, 5, 5)).astype(np.float32)}


def test_integer_placement_puts_grouped_convolutions_on_the_accelerator():
    assert "onnx-place-integer-layers" in get_target("int8").onnx_passes
    model, feed = _depthwise_net()
    expected = run_onnx(model, feed)[0]
    before = [(node.name, node.op_type) for node in model.graph]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no GroupedConvolutionWarning here

        assert PlaceOnnxIntegerLayers(load_config(None, []))(model).modified

    assert [(node.name, node.op_type) for node in model.graph] == before
    records = {record.name: record for record in onnx_layer_records(model)}
    assert {name: (r.placement, r.in_features, r.out_features, r.groups)
            for name, r in records.items()} == {"depthwise": ("analog", 9, 2, 1),
                                                "pointwise": ("analog", 2, 3, 1)}
    assert all(r.rule.startswith("default") for r in records.values())
    assert model.graph.node("depthwise").metadata_props[PLACEMENT_PROP] == "analog"
    np.testing.assert_array_equal(run_onnx(model, feed)[0], expected)

    crossbars, _ = _depthwise_net()  # the crossbar placement of the same graph, for contrast
    with pytest.warns(GroupedConvolutionWarning, match="1 grouped convolution"):
        PlaceOnnxLayers(load_config(None, []))(crossbars)
    depthwise = next(r for r in onnx_layer_records(crossbars) if r.name == "depthwise")
    assert depthwise.placement == "digital" and "group=2" in depthwise.rule


def test_integer_placement_follows_the_rules():
    model, _ = _depthwise_net()
    config = load_config(None, ['placement.digital=["^point"]'])
    PlaceOnnxIntegerLayers(config)(model)
    placements = {record.name: record.placement for record in onnx_layer_records(model)}
    assert placements == {"depthwise": "analog", "pointwise": "digital"}
    with pytest.raises(ConfigError, match=r"'nothing' -> digital\) matches no layer"):
        PlaceOnnxIntegerLayers(load_config(None, ['placement.digital=["nothing"]']))(
            _depthwise_net()[0])

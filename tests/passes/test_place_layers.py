"""place-layers (FX) and onnx-place-layers (ONNX): ordered rules by name, regex and op
type; first match wins; unused rules fail; layers afmc cannot map stay digital. A
placement is a record on each layer's node: the graph and its outputs stay as they were.
(onnx-place-integer-layers: test_place_integer_layers.py.)"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch
from analog_models import (
    LayerNormMLP,
    mlp_batches,
    onnx_graph,
    op_types,
    random_weights,
    run_onnx,
)
from onnx import helper

import afmc.api
from afmc.capture import capture_module
from afmc.config import ConfigError, config_from_dict, load_config
from afmc.passes.fx.place_layers import PlaceLayers
from afmc.passes.layers import META_KEY
from afmc.passes.onnx.place_layers import LAYER_PROP, PLACEMENT_PROP, PlaceOnnxLayers
from afmc.passes.onnx.static_layers import UnsupportedLayerWarning, onnx_layer_records

AIMC_PLACE = ["place-layers"]


def _placements(model_dir, placement: dict) -> dict[str, tuple[str, str]]:
    config = config_from_dict({"placement": placement})
    result = afmc.api.compile(str(model_dir), "aimc", config, passes=AIMC_PLACE)
    return {layer.name: (layer.placement, layer.rule) for layer in result.layers}


# ------------------------------------------------------------------ FX: place-layers


def test_place_layers_records_each_layer_and_leaves_the_graph():
    """A record per static-weight layer (the default rule, or the first rule that matches),
    on the graph's own nodes: its code and its outputs are unchanged."""
    torch.manual_seed(0)
    x = mlp_batches(1)[0]
    program = capture_module(LayerNormMLP().eval(), (x,)).graph_module
    before = program.graph.python_code("self").src
    with torch.no_grad():
        expected = program(x)
    config = config_from_dict({"placement": {"rules": [{"regex": "^fc2$", "place": "digital"}]}})

    assert PlaceLayers(config)(program).modified

    assert program.graph.python_code("self").src == before
    records = {node.meta[META_KEY].name: node.meta[META_KEY] for node in program.graph.nodes
               if META_KEY in node.meta}
    assert list(records) == ["fc1", "fc2"]
    fc1, fc2 = records["fc1"], records["fc2"]
    assert (fc1.placement, fc1.in_features, fc1.out_features, fc1.weight) == (
        "analog", 20, 36, "fc1.weight")
    assert fc1.rule.startswith("default")
    assert (fc2.placement, fc2.rule) == ("digital", "placement.rules[0] (regex '^fc2$' -> digital)")
    assert not fc1.slice_sizes and not fc1.input_range, "no analog op yet"
    with torch.no_grad():
        assert torch.equal(program(x), expected)


@pytest.mark.slow
def test_default_is_all_analog_including_the_lm_head(model_dirs):
    placed = _placements(model_dirs["llama"], {})
    assert placed and all(place == "analog" for place, _ in placed.values())
    assert any(name.endswith("lm_head") for name in placed)


@pytest.mark.slow
def test_lm_head_flag(model_dirs):
    placed = _placements(model_dirs["llama"], {"lm_head": "digital"})
    digital = [name for name, (place, _) in placed.items() if place == "digital"]
    assert digital == ["lm.lm_head"]
    assert placed["lm.lm_head"][1].startswith("placement.lm_head")


@pytest.mark.slow
def test_rules_in_order_first_match_wins(model_dirs):
    placed = _placements(model_dirs["llama"], {"rules": [
        {"name": "lm.model.layers.0.mlp.down_proj", "place": "analog"},
        {"regex": r"mlp\.", "place": "digital"},
        {"regex": r"self_attn", "place": "analog"},
    ]})
    assert placed["lm.model.layers.0.mlp.down_proj"][0] == "analog"
    assert placed["lm.model.layers.1.mlp.down_proj"][0] == "digital"  # rule 1 before rule 2
    assert placed["lm.model.layers.1.mlp.up_proj"][0] == "digital"
    assert placed["lm.model.layers.1.self_attn.q_proj"][0] == "analog"
    assert "placement.rules[1]" in placed["lm.model.layers.1.mlp.up_proj"][1]
    assert "placement.rules[2]" in placed["lm.model.layers.1.self_attn.q_proj"][1]


@pytest.mark.slow
def test_a_rule_shadowed_by_an_earlier_one_is_an_error(model_dirs):
    with pytest.raises(ConfigError, match=r"placement.rules\[1\] \(regex 'down_proj'"):
        _placements(model_dirs["llama"], {"rules": [{"regex": r"mlp\.", "place": "digital"},
                                                    {"regex": "down_proj", "place": "analog"}]})


@pytest.mark.slow
def test_op_type_rule(model_dirs):
    placed = _placements(model_dirs["gpt2"], {"rules": [{"op": "addmm", "place": "digital"}]})
    assert placed["lm.lm_head"][0] == "analog"  # GPT-2's head is aten.linear
    assert all(place == "digital" for name, (place, _) in placed.items() if ".h." in name)


@pytest.mark.slow
def test_a_rule_matching_nothing_is_an_error_naming_it(model_dirs):
    with pytest.raises(ConfigError, match=r"placement.rules\[0\] \(op 'conv' -> digital\)"):
        _placements(model_dirs["llama"], {"rules": [{"op": "conv", "place": "digital"}]})


def test_a_rule_needs_exactly_one_selector():
    with pytest.raises(ConfigError, match="placement.rules.0"):
        config_from_dict({"placement": {"rules": [{"regex": "a", "op": "b",
                                                   "place": "digital"}]}})


# ------------------------------------------------------------------ ONNX: onnx-place-layers


def _placement_model() -> ir.Model:
    rng = np.random.default_rng(5)
    model = onnx_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="enc/fc"),
            helper.make_node("Transpose", ["h"], ["ht"], perm=[1, 0]),
            helper.make_node("MatMul", ["h", "ht"], ["scores"], name="attention"),
            helper.make_node("Gemm", ["h", "w2"], ["g"], name="head", transB=1),
            helper.make_node("Conv", ["img", "wc"], ["c"], name="depthwise", group=2),
            helper.make_node("DequantizeLinear", ["q", "scale"], ["wq"]),
            helper.make_node("MatMul", ["x", "wq"], ["z"], name="quantized"),
        ],
        {"x": [2, 8], "img": [1, 2, 5, 5]},
        ["scores", "g", "c", "z"],
        {
            "w1": random_weights(rng, 8, 8),
            "w2": random_weights(rng, 3, 8),
            "wc": random_weights(rng, 2, 1, 3, 3),
            "scale": np.float32(0.1),
            "q": np.ones((8, 4), np.int8),
        },
    )
    fc = model.graph.node("enc/fc")
    fc.metadata_props["pkg.torch.onnx.name_scopes"] = "['', 'enc', 'enc.fc', 'linear']"
    return model


def test_place_layers_rules_and_unsupported_layers():
    model = _placement_model()
    config = load_config(None, ['placement.digital=["^head$"]'])
    with pytest.warns(UnsupportedLayerWarning) as caught:
        assert PlaceOnnxLayers(config)(model).modified
    records = {record.name: record for record in onnx_layer_records(model)}
    assert list(records) == ["enc.fc", "head", "depthwise", "quantized"], "attention is no layer"
    assert records["enc.fc"].placement == "analog"
    assert (records["enc.fc"].in_features, records["enc.fc"].out_features) == (8, 8)
    assert (records["head"].placement, records["head"].rule) == (
        "digital", "placement.digital[0] (regex '^head$' -> digital)")
    assert records["depthwise"].placement == "digital" and "group=2" in records["depthwise"].rule
    assert "DequantizeLinear" in records["quantized"].rule
    assert len(caught) == 2
    assert model.graph.node("enc/fc").metadata_props["afmc.placement"] == "analog"
    no_match = pytest.raises(ConfigError, match=r"'nothing' -> digital\) matches no layer")
    with no_match, pytest.warns(UnsupportedLayerWarning):
        PlaceOnnxLayers(load_config(None, ['placement.digital=["nothing"]']))(_placement_model())


def test_onnx_place_layers_marks_the_nodes_and_leaves_the_graph():
    """A record and two metadata props per layer (a rule may name the weight initializer);
    the nodes, their order and the outputs are those of the unplaced model."""
    rng = np.random.default_rng(8)
    model = onnx_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["a"]),
            helper.make_node("Gemm", ["a", "w2", "c"], ["y"], name="fc2", transB=1),
        ],
        {"x": [3, 8]},
        ["y"],
        {"w1": random_weights(rng, 8, 6), "w2": random_weights(rng, 4, 6),
         "c": rng.standard_normal(4)},
    )
    x = {"x": rng.standard_normal((3, 8)).astype(np.float32)}
    expected = run_onnx(model, x)[0]
    before = [(node.name, node.op_type) for node in model.graph]
    initializers = sorted(model.graph.initializers)

    assert PlaceOnnxLayers(load_config(None, ['placement.digital=["^w2$"]']))(model).modified

    assert [(node.name, node.op_type) for node in model.graph] == before
    assert op_types(model) == ["MatMul", "Relu", "Gemm"]
    assert sorted(model.graph.initializers) == initializers
    records = {record.name: record for record in onnx_layer_records(model)}
    assert [(name, r.placement, r.in_features, r.out_features) for name, r in records.items()] \
        == [("fc1", "analog", 8, 6), ("fc2", "digital", 6, 4)]
    assert records["fc2"].rule == "placement.digital[0] (regex '^w2$' -> digital)"
    for node in model.graph:
        if node.op_type != "Relu":
            assert node.metadata_props[LAYER_PROP] == node.name
            assert node.metadata_props[PLACEMENT_PROP] == records[node.name].placement
    np.testing.assert_array_equal(run_onnx(model, x)[0], expected)

"""Placement: ordered rules by name, regex and op type; first match wins; unused rules fail."""

from __future__ import annotations

import pytest

import afmc.api
from afmc.config import ConfigError, config_from_dict

AIMC_PLACE = ["place-layers"]


def _placements(model_dir, placement: dict) -> dict[str, tuple[str, str]]:
    config = config_from_dict({"placement": placement})
    result = afmc.api.compile(str(model_dir), "aimc", config, passes=AIMC_PLACE)
    return {layer.name: (layer.placement, layer.rule) for layer in result.layers}


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

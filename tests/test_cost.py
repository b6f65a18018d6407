"""The cost model (afmc.cost, docs/cost.md): a hand calculation on a compiled two-layer
model, re-slicing onto a smaller tile, the pipelining rules, the built-in profiles, and
one-line errors for bad profiles."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from typer.testing import CliRunner

from afmc.cli import app
from afmc.config import ConfigError, load_config
from afmc.cost import (
    builtin_profiles,
    cost_summary,
    estimate,
    estimate_record,
    load_profile,
)
from afmc.cost.profile import parse_profile

HAND = {
    "name": "hand", "kind": "analog", "clock_ghz": 1.0, "pipelining": "dataflow",
    "tile": {"rows": 64, "cols": 32, "area_mm2": 0.5}, "cores": 4,
    "adc": {"energy_pj": 2.0, "time_ns": 10.0}, "dac": {"energy_pj": 0.5, "time_ns": 5.0},
    "crossbar": {"energy_pj_per_mac": 0.01},
    "digital": {"mac_energy_pj": 0.25, "macs_per_cycle": 4, "weight_bits": 8},
    "memory": {"energy_pj_per_byte": 3.0, "bytes_per_cycle": 2},
}


def _profile(**changes):
    data = json.loads(json.dumps(HAND))
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        target = data
        for key in path:
            target = target[key]
        target[last] = value
    return parse_profile(yaml.safe_dump(data), "test profile")


@pytest.fixture(scope="module")
def two_layers(tmp_path_factory):
    """Linear(96 -> 48), ReLU, Linear(48 -> 8) compiled for aimc on 64 x 32 tiles, slices
    of at most 40 inputs: [32, 32, 32] and [24, 24]."""
    from afmc.api import compile as afmc_compile

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(96, 48), torch.nn.ReLU(),
                                 torch.nn.Linear(48, 8)).eval()
    x = torch.randn(16, 96)
    config = load_config(None, ["hardware.max_in=40", "hardware.tile_rows=64",
                                "hardware.tile_cols=32"])
    out = tmp_path_factory.mktemp("cost") / "two"
    afmc_compile(module, "aimc", config, example_inputs=(x,), calibration=[(x,)], output=out)
    return out


def _record(out):
    return json.loads((out / "afmc.json").read_text())


def test_hand_calculation_on_two_layers(two_layers):
    record = _record(two_layers)
    first, second = record["layers"]
    assert (first["slice_sizes"], second["slice_sizes"]) == ([32, 32, 32], [24, 24])
    o1, o2 = first["outlier_weights"], second["outlier_weights"]
    assert o2 > 0, "the sparse path should be exercised"
    report = estimate(two_layers, _profile())
    a, b = report.layers
    # layer 0: [48 out, 96 in], 3 slices x ceil(48/32) = 2 column chunks = 6 tiles
    assert (a.analog_macs, a.dac_conversions, a.adc_conversions, a.tiles) == (
        48 * 96, 96 * 2, 48 * 3, 6)
    # layer 2: [8 out, 48 in], 2 slices x 1 chunk = 2 tiles
    assert (b.analog_macs, b.dac_conversions, b.adc_conversions, b.tiles) == (
        8 * 48, 48 * 1, 8 * 2, 2)
    assert (a.digital_macs, b.digital_macs) == (o1, o2)
    assert b.memory_bytes == o2 * (1 + 2)  # int8 value + 16-bit index
    sparse = 0.25 + 3 * 3.0  # per outlier: its MAC and its 3 bytes
    assert a.total_energy_pj == pytest.approx(144 * 2.0 + 192 * 0.5 + 4608 * 0.01 + o1 * sparse)
    assert b.total_energy_pj == pytest.approx(16 * 2.0 + 48 * 0.5 + 384 * 0.01 + o2 * sparse)
    # one tile read (5 + 10 ns) beside the sparse path: max(MACs / 4, bytes / 2) cycles
    assert a.time_ns == pytest.approx(max(15.0, o1 / 4, 3 * o1 / 2))
    assert b.time_ns == pytest.approx(max(15.0, o2 / 4, 3 * o2 / 2))
    assert report.latency_ns == pytest.approx(a.time_ns + b.time_ns)  # layer 2 reads layer 0
    assert (report.tiles, report.chips, report.area_mm2) == (8, 2, 4.0)
    assert report.energy_pj == pytest.approx(a.total_energy_pj + b.total_energy_pj)
    assert report.resliced == []


def test_digital_profile_counts_every_layer_as_digital(two_layers):
    digital = {key: value for key, value in HAND.items()
               if key not in ("tile", "cores", "adc", "dac", "crossbar")}
    digital.update(kind="digital", pipelining="sequential",
                   digital={"mac_energy_pj": 0.25, "macs_per_cycle": 4, "weight_bits": 4})
    report = estimate(two_layers, parse_profile(yaml.safe_dump(digital), "digital"))
    assert report.total("digital_macs") == 4608 + 384
    assert report.total("memory_bytes") == (4608 + 384) / 2
    assert report.energy_pj == pytest.approx(4992 * 0.25 + 2496 * 3.0)
    assert report.latency_ns == pytest.approx(max(4608 / 4, 2304 / 2) + max(384 / 4, 192 / 2))
    assert (report.tiles, report.chips, report.area_mm2, report.total("analog_macs")) == (
        0, 0, None, 0)


def test_slices_taller_than_the_profiles_tile_are_recut(two_layers):
    report = estimate(two_layers, _profile(tile__rows=16))
    assert report.resliced == ["0", "2"]
    a, b = report.layers
    assert (a.slices, b.slices) == (6, 3)
    assert (a.adc_conversions, b.adc_conversions) == (48 * 6, 8 * 3)
    assert report.tiles == 6 * 2 + 3 * 1


def _three_layer_record(strategy="one-per-tile"):
    layer = {"placement": "analog", "in_features": 32, "out_features": 32,
             "slice_sizes": [32], "outlier_weights": 0}
    return {"config": {"hardware": {"tile_strategy": strategy, "devices_per_weight": 1}},
            "layers": [{**layer, "name": name} for name in ("a", "b", "c")],
            "dependencies": [["a", "c"], ["b", "c"]]}


def test_dataflow_runs_independent_layers_at_once():
    record = _three_layer_record()
    assert estimate_record(record, _profile()).latency_ns == pytest.approx(2 * 15.0)
    sequential = estimate_record(record, _profile(pipelining="sequential"))
    assert sequential.latency_ns == pytest.approx(3 * 15.0)


def test_packed_blocks_of_a_layer_on_one_tile_read_one_after_another():
    record = _three_layer_record("packed")
    record["layers"] = [{**record["layers"][0], "in_features": 64, "slice_sizes": [16] * 4,
                         "out_features": 8}]
    report = estimate_record(record, _profile())
    assert report.tiles == 1
    assert report.latency_ns == pytest.approx(4 * 15.0)


@pytest.mark.parametrize("name", builtin_profiles())
def test_builtin_profile_loads_and_cites_every_number(name):
    profile = load_profile(name)
    assert profile.name == name
    uncited = [field for field in profile.numeric_fields() if field not in profile.sources]
    assert not uncited, f"{name}: no source for {uncited}"


@pytest.mark.parametrize(("name", "tops_per_watt", "tops_per_core"), [
    ("ibm-pcm-64core", 9.76, 63.1 / 64),  # Le Gallo et al. 2023
    ("ibm-hermes-core", 10.5, None),  # Khaddam-Aljameh et al. 2022
])
def test_analog_profiles_reproduce_their_papers_figures(name, tops_per_watt, tops_per_core):
    profile = load_profile(name)
    ops = 2 * profile.tile.rows * profile.tile.cols  # one full-tile MVM
    energy = profile.tile.cols * profile.adc.energy_pj + profile.tile.rows * (
        profile.dac.energy_pj) + ops / 2 * profile.crossbar.energy_pj_per_mac
    assert ops / energy == pytest.approx(tops_per_watt, rel=1e-3)  # ops/pJ = TOPS/W
    throughput = ops / profile.tile_read_ns / 1e3  # TOPS
    if tops_per_core is not None:
        assert throughput == pytest.approx(tops_per_core, rel=1e-3)
    assert throughput / profile.tile.area_mm2 == pytest.approx(1.59, rel=1e-2)


def test_summary_and_ratio_against_the_baseline(two_layers):
    summary = cost_summary(_record(two_layers))
    assert set(summary["profiles"]) == set(builtin_profiles())
    ratio = summary["ratios"]["ibm-pcm-64core"]
    int8 = next(entry for entry in ratio if entry["baseline"] == "digital-int8")
    totals = summary["profiles"]
    assert int8["energy_ratio"] == pytest.approx(
        totals["digital-int8"]["energy_pj"] / totals["ibm-pcm-64core"]["energy_pj"])
    assert int8["energy_ratio"] > 1


@pytest.mark.parametrize(("change", "field"), [
    ({"adc__energy_pj": -1.0}, "adc.energy_pj"),
    ({"memory__energy_pj_per_byte": -0.1}, "memory.energy_pj_per_byte"),
    ({"tile__rows": 0}, "tile.rows"),
    ({"clock_ghz": "fast"}, "clock_ghz"),
    ({"adc__voltage": 1.0}, "adc.voltage"),
])
def test_bad_field_is_an_error_naming_it(change, field):
    with pytest.raises(ConfigError, match=f"test profile: {field}: "):
        _profile(**change)


def test_missing_fields_are_named():
    data = json.loads(json.dumps(HAND))
    del data["dac"]["time_ns"]
    with pytest.raises(ConfigError, match="dac.time_ns: Field required"):
        parse_profile(yaml.safe_dump(data), "p")
    data["dac"]["time_ns"] = 5.0
    del data["crossbar"]
    with pytest.raises(ConfigError, match="p: crossbar: required for an analog profile"):
        parse_profile(yaml.safe_dump(data), "p")


def _cli(*args):
    return CliRunner().invoke(app, ["cost", *map(str, args)])


def test_cli_errors_are_one_line(two_layers, tmp_path):
    result = _cli(two_layers, "--profile", "no-such-profile")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: unknown hardware profile 'no-such-profile' (built in: "
        f"{', '.join(builtin_profiles())}; or a YAML file)"]
    bad = tmp_path / "bad.yaml"
    data = json.loads(json.dumps(HAND))
    data["adc"]["energy_pj"] = -2
    bad.write_text(yaml.safe_dump(data))
    result = _cli(two_layers, "--profile", bad)
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"error: {bad}: adc.energy_pj: ")


def test_cli_prints_the_table_and_json(two_layers, tmp_path):
    result = _cli(two_layers, "--profile", "ibm-pcm-64core")
    assert result.exit_code == 0, result.output
    assert "less energy" in result.output and "against digital-int8" in result.output
    hand = tmp_path / "hand.yaml"
    hand.write_text(yaml.safe_dump(HAND))
    result = _cli(two_layers, "--profile", hand, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    report = estimate(two_layers, _profile())
    assert data["totals"]["energy_pj"] == pytest.approx(report.energy_pj)
    assert data["comparison"]["baseline"] == "digital-int8"
    assert math.isclose(data["totals"]["latency_ns"], report.latency_ns)


def test_report_prints_the_cost_per_token(two_layers):
    """afmc report: the default analog profile's totals and the ratio to int8."""
    result = CliRunner().invoke(app, ["report", str(two_layers)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    report = estimate(two_layers, load_profile("ibm-pcm-64core"))
    assert f"ibm-pcm-64core: {report.energy_pj / 1e6:,.3f} uJ" in result.output
    assert "against digital-int8" in result.output

"""What a new user meets first: tables that fit 80 columns (no "…", every layer name whole
after the stated prefix), --json beside every table, an example in every --help,
`afmc targets --passes`, `afmc config show` (loads back with --config) and
`afmc compile --dry-run` (the compile's placement and tiles, nothing written)."""

from __future__ import annotations

import io
import json
import re
import shutil

import pytest
from rich.console import Console
from typer.testing import CliRunner

from afmc.cli import app
from afmc.config import AfmcConfig, load_config
from afmc.console.tables import layer_names
from afmc.eval.sensitivity import (
    CumulativePoint,
    LayerSensitivity,
    SensitivityReport,
    ranking_table,
)
from afmc.passes import PASSES
from afmc.targets import TARGETS

runner = CliRunner()
NARROW = {"COLUMNS": "80"}
COMMANDS = ([], ["compile"], ["run"], ["train"], ["eval"], ["generate"], ["synth"], ["report"],
            ["cost"], ["targets"], ["passes"], ["passes", "list"], ["config"],
            ["config", "show"])


def _invoke(*args: object):
    return runner.invoke(app, [str(arg) for arg in args], env=NARROW)


def _shown(text: str, names: list[str]) -> None:
    """No cut text, and every layer name whole, or its remainder after the stated prefix."""
    assert "…" not in text
    found = re.search(r"the prefix (\S+) is left out", text)
    prefix = found.group(1) if found else ""
    for name in names:
        short = name[len(prefix):] if prefix and name.startswith(prefix) else name
        assert re.search(rf"(^|\s){re.escape(short)}(\s|$)", text, re.M), name


@pytest.mark.parametrize("command", COMMANDS, ids=lambda words: " ".join(words) or "afmc")
def test_every_help_has_an_example_and_fits_80_columns(command):
    result = _invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example: afmc " in result.stdout
    assert "…" not in result.stdout


def test_layer_names_drop_the_prefix_most_share():
    names = [f"lm.model.layers.{i}.mlp.{p}" for i in range(3) for p in ("up", "down")]
    shown = layer_names([*names, "lm.lm_head"])
    assert shown.prefix == "lm.model.layers."
    assert shown.show(names[0]) == "0.mlp.up" and shown.show("lm.lm_head") == "lm.lm_head"
    assert layer_names(["a.b.x", "c.d.x"]).prefix == ""
    assert layer_names(["model.layers.0", "model.0", "0"]).prefix == ""  # "0" would repeat


def test_passes_and_targets_fit_and_print_json():
    listed = _invoke("passes", "list")
    _shown(listed.stdout, list(PASSES))
    data = json.loads(_invoke("passes", "list", "--json").stdout)
    assert [each["name"] for each in data] == list(PASSES)
    with_passes = _invoke("targets", "--passes")
    assert with_passes.exit_code == 0 and "…" not in with_passes.stdout
    for target in TARGETS.values():
        assert f"{target.name}: " in with_passes.stdout
        for name in target.fx_passes:
            assert name in with_passes.stdout
    targets = json.loads(_invoke("targets", "--passes", "--json").stdout)
    aimc = next(each for each in targets if each["name"] == "aimc")
    assert [step["name"] for step in aimc["passes"]["model"]] == list(TARGETS["aimc"].fx_passes)
    assert aimc["passes"]["model"][0]["summary"] == PASSES["fold-batchnorm"].summary
    assert json.loads(_invoke("targets", "--json").stdout)[0]["name"] == "aimc"


@pytest.mark.parametrize("target", [None, *TARGETS])
def test_config_show_loads_back_as_the_defaults(target, tmp_path):
    result = _invoke("config", "show", *(("--target", target) if target else ()))
    assert result.exit_code == 0, result.output
    path = tmp_path / "afmc.yaml"
    path.write_text(result.stdout)
    assert load_config(path) == AfmcConfig()
    assert ("training:" in result.stdout) == (target is None)


def test_config_show_unknown_target_is_one_error_line():
    result = _invoke("config", "show", "--target", "nope")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: unknown target 'nope' (known: aimc, int8, int4, fp)"]


def test_compile_without_output_needs_dry_run(tmp_path):
    result = _invoke("compile", "afmc-tiny")
    assert result.exit_code == 1 and result.stderr.startswith("error: missing option --output")


def test_report_and_cost_fit_80_columns(compiled_tiny, tmp_path):
    out = tmp_path / "tiny"
    shutil.copytree(compiled_tiny.output, out)
    names = [layer["name"] for layer in compiled_tiny.record["layers"]]
    report = _invoke("report", out)
    assert report.exit_code == 0, report.output
    _shown(report.stdout, names)
    data = json.loads(_invoke("report", out, "--json").stdout)
    assert [layer["name"] for layer in data["layers"]] == names
    assert data["total"]["tiles"] == compiled_tiny.record["summary"]["tiles"]
    assert data["cost"]["comparison"]["baseline"] == "digital-int8"
    cost = _invoke("cost", out)
    assert cost.exit_code == 0, cost.output
    _shown(cost.stdout, names)
    assert "total" in cost.stdout and "time ns" in cost.stdout


def test_dry_run_plans_the_compiles_tiles_and_writes_nothing(compiled_tiny, tmp_path):
    config = tmp_path / "afmc.yaml"
    config.write_text(_invoke("config", "show").stdout)
    out = tmp_path / "never"
    result = _invoke("compile", "afmc-tiny", "--dry-run", "-o", out, "--config", config)
    assert result.exit_code == 0, result.output
    assert not out.exists()
    _shown(result.stdout, [layer["name"] for layer in compiled_tiny.record["layers"]])
    summary = compiled_tiny.record["summary"]
    assert f"one-per-tile {summary['tiles_by_strategy']['one-per-tile']}" in result.stdout
    assert "run for the plan: fold-batchnorm, fold-norms, place-layers" in result.stdout


def test_sensitivity_ranking_fits_80_columns():
    names = [f"lm.model.layers.{i}.self_attn.{p}_proj" for i in range(4) for p in "qkvo"]
    report = SensitivityReport(
        "perplexity", 0, 12.3, [LayerSensitivity(name, 31.2, 0.0123, 12.3456, 0.0456)
                                for name in names],
        [CumulativePoint(i + 1, name, 12.5 + i) for i, name in enumerate(names)],
        budget=0.01, keep_digital=names[-2:])
    stream = io.StringIO()
    Console(file=stream, width=80).print(ranking_table(report))
    text = stream.getvalue()
    _shown(text, names)
    assert "cumulative" in text and "place" in text
    assert max(len(line) for line in text.splitlines()) <= 80

"""The command line: a full compile/run/eval round trip, and bad input.

Bad input (missing model directory, corrupt config, unknown target, empty
calibration file, existing output) must give a one-line error, exit code 1, and
leave no output directory behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from afmc.cli import app

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _quiet(*args: str):
    """afmc -q: no progress lines, which a slow machine prints after 5 s, beside the error."""
    return _invoke("-q", *args)


def _assert_user_error(result, needle: str, out: Path) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert needle in lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.mark.slow
def test_compile_run_eval_round_trip(model_dirs, calibration_text, tmp_path):
    out = tmp_path / "out"
    result = _invoke("compile", model_dirs["qwen2"], "-o", out, "--calib", calibration_text,
                     "--set", "hardware.max_in=32", "--digital", "lm_head")
    assert result.exit_code == 0, result.output
    assert (out / "model.onnx").is_file() and (out / "afmc.json").is_file()
    assert "analog layers" in result.stdout and "1 digital" in result.stdout
    result = _invoke("run", out, "--text", calibration_text, "--seed", "1")
    assert result.exit_code == 0, result.output
    assert "next token" in result.stdout and "perplexity" in result.stdout
    result = _invoke("eval", out, "--text", calibration_text, "--seeds", "2", "--seq-len", "64")
    assert result.exit_code == 0, result.output
    assert "FP perplexity" in result.stdout and "seed 1" in result.stdout
    again = _invoke("compile", model_dirs["qwen2"], "-o", out, "--calib", calibration_text)
    assert again.exit_code == 1 and "--force" in again.stderr


def test_missing_model_directory(tmp_path):
    out = tmp_path / "out"
    _assert_user_error(_quiet("compile", tmp_path / "nope", "-o", out), "not found", out)


def test_corrupt_config_file(model_dirs, calibration_text, tmp_path):
    out = tmp_path / "out"
    bad = tmp_path / "bad.yaml"
    bad.write_text("hardware: [unclosed\n")
    _assert_user_error(_quiet("compile", model_dirs["llama"], "-o", out, "--config", bad,
                               "--calib", calibration_text), "bad.yaml", out)


@pytest.mark.parametrize(("content", "field"), [
    ("hardware:\n  out_bound: -3\n", "hardware.out_bound"),
    ("hardware:\n  inp_res: 255\n", "hardware.inp_res"),
    ("hardware:\n  max_in: 0\n", "hardware.max_in"),
    ("hardwre:\n  max_in: 64\n", "hardwre"),
    ("noise:\n  model: gaussian\n", "noise.model"),
])
def test_invalid_config_value_names_the_field(content, field, model_dirs, tmp_path):
    out = tmp_path / "out"
    config = tmp_path / "config.yaml"
    config.write_text(content)
    _assert_user_error(_quiet("compile", model_dirs["llama"], "-o", out, "--config", config),
                       field, out)


def test_bad_override_names_the_field(model_dirs, tmp_path):
    out = tmp_path / "out"
    _assert_user_error(_quiet("compile", model_dirs["llama"], "-o", out,
                               "--set", "hardware.out_res=-2"), "hardware.out_res", out)


def test_unknown_target(model_dirs, tmp_path):
    out = tmp_path / "out"
    _assert_user_error(_quiet("compile", model_dirs["llama"], "-o", out, "--target", "tpu"),
                       "unknown target 'tpu'", out)


def test_empty_calibration_file(model_dirs, tmp_path):
    out = tmp_path / "out"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _assert_user_error(_quiet("compile", model_dirs["llama"], "-o", out, "--calib", empty),
                       "empty", out)


def test_digital_pattern_matching_nothing(model_dirs, calibration_text, tmp_path):
    out = tmp_path / "out"
    _assert_user_error(_quiet("compile", model_dirs["llama"], "-o", out, "--calib",
                               calibration_text, "--digital", "no_such_layer"),
                       "no_such_layer", out)


def test_eval_on_a_directory_that_is_not_compiled(tmp_path):
    result = _invoke("eval", tmp_path, "--text", "stdlib:heldout")
    assert result.exit_code == 1 and "not a compiled afmc model" in result.stderr


def test_passes_and_targets_are_listed():
    result = _invoke("passes", "list")
    assert result.exit_code == 0
    for name in ("place-layers", "insert-analog-linear", "calibrate"):
        assert name in result.stdout
    assert "aimc" in _invoke("targets").stdout


@pytest.mark.slow
def test_report_prints_tiles_and_writes_svg(model_dirs, calibration_text, tmp_path):
    out = tmp_path / "out"
    result = _invoke("compile", model_dirs["llama"], "-o", out, "--calib", calibration_text,
                     "--set", "hardware.tile_strategy=packed", "--set", "hardware.tile_rows=64",
                     "--set", "hardware.tile_cols=64", "--set", "hardware.max_in=64")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "afmc.json").read_text())
    analog = [layer for layer in record["layers"] if layer["placement"] == "analog"]
    used = {tile for layer in analog for tile in layer["tile_ids"]}
    assert all(layer["tile_ids"] for layer in analog)
    assert used == set(range(record["summary"]["tiles"]))
    assert record["summary"]["tiles"] < record["summary"]["tiles_by_strategy"]["one-per-tile"]
    result = _invoke("report", out)
    assert result.exit_code == 0, result.output
    assert "packed" in result.stdout and "one-per-tile" in result.stdout
    assert (out / "tile_map.svg").read_text().startswith("<svg") or \
        "<svg" in (out / "tile_map.svg").read_text()[:200]


def test_max_in_larger_than_tile_rows_is_rejected(model_dirs, tmp_path):
    out = tmp_path / "out"
    _assert_user_error(_quiet("compile", model_dirs["llama"], "-o", out,
                               "--set", "hardware.max_in=1024"), "tile_rows", out)


def test_version_prints_the_installed_version_and_exits():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"afmc {version('afmc')}"

"""Results last: every afmc eval mode writes a result file to OUT/eval named by its
settings (afmc.eval.results), so that runs with different settings sit side by side,
and afmc report shows every one of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import afmc
from afmc.cli import app
from afmc.eval.results import result_files, result_kind, result_name, write_result
from afmc.io.layout import EVAL_DIR

runner = CliRunner()


def _eval(*args: object):
    return runner.invoke(app, ["eval", *map(str, args)])


def test_a_name_carries_the_kind_the_label_and_a_hash_of_every_setting():
    settings = {"data": "x.npz", "seeds": 5, "noise": {"model": "pcm"}}
    name = result_name("seeds", ["pcm", "n5"], settings)
    assert name.startswith("seeds-pcm-n5-") and name.endswith(".json")
    assert result_name("seeds", ["pcm", "n5"], dict(reversed(settings.items()))) == name
    assert result_name("seeds", ["pcm", "n5"], {**settings, "data": "y.npz"}) != name
    assert result_name("test_time_compute", ["my task/1", "s8"], settings).startswith(
        "test_time_compute-my_task_1-s8-")
    assert result_kind(Path(name)) == "seeds"
    assert result_kind(Path("drift.json")) == "drift"  # written before issue 23
    assert result_kind(Path("drift.jsonl")) is None
    assert result_kind(Path("mine.json")) is None


def _drift(fp: float) -> dict:
    """A drift result of one chip at one time (the fields its schema asks for)."""
    return {"metric": "perplexity", "noise": {"model": "pcm"}, "read_noise": 0.0,
            "times_s": [0.0], "fp": fp, "chips": [{"seed": 0, "time_s": 0.0, "value": 3.0}],
            "summary": [{"time_s": 0.0, "mean": 3.0, "std": None, "chips": 1}]}


def test_results_are_written_whole_with_their_settings_and_found_by_kind(tmp_path):
    first = write_result(tmp_path, "drift", ["pcm-drift", "gdc"], {"times_s": [0]}, _drift(1),
                         copy=tmp_path / "copy.json")
    second = write_result(tmp_path, "drift", ["pcm-drift", "gdc"], {"times_s": [1]},
                          _drift(2))
    (tmp_path / EVAL_DIR / "notes.json").write_text("{}")
    assert first != second
    assert json.loads(first.read_text()) == {"kind": "drift", **_drift(1),
                                             "settings": {"times_s": [0]}}
    assert json.loads((tmp_path / "copy.json").read_text()) == json.loads(first.read_text())
    assert result_files(tmp_path)["drift"] == sorted([first, second])
    assert not any(path.name.startswith(".") for path in (tmp_path / EVAL_DIR).iterdir())


def test_a_result_the_report_could_not_read_is_not_written(tmp_path):
    """The writer checks a result against the schema the report reads it with."""
    broken = {**_drift(1), "chips": [{"seed": 0, "time_s": 0.0}]}
    with pytest.raises(ValueError, match=r"not a valid drift result \(chips\.0\.value: "
                                         r"Field required\)"):
        write_result(tmp_path, "drift", ["pcm"], {}, broken)
    assert not list((tmp_path / EVAL_DIR).iterdir())


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small MLP compiled for aimc, and 8 samples of its input."""
    root = tmp_path_factory.mktemp("results")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                                 torch.nn.Linear(32, 4)).eval()
    calibration = [(torch.randn(4, 16),) for _ in range(4)]
    out = afmc.compile(module, "aimc", example_inputs=calibration[0], calibration=calibration,
                       output=root / "mlp").output
    name = afmc.load(out).record["inputs"][0]
    np.savez(root / "x.npz", **{name: np.random.default_rng(3).standard_normal((8, 16))})
    return {"out": Path(out), "x": root / "x.npz"}


@pytest.mark.slow
def test_every_mode_keeps_its_results_beside_the_others_and_report_lists_them(mlp, tmp_path):
    out, x = mlp["out"], mlp["x"]
    seeds = _eval(out, "--inputs", x, "--seeds", 2)
    assert seeds.exit_code == 0, seeds.output
    (inputs,) = (out / EVAL_DIR).glob("inputs-*.json")
    assert inputs.name.startswith("inputs-pcm-n2-") and f"-> {inputs}" in seeds.stdout
    assert json.loads(inputs.read_text())["settings"]["seeds"] == 2
    for gdc in ("--gdc", "--no-gdc"):
        drift = _eval(out, "--inputs", x, "--drift", "0,1d", "--seeds", 1, gdc)
        assert drift.exit_code == 0, drift.output
    drifts = sorted(path.name for path in (out / EVAL_DIR).glob("drift-*.json"))
    assert [name.split("-")[2] for name in drifts] == ["gdc", "no_gdc"], drifts
    again = _eval(out, "--inputs", x, "--drift", "0,1d", "--seeds", 1, "--no-gdc")
    assert again.exit_code == 0, again.output
    assert len(list((out / EVAL_DIR).glob("drift-*.json"))) == 2  # same settings: replaced
    report = runner.invoke(app, ["report", str(out), "--html", str(tmp_path / "r.html")],
                           env={"COLUMNS": "80"})
    assert report.exit_code == 0, report.output
    page = (tmp_path / "r.html").read_text()
    for name in [inputs.name, *drifts]:
        assert name in report.stdout, report.stdout
        assert name in page
    assert "Not evaluated yet" not in page.split('id="chips"')[1].split("</section>")[0]


@pytest.mark.slow
def test_eval_seeds_of_a_language_model_leaves_one_result(model_dirs, calibration_text,
                                                          tmp_path):
    out = tmp_path / "out"
    compiled = runner.invoke(app, ["compile", str(model_dirs["qwen2"]), "-o", str(out),
                                   "--calib", str(calibration_text),
                                   "--set", "hardware.max_in=32"])
    assert compiled.exit_code == 0, compiled.output
    args = ("--text", calibration_text, "--seeds", 2, "--seq-len", 32, "--max-tokens", 128)
    result = _eval(out, *args, "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    (written,) = (out / EVAL_DIR).glob("seeds-*.json")
    assert written.name.startswith("seeds-pcm-n2-")
    data = json.loads(written.read_text())
    assert data == json.loads((tmp_path / "r.json").read_text())
    assert data["kind"] == "seeds" and sorted(data["chips"]) == ["0", "1"]
    assert f"{data['mean']:.4f}" in result.stdout
    assert _eval(out, *args).exit_code == 0
    assert len(list((out / EVAL_DIR).glob("seeds-*.json"))) == 1
    report = runner.invoke(app, ["report", str(out)])
    assert report.exit_code == 0, report.output
    assert written.name in report.stdout and f"{data['mean']:.4f}" in report.stdout

"""afmc run / eval --inputs on models that are not language models, as a user runs them.

A tiny CNN (Conv2d + ReLU + Linear) is compiled from its nn.Module for aimc and
int8, and an MLP with two inputs (float features and int64 ids through an
embedding) from its ONNX export for aimc and fp. The CLI runs as a subprocess;
its printed numbers must match its JSON, and the JSON must match the same
metrics computed here with numpy on the chips' and the FP view's outputs.
Bad input (names, dtypes, ranks, NaN, labels, option values, a --json path in a
missing directory) must end in one `error:` line naming the culprit, no traceback;
the matrix runs in-process (CliRunner: one CLI start costs seconds of imports),
two of its cases also as subprocesses.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import afmc
from afmc.api import load
from afmc.cli import app
from afmc.data.model_inputs import load_inputs, load_labels
from afmc.eval.sweep import Point, run_sweep
from afmc.eval.tensor_eval import ChipScores, OutputErrorScorer
from afmc.runtime.compiled import CompiledModel

# the module fixtures are built once, on one worker (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group(__name__)

ROOT = Path(afmc.__file__).resolve().parent.parent
BATCH = 4  # the ONNX export fixes it; a module is compiled with a dynamic batch axis
SAMPLES = 8


class _CNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class _MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 16)
        self.emb = torch.nn.Embedding(6, 16)
        self.fc2 = torch.nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x) + self.emb(ids)))


def _cli(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", "from afmc.cli import app; app()", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> dict[str, Path]:
    """The CNN compiled from its nn.Module (aimc, int8), with inputs and labels files."""
    root = tmp_path_factory.mktemp("cnn")
    torch.manual_seed(0)
    module = _CNN().eval()
    calibration = [(torch.randn(BATCH, 1, 6, 6),) for _ in range(4)]
    for target in ("aimc", "int8"):
        afmc.compile(module, target, example_inputs=calibration[0], calibration=calibration,
                     output=root / target)
    rng = np.random.default_rng(1)
    np.savez(root / "x.npz", x=rng.standard_normal((SAMPLES, 1, 6, 6)))  # float64: cast
    np.save(root / "y.npy", rng.integers(0, 5, SAMPLES))
    return {"aimc": root / "aimc", "int8": root / "int8", "x": root / "x.npz",
            "y": root / "y.npy", "root": root}


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> dict[str, Path]:
    """The two-input MLP exported to ONNX and compiled from the file (aimc, fp)."""
    root = tmp_path_factory.mktemp("mlp")
    torch.manual_seed(0)
    module = _MLP().eval()
    batches = [(torch.randn(BATCH, 8), torch.randint(0, 6, (BATCH,))) for _ in range(4)]
    torch.onnx.export(module, batches[0], root / "mlp.onnx", dynamo=True)  # weights in .data
    assert (root / "mlp.onnx.data").is_file()
    afmc.compile(str(root / "mlp.onnx"), "aimc", output=root / "aimc",
                 calibration=[{"x": x.numpy(), "ids": ids.numpy()} for x, ids in batches])
    afmc.compile(str(root / "mlp.onnx"), "fp", output=root / "fp")
    rng = np.random.default_rng(2)
    inputs = {"x": rng.standard_normal((SAMPLES, 8)).astype(np.float32),
              "ids": rng.integers(0, 6, SAMPLES)}
    np.savez(root / "x.npz", **inputs)
    np.save(root / "y.npy", rng.integers(0, 3, SAMPLES))
    return {"aimc": root / "aimc", "fp": root / "fp", "x": root / "x.npz",
            "y": root / "y.npy", "root": root}


def _outputs(out: Path, inputs: dict[str, np.ndarray], seed: int | None = 0,
             **chip: object) -> np.ndarray:
    """The first output of chip `seed` (fp=True: the FP view; other options as for
    CompiledModel.chip) on all samples, BATCH at a time."""
    model = load(out)
    session = model.fp_view() if chip.pop("fp", False) else model.chip(seed, **chip)
    return np.concatenate([
        session.run(*(inputs[name][i:i + BATCH] for name in session.input_names))
        for i in range(0, SAMPLES, BATCH)]).astype(np.float64)


def _relative_error(got: np.ndarray, fp: np.ndarray) -> float:
    return float(np.linalg.norm(got - fp) / np.linalg.norm(fp))


def _row(stdout: str, label: str) -> list[str]:
    """The cells of the table row starting with `label`."""
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.replace("│", "|").split("|")]
        if cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r} in:\n{stdout}")


@pytest.mark.slow
def test_eval_cnn_per_chip_errors_and_accuracy(cnn, tmp_path):
    result = _cli("eval", cnn["aimc"], "--inputs", cnn["x"], "--labels", cnn["y"],
                  "--seeds", 2, "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["samples"] == SAMPLES and report["outputs"] == ["output"]
    assert sorted(report["chips"]) == ["0", "1"] and report["digital"] is None
    assert "analog (pcm) outputs vs the FP view" in " ".join(result.stdout.split())
    inputs = {"x": np.load(cnn["x"])["x"].astype(np.float32)}
    fp = _outputs(cnn["aimc"], inputs, fp=True)
    labels = np.load(cnn["y"])
    assert report["fp_accuracy"] == pytest.approx(np.mean(fp.argmax(-1) == labels))
    for seed in (0, 1):
        chip = report["chips"][str(seed)]
        error = chip["outputs"]["output"]
        got = _outputs(cnn["aimc"], inputs, seed=seed)
        assert error["relative_error"] == pytest.approx(_relative_error(got, fp), rel=1e-6)
        assert error["relative_error"] > 0
        assert error["sqnr_db"] == pytest.approx(-20 * math.log10(error["relative_error"]))
        assert 0 < error["cosine"] < 1
        assert chip["accuracy"] == pytest.approx(np.mean(got.argmax(-1) == labels))
        assert error["agreement"] == pytest.approx(np.mean(got.argmax(-1) == fp.argmax(-1)))
        cells = _row(result.stdout, f"seed {seed}")
        assert cells[2] == f"{error['relative_error']:.4g}"
        assert cells[5] == f"{error['agreement']:.4f}"
        assert cells[6] == f"{chip['accuracy']:.4f}"
    assert report["noise_free"]["outputs"]["output"]["relative_error"] > 0
    values = [report["chips"][s]["outputs"]["output"]["relative_error"] for s in ("0", "1")]
    assert report["mean"]["outputs"]["output"]["relative_error"] == pytest.approx(
        np.mean(values))
    assert report["std"]["outputs"]["output"]["relative_error"] == pytest.approx(
        np.std(values, ddof=1))  # the sample std over the chips
    assert f"FP accuracy {report['fp_accuracy']:.4f}" in result.stdout
    assert not [p for p in tmp_path.iterdir() if p.name != "r.json"], "no temporary file left"


@pytest.mark.slow
def test_run_cnn_prints_outputs_error_and_top1(cnn):
    result = _cli("run", cnn["aimc"], "--inputs", cnn["x"], "--seed", 1)
    assert result.returncode == 0, result.stderr
    inputs = {"x": np.load(cnn["x"])["x"].astype(np.float32)}
    got = _outputs(cnn["aimc"], inputs, seed=1)
    fp = _outputs(cnn["aimc"], inputs, fp=True)
    cells = _row(result.stdout, "output")
    assert cells[1] == f"[{SAMPLES}, 5]"
    assert float(cells[2]) == pytest.approx(got.mean(), rel=1e-3)
    assert float(cells[4]) == pytest.approx(_relative_error(got, fp), rel=1e-3)
    assert f"top-1 class of the first {SAMPLES} sample(s) {got.argmax(-1).tolist()} " \
           f"(FP {fp.argmax(-1).tolist()})" in result.stdout
    assert result.stdout.startswith("chip seed 1: 8 samples")


@pytest.mark.slow
def test_eval_fp_target_is_exact_and_accuracy_matches_numpy(mlp, tmp_path):
    result = _cli("eval", mlp["fp"], "--inputs", mlp["x"], "--labels", mlp["y"],
                  "--seeds", 2, "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    with np.load(mlp["x"]) as archive:
        inputs = dict(archive)
    fp = _outputs(mlp["fp"], inputs, fp=True)
    expected = float(np.mean(fp.argmax(-1) == np.load(mlp["y"])))
    assert report["fp_accuracy"] == pytest.approx(expected)
    for chip in report["chips"].values():
        error = next(iter(chip["outputs"].values()))
        assert error["relative_error"] < 1e-6 and error["cosine"] == pytest.approx(1.0)
        assert error["sqnr_db"] is None or error["sqnr_db"] > 100  # exact: infinite -> null
        assert chip["accuracy"] == pytest.approx(expected)
    assert 0 <= expected <= 1


@pytest.mark.slow
def test_eval_onnx_mlp_two_inputs_from_pt_with_casts_and_read_noise(mlp, tmp_path):
    with np.load(mlp["x"]) as archive:
        inputs = dict(archive)
    torch.save({"x": torch.from_numpy(inputs["x"].astype(np.float64)),
                "ids": torch.from_numpy(inputs["ids"].astype(np.int32))}, tmp_path / "x.pt")
    result = _cli("eval", mlp["aimc"], "--inputs", tmp_path / "x.pt", "--seeds", 2,
                  "--read-noise", 0.05, "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    errors = [next(iter(chip["outputs"].values())) for chip in report["chips"].values()]
    assert len(errors) == 2 and all(e["relative_error"] > 0 for e in errors)
    assert all(math.isfinite(e["sqnr_db"]) for e in errors)
    assert report["fp_accuracy"] is None and "accuracy" not in result.stdout


@pytest.mark.slow
def test_inputs_far_beyond_the_calibration_data_warn_once_and_run(cnn, tmp_path):
    """Images on another scale (x 255, as if not normalized): the record holds the max |x|
    of the calibration data, and eval/run print one named warning and still run."""
    record = json.loads((cnn["aimc"] / "afmc.json").read_text())
    calibrated = record["calibration_inputs"]["x"]
    assert 2.5 < calibrated < 6  # max |x| of 4 x 4 x 36 standard normal draws
    x = np.load(cnn["x"])["x"]
    np.savez(tmp_path / "scaled.npz", x=x * 255)
    result = _cli("run", cnn["aimc"], "--inputs", tmp_path / "scaled.npz")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "input 'x' reaches |x| = " in warnings[0]
    assert "x the" in warnings[0] and "calibrated on" in warnings[0]
    plain = _cli("run", cnn["aimc"], "--inputs", cnn["x"])
    assert plain.returncode == 0 and "warning:" not in plain.stderr


@pytest.mark.slow
def test_output_scores_come_back_whole_from_a_sweep_log(cnn, tmp_path, monkeypatch):
    """The chips of eval --inputs are sweep points: each Score holds every output's error
    and the accuracy, equal to the scorer on the chip opened directly, and a log gives
    them back whole without opening a chip."""
    model = load(cnn["aimc"])
    inputs = load_inputs(cnn["x"], model.signature())
    scorer = OutputErrorScorer.against_fp(model, inputs, load_labels(cnn["y"], SAMPLES))
    points = [Point(None), Point(0)]
    first = run_sweep(model, scorer, points, log=tmp_path / "log.jsonl")
    assert first[Point(0)] == scorer(model.chip(0))
    scores = ChipScores.from_details(first[Point(0)].details)
    assert scores.accuracy is not None and scores.errors["output"].agreement > 0
    assert first[Point(0)].value == scores.errors["output"].relative_error  # one output
    opened: list[object] = []
    chip = CompiledModel.chip
    monkeypatch.setattr(CompiledModel, "chip",
                        lambda self, *args, **kwargs: opened.append(args) or chip(self, *args,
                                                                                  **kwargs))
    again = run_sweep(model, scorer, points, log=tmp_path / "log.jsonl")
    assert opened == [] and again == first


def test_digital_target_runs_once(cnn, tmp_path):
    result = _cli("eval", cnn["int8"], "--inputs", cnn["x"], "--labels", cnn["y"],
                  "--seeds", 3, "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["digital"] == "int8" and list(report["chips"]) == ["0"]
    assert report["chips"]["0"]["outputs"]["output"]["relative_error"] > 0
    assert "int8 target (digital): one run" in result.stdout
    title = " ".join(result.stdout.split())  # the table title may wrap
    assert "int8 (digital) outputs vs the FP view" in title and "programming noise" not in title


# ------------------------------------------------------------------ bad input

runner = CliRunner()


def _assert_one_error(exit_code: int, stderr: str, output: str, needle: str) -> None:
    assert exit_code != 0, output
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in stderr + output


def _bad_inputs(root: Path, mlp_root: Path) -> None:
    rng = np.random.default_rng(3)
    np.savez(mlp_root / "odd.npz", x=np.zeros((6, 8), np.float32), ids=np.zeros(6, np.int64))
    np.savez(mlp_root / "float_ids.npz", x=np.zeros((8, 8), np.float32), ids=np.zeros(8))
    good = rng.standard_normal((SAMPLES, 1, 6, 6))
    np.savez(root / "name.npz", image=good)
    np.savez(root / "dtype.npz", x=rng.integers(0, 5, good.shape))
    np.savez(root / "rank.npz", x=good[:, 0])
    nan = good.copy()
    nan[3, 0, 2, 2] = np.nan
    np.savez(root / "nan.npz", x=nan)
    np.save(root / "labels5.npy", np.arange(5))
    np.save(root / "labels_range.npy", np.full(SAMPLES, 5))
    np.save(root / "labels_float.npy", np.zeros(SAMPLES))


BAD = [
    (["eval", "{aimc}", "--inputs", "{root}/name.npz"],
     "name.npz: batch 0: inputs ['image'] do not match"),
    (["eval", "{aimc}", "--inputs", "{root}/dtype.npz"],
     "input 'x': dtype int64, the model takes float32"),
    (["eval", "{aimc}", "--inputs", "{root}/rank.npz"], "input 'x': rank 3"),
    (["run", "{aimc}", "--inputs", "{root}/nan.npz"],
     "nan.npz: batch 0, input 'x': 1 non-finite value(s)"),
    (["run", "{mlp}", "--inputs", "{mlp_root}/odd.npz"], "6 samples, the model is compiled "
     "for batches of 4"),
    (["run", "{mlp}", "--inputs", "{mlp_root}/float_ids.npz"],
     "input 'ids': dtype float64, the model takes int64"),
    (["eval", "{aimc}", "--inputs", "{x}", "--labels", "{root}/labels5.npy"],
     "labels5.npy: labels have shape [5]"),
    (["eval", "{aimc}", "--inputs", "{x}", "--labels", "{root}/labels_range.npy"],
     "labels_range.npy: labels hold class id 5, outside [0, 5)"),
    (["eval", "{aimc}", "--inputs", "{x}", "--labels", "{root}/labels_float.npy"],
     "labels_float.npy: labels are float64"),
    (["run", "{aimc}", "--inputs", "{x}", "--top-k", "-5"], "--top-k must be at least 1"),
    (["run", "{aimc}", "--inputs", "{x}", "--max-tokens", "-1"], "--max-tokens"),
    (["eval", "{aimc}", "--inputs", "{x}", "--read-noise", "nan"], "--read-noise"),
    (["run", "{aimc}", "--inputs", "{x}", "--read-noise", "inf"], "--read-noise"),
    (["eval", "{aimc}", "--inputs", "{x}", "--seeds", "0"], "--seeds must be at least 1"),
    (["eval", "{aimc}", "--inputs", "{x}", "--seq-len", "1"], "--seq-len must be at least 2"),
    (["eval", "{aimc}", "--inputs", "{x}", "--json", "{root}/missing/r.json"],
     "missing/r.json: directory does not exist"),
    (["run", "{aimc}", "--text", "{x}"],
     "compiled model has no tokenizer; give --inputs FILE (tensors keyed by input name)"),
    (["run", "{aimc}", "--text", "{x}", "--inputs", "{x}"], "not both"),
    (["eval", "{aimc}"], "give --text FILE"),
    (["eval", "{aimc}", "--inputs", "{root}/absent.npz"], "absent.npz: inputs file not found"),
    (["eval", "{int8}", "--inputs", "{x}", "--read-noise", "0.1"], "read noise"),
]


@pytest.fixture(scope="module")
def bad_files(cnn, mlp) -> dict[str, Path]:
    _bad_inputs(cnn["root"], mlp["root"])
    return {"aimc": cnn["aimc"], "int8": cnn["int8"], "x": cnn["x"], "root": cnn["root"],
            "mlp": mlp["aimc"], "mlp_root": mlp["root"]}


def _args(template: list[str], files: dict[str, Path]) -> list[str]:
    return [arg.format(**files) for arg in template]


@pytest.mark.parametrize(("template", "needle"), BAD, ids=[n[:40] for _, n in BAD])
def test_bad_input_is_one_error_line(template, needle, bad_files):
    result = runner.invoke(app, _args(template, bad_files))
    assert not isinstance(result.exception, Exception) or isinstance(result.exception,
                                                                     SystemExit)
    _assert_one_error(result.exit_code, result.stderr, result.output, needle)


@pytest.mark.slow
@pytest.mark.parametrize("case", [1, 8])
def test_bad_input_in_a_real_process(case, bad_files):
    template, needle = BAD[case]
    result = _cli(*_args(template, bad_files))
    _assert_one_error(result.returncode, result.stderr, result.stdout, needle)

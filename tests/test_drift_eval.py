"""afmc eval --drift: chips x times with the noise model chosen at evaluation, in parallel
processes, resumable.

afmc-tiny is compiled once for aimc (its noise model: pcm). The sweep's values must
equal perplexities computed here on chips opened directly with the same noise model at
each time; two worker processes must give the same numbers as one; a log holding part
of a sweep must be reused and a torn line ignored; the CLI's JSON must hold the
schema's fields with mean and std over chips computed from its own chips; a model
that is not a language model is scored by its outputs' relative error to the FP view.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import afmc
from afmc.api import load
from afmc.cli import app
from afmc.data.model_inputs import load_inputs
from afmc.data.tokenizer import token_windows
from afmc.eval.drift import eval_noise, parse_times
from afmc.eval.perplexity import PerplexityScorer, perplexity
from afmc.eval.scoring import Score
from afmc.eval.sweep import Point, logged_points, run_sweep, sweep_key
from afmc.eval.tensor_eval import OutputErrorScorer
from afmc.runtime.compiled import CompiledModel
from afmc.runtime.noise import NoiseConfig

runner = CliRunner()
TEXT = ("The analog chip keeps its weights as conductances, and they drift. " * 12).encode()
DRIFT = NoiseConfig(model="pcm-drift")


@pytest.fixture(scope="module")
def tiny(compiled_tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """afmc-tiny compiled for aimc with its defaults: this module's copy (afmc eval
    --drift writes its result file into OUT/eval)."""
    return Path(shutil.copytree(compiled_tiny.output, tmp_path_factory.mktemp("drift") / "tiny"))


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    return token_windows(np.frombuffer(TEXT, dtype=np.uint8).astype(np.int64), 64, 512)


def _direct(out: Path, windows: np.ndarray, seed: int, time_s: float, **noise: object) -> float:
    """Perplexity of chip `seed` programmed with pcm-drift read at `time_s`, opened here."""
    config = NoiseConfig(model="pcm-drift", drift_time_s=time_s, **noise)
    return perplexity(load(out).chip(seed, noise=config).run, windows, batch_size=8)


def test_parse_times_units_order_and_errors():
    assert parse_times("0,3600,1d,1y,2.5h,1e3") == [0.0, 3600.0, 86400.0, 31536000.0, 9000.0,
                                                    1000.0]
    assert parse_times("1h, 3600 ,60m") == [3600.0]
    for bad in ("", "1x", "-5", "1h,", "nan", "1e999"):
        with pytest.raises(ValueError, match="--drift"):
            parse_times(bad)


@pytest.mark.slow
def test_eval_noise_chooses_the_model_at_evaluation(tiny):
    model = load(tiny)
    assert model.noise.model == "pcm"
    assert eval_noise(model, None, None, drifting=False) == model.noise
    assert eval_noise(model, None, None, drifting=True).model == "pcm-drift"
    assert eval_noise(model, "pcm-drift", False, True).drift_compensation is False
    assert eval_noise(model, "additive", None, False).model == "additive"
    with pytest.raises(ValueError, match="does not drift"):
        eval_noise(model, "pcm", None, drifting=True)
    with pytest.raises(ValueError, match="--gdc"):
        eval_noise(model, "pcm", True, drifting=False)


@pytest.mark.slow
def test_sweep_values_equal_chips_opened_directly_and_processes_agree(tiny, windows):
    model = load(tiny)
    points = [Point(0, 0.0), Point(0, 31536000.0), Point(1, 31536000.0)]
    one = run_sweep(model, PerplexityScorer(windows), points, noise=DRIFT)
    two = run_sweep(model, PerplexityScorer(windows), points, noise=DRIFT, jobs=2)
    assert list(one) == points
    assert one == two  # same chips in worker processes: bit-identical numbers
    for (seed, time_s, _), score in one.items():
        assert score.value == pytest.approx(_direct(tiny, windows, seed, time_s), rel=1e-6)
    # drift hurts a chip over a year even with compensation, and more without it
    year = one[Point(0, 31536000.0)].value
    assert year > one[Point(0, 0.0)].value
    assert _direct(tiny, windows, 0, 31536000.0, drift_compensation=False) > year


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_from_its_log(tiny, windows, tmp_path):
    model = load(tiny)
    log = tmp_path / "drift.jsonl"
    scorer = PerplexityScorer(windows)
    first = run_sweep(model, scorer, [Point(0, 3600.0)], noise=DRIFT, log=log)
    with log.open("a") as file:
        file.write('{"key": "torn')  # a writer killed mid-line
    seen: list[tuple] = []
    points = [Point(0, 3600.0), Point(1, 3600.0)]
    full = run_sweep(model, scorer, points, noise=DRIFT, log=log,
                     on_point=lambda point, score, logged: seen.append((point, logged)))
    assert full[Point(0, 3600.0)] == first[Point(0, 3600.0)]
    assert sorted(seen) == [(Point(0, 3600.0), True), (Point(1, 3600.0), False)]
    lines = log.read_text().splitlines()
    assert log.read_text().endswith("}\n") and "" not in lines
    assert len(lines) == 3 and json.loads(lines[-1])["seed"] == 1  # after the torn line
    # another read noise is another sweep: nothing of this log is reused
    assert logged_points(log, "another key") == {}
    reran: list[bool] = []
    run_sweep(model, scorer, [Point(0, 3600.0)], noise=DRIFT, read_noise=0.01, log=log,
              on_point=lambda point, score, logged: reran.append(logged))
    assert reran == [False]


def test_a_seed_and_time_sweep_keeps_the_key_its_old_logs_were_written_with():
    """The key of a sweep without layer subsets is the one afmc computed before Scores and
    layer subsets (the values below are the old code's), so old logs resume; the FP value
    a scorer holds is not keyed, a scorer that also measures the logits' error is another
    sweep. (A new field of NoiseConfig changes these keys: old logs then start afresh.)"""
    windows = np.arange(12, dtype=np.int64).reshape(2, 6)
    hardware = {"weight_slices": 1, "devices_per_weight": 1}
    assert sweep_key(PerplexityScorer(windows), DRIFT, 0.0, hardware) == "fc9b48c8f0e393ce"
    assert sweep_key(PerplexityScorer(windows), DRIFT, 0.02,
                     {**hardware, "weight_slices": 2}) == "1b8d225d6345ba05"
    assert sweep_key(PerplexityScorer(windows, fp=3.5), DRIFT, 0.0, hardware) == \
        "fc9b48c8f0e393ce"
    with_logits = PerplexityScorer(windows, reference=(np.zeros((2, 6, 4), np.float32),))
    assert sweep_key(with_logits, DRIFT, 0.0, hardware) != "fc9b48c8f0e393ce"


@pytest.mark.slow
def test_a_log_of_the_old_four_keys_resumes_without_opening_a_chip(tiny, windows, tmp_path,
                                                                   monkeypatch):
    model = load(tiny)
    scorer = PerplexityScorer(windows)
    key = sweep_key(scorer, DRIFT, 0.0, model.hardware_counts())
    log = tmp_path / "drift.jsonl"
    log.write_text("".join(json.dumps({"key": key, "seed": seed, "time_s": 3600.0,
                                       "value": value}) + "\n"
                           for seed, value in ((0, 7.25), (1, math.inf))))  # "Infinity"
    opened: list[object] = []
    monkeypatch.setattr(CompiledModel, "chip", lambda *args, **kwargs: opened.append(args))
    scores = run_sweep(model, scorer, [(0, 3600.0), Point(1, 3600.0)], noise=DRIFT, log=log)
    assert opened == []
    assert scores == {Point(0, 3600.0): Score(7.25), Point(1, 3600.0): Score(math.inf)}


@pytest.mark.slow
def test_cli_drift_writes_the_report_with_mean_and_std_over_chips(tiny, tmp_path):
    text = tmp_path / "t.txt"
    text.write_bytes(TEXT)
    result = runner.invoke(app, ["eval", str(tiny), "--text", str(text), "--seeds", "2",
                                 "--drift", "0,1y", "--seq-len", "64", "--no-gdc",
                                 "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    (written,) = (tiny / "eval").glob("drift-pcm_drift-no_gdc-n2-*.json")
    report = json.loads(written.read_text())
    assert report == json.loads((tmp_path / "r.json").read_text())
    assert report["kind"] == "drift" and report["metric"] == "perplexity"
    assert report["times_s"] == [0.0, 31536000.0]
    assert report["noise"]["model"] == "pcm-drift"
    assert report["noise"]["drift_compensation"] is False
    assert report["fp"] == pytest.approx(
        perplexity(load(tiny).fp_view().run, token_windows(
            np.frombuffer(TEXT, dtype=np.uint8).astype(np.int64), 64, 16384), batch_size=8))
    chips = {(c["seed"], c["time_s"]): c["value"] for c in report["chips"]}
    assert len(chips) == 4
    for row in report["summary"]:
        values = [chips[(seed, row["time_s"])] for seed in (0, 1)]
        assert row["mean"] == pytest.approx(np.mean(values))
        assert row["std"] == pytest.approx(np.std(values, ddof=1))  # sample std over chips
        assert row["chips"] == 2
    assert report["summary"][1]["mean"] > report["summary"][0]["mean"]
    assert "1 y" in result.output and "0 s" in result.output


def test_drift_of_a_model_that_is_not_a_language_model(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                                 torch.nn.Linear(32, 4)).eval()
    calibration = [(torch.randn(4, 16),) for _ in range(4)]
    out = afmc.compile(module, "aimc", example_inputs=calibration[0], calibration=calibration,
                       output=tmp_path / "mlp").output
    model = load(out)
    np.savez(tmp_path / "x.npz", **{model.record["inputs"][0]:
                                    np.random.default_rng(3).standard_normal((8, 16))})
    scorer = OutputErrorScorer.against_fp(model, load_inputs(tmp_path / "x.npz",
                                                             model.signature()))
    scores = run_sweep(model, scorer, [Point(0, 0.0), Point(0, 1e6)], noise=DRIFT)
    values = {point: score.value for point, score in scores.items()}
    x = np.random.default_rng(3).standard_normal((8, 16)).astype(np.float32)
    fp = model.fp_view().run(x).astype(np.float64)
    for (seed, time_s, _), value in values.items():
        chip = model.chip(seed, noise=DRIFT.model_copy(update={"drift_time_s": time_s}))
        got = chip.run(x).astype(np.float64)
        assert value == pytest.approx(np.linalg.norm(got - fp) / np.linalg.norm(fp), rel=1e-6)
        assert 0 < value < 1 and math.isfinite(value)
    result = runner.invoke(app, ["eval", str(out), "--inputs", str(tmp_path / "x.npz"),
                                 "--drift", "0,1e6", "--seeds", "1"])
    assert result.exit_code == 0, result.output
    (written,) = (out / "eval").glob("drift-*.json")
    report = json.loads(written.read_text())
    assert report["metric"] == "relative_error" and report["fp"] is None
    assert [c["value"] for c in report["chips"]] == pytest.approx(list(values.values()))


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--drift", "1y", "--noise", "pcm"], "the pcm noise model does not drift"),
    (["--drift", "soon"], "--drift 'soon'"),
    (["--noise", "gauss"], "--noise 'gauss': unknown noise model"),
    (["--gdc"], "--gdc/--no-gdc"),
    (["--jobs", "0"], "--jobs must be at least 1"),
])
def test_bad_drift_options_are_one_line_errors(tiny, args, message):
    result = runner.invoke(app, ["eval", str(tiny), "--text", "stdlib:heldout", *args])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]

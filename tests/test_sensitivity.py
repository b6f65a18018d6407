"""afmc eval --sensitivity: chips with a subset of analog layers, the per-layer ranking,
the cumulative curve, and the keep-digital configuration.

afmc-tiny is compiled once for aimc with its blocks 1-3 digital (8 analog layers: block
0 and the LM head) and 96-input slices, so that layers of unequal slices (through
afmc.SliceInput) and of equal ones are both there, and a cheap calibration. Checked
against computations made here: a chip with only the LM head analog equals the FP
view's hidden state through the torch op afmc::analog_linear with that layer's
programmed weights; no layer analog is the FP view, all of them the full chip; the
CLI's report holds perplexities and logit errors equal to chips opened directly, its
ranking is sorted, its last cumulative point is the full chip; the budget rule on
hand-made numbers; compiling with the keep-digital file places exactly its layers
digital.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper
from typer.testing import CliRunner

import afmc
import afmc.ops  # noqa: F401  (registers afmc::analog_linear)
from afmc.api import load
from afmc.cli import app
from afmc.config import load_config
from afmc.data.kv_cache import with_empty_pasts
from afmc.data.tokenizer import token_windows
from afmc.eval import sensitivity as sens
from afmc.eval.perplexity import PerplexityScorer, perplexity
from afmc.eval.sweep import Point, run_sweep
from afmc.eval.tensor_eval import output_error
from afmc.runtime import analog
from afmc.runtime.chip import load_model_file
from afmc.runtime.compiled import CompiledModel
from afmc.runtime.sessions import session_kv_cache, session_options
from afmc.runtime.views import fp_reference

# the module fixtures are built once, on one worker (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group(__name__)

runner = CliRunner()
TEXT = ("Each analog layer alone, then one by one in order of harm. " * 8).encode()
SETTINGS = ['placement.digital=["layers\\\\.[123]\\\\."]', "hardware.max_in=96",
            "calibration.method=max", "calibration.seq_len=32", "calibration.max_tokens=256"]
HEAD = "lm.lm_head"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return afmc.compile("afmc-tiny", "aimc", load_config(None, SETTINGS),
                        output=tmp_path_factory.mktemp("sens") / "tiny").output


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    return token_windows(np.frombuffer(TEXT, dtype=np.uint8).astype(np.int64), 64, 16384)


@pytest.fixture(scope="module")
def cli_report(small: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "t.txt").write_bytes(TEXT)
    result = runner.invoke(app, ["eval", str(small), "--text", str(tmp / "t.txt"),
                                 "--sensitivity", "--seq-len", "64", "--budget", "0.5%",
                                 "--rules", str(tmp / "keep.yaml"),
                                 "--json", str(tmp / "s.json")])
    assert result.exit_code == 0, result.output
    (written,) = (small / "eval").glob("sensitivity-*-seed0-*.json")
    report = json.loads(written.read_text())
    assert report == json.loads((tmp / "s.json").read_text())
    return {"report": report, "rules": tmp / "keep.yaml", "output": result.output}


def analog_names(out: Path) -> list[str]:
    return [layer["name"] for layer in load(out).record["layers"] if layer.get("onnx_weight")]


@pytest.mark.slow
def test_no_layer_analog_is_the_fp_view_and_all_of_them_the_chip(small, windows):
    model = load(small)
    ids = windows[:2]
    assert np.array_equal(model.chip(0, analog_layers=set()).run(ids), model.fp_view().run(ids))
    full = model.chip(0).run(ids)
    assert np.array_equal(model.chip(0, analog_layers=analog_names(small)).run(ids), full)
    assert np.array_equal(model.chip(0, analog_layers=None).run(ids), full)


@pytest.mark.slow
def test_one_layer_chip_is_the_fp_view_but_that_layer(small, windows):
    """Only the LM head analog: the FP view up to its input, then afmc::analog_linear."""
    model = load(small)
    layer = next(layer for layer in model.record["layers"] if layer["name"] == HEAD)
    graph = load_model_file(small / "model.onnx")
    # unequal slices ([86, 85, 85]): W comes through afmc.SliceInput
    producer = next(n for n in graph.graph.node if n.op_type == "SliceInput"
                    and n.input[0] == layer["onnx_weight"])
    node = next(n for n in graph.graph.node if n.op_type == "AnalogLinear"
                and n.input[1] == producer.output[0])
    hidden = next(n for n in graph.graph.node if node.input[0] in n.output).input[0]
    fp = fp_reference(graph, whole_weights=True)  # split layers: whole W, as the chip's view
    whole = dict(model.runtime.stored(whole=True))
    for initializer in fp.graph.initializer:
        if initializer.name in whole:
            initializer.CopyFrom(onnx.numpy_helper.from_array(whole[initializer.name],
                                                              initializer.name))
    fp.graph.output.append(helper.make_empty_tensor_value_info(hidden))
    session = ort.InferenceSession(fp.SerializeToString(), session_options(),
                                   providers=["CPUExecutionProvider"])
    ids = windows[:2]
    fp_logits, h = session.run(["logits", hidden], with_empty_pasts(
        {"input_ids": ids}, session_kv_cache(session)))
    programmed = dict(model.runtime.programmed(0, model.noise))[layer["onnx_weight"]]
    input_range = onnx.numpy_helper.to_array(
        next(i for i in graph.graph.initializer if i.name == node.input[2]))
    hardware = model.record["config"]["hardware"]
    expected = torch.ops.afmc.analog_linear(
        torch.tensor(h), torch.tensor(programmed), torch.tensor(input_range),
        layer["slice_sizes"], hardware["inp_res"], hardware["out_res"], hardware["out_bound"],
        0.0).numpy()
    if layer["outlier_values"]:  # split-outliers: the exact sparse path adds to the tile's
        indices, values = (onnx.numpy_helper.to_array(
            next(i for i in graph.graph.initializer if i.name == layer[key]), str(small))
            for key in ("outlier_indices", "outlier_values"))
        sparse = np.zeros((values.shape[0], h.shape[-1]), dtype=np.float32)
        np.put_along_axis(sparse, indices, values, axis=1)
        expected = expected + h @ sparse.T
    got = model.chip(0, analog_layers={HEAD}).run(ids)
    scale = np.abs(expected).max()
    # float32 sums in another order may put a value at a DAC/ADC rounding boundary one
    # step apart: all but a handful of the 32768 logits agree exactly
    assert np.mean(np.abs(got - expected) > 1e-4 * scale) < 1e-3
    assert np.abs(got - fp_logits).max() > 1e-3 * scale  # the layer is analog


@pytest.mark.slow
def test_only_the_kept_layers_are_programmed(small, monkeypatch):
    programmed = []

    def counting(original):
        def program(weight, *args):
            result = original(weight, *args)
            if result is not None:
                programmed.append(weight.shape)
            return result
        return program

    # A layer is programmed by program_prepared (straight into its prepared form, on
    # the kernels; None without them) or else by program_weights.
    for name in ("program_weights", "program_prepared"):
        monkeypatch.setattr(analog, name, counting(getattr(analog, name)))
    kept = {HEAD, "lm.model.layers.0.mlp.down_proj"}
    load(small).chip(0, analog_layers=kept)
    assert sorted(programmed) == sorted(
        (layer["out_features"], layer["in_features"])
        for layer in load(small).record["layers"] if layer["name"] in kept)


@pytest.mark.slow
def test_report_equals_chips_opened_directly(small, windows, cli_report):
    report, model = cli_report["report"], load(small)
    names = analog_names(small)
    assert report["kind"] == "sensitivity" and report["metric"] == "perplexity"
    assert report["seed"] == 0
    fp_view = model.fp_view()
    assert report["fp"] == pytest.approx(perplexity(fp_view.run, windows), rel=1e-9)
    layers = report["layers"]
    assert sorted(layer["name"] for layer in layers) == sorted(names)
    deltas = [layer["delta"] for layer in layers]
    assert deltas == sorted(deltas)
    head = next(layer for layer in layers if layer["name"] == HEAD)
    chip = model.chip(0, analog_layers={HEAD})
    assert head["value"] == pytest.approx(perplexity(chip.run, windows), rel=1e-9)
    assert head["delta"] == pytest.approx(head["value"] - report["fp"])
    error = output_error(chip.run(windows), fp_view.run(windows))
    assert head["relative_error"] == pytest.approx(error.relative_error, rel=1e-6)
    assert head["sqnr_db"] == pytest.approx(error.sqnr_db, rel=1e-6)
    cumulative = report["cumulative"]
    assert [point["analog_layers"] for point in cumulative] == list(range(1, len(names) + 1))
    assert [point["added"] for point in cumulative] == [layer["name"] for layer in layers]
    full = perplexity(model.chip(0).run, windows)
    assert cumulative[-1]["value"] == pytest.approx(full, rel=1e-9)
    assert report["all_analog"] == pytest.approx(full, rel=1e-9)
    second = model.chip(0, analog_layers=[layer["name"] for layer in layers[:2]])
    assert cumulative[1]["value"] == pytest.approx(perplexity(second.run, windows), rel=1e-9)


@pytest.mark.slow
def test_a_layer_subset_point_is_the_scorer_on_that_chip(small, windows):
    model = load(small)
    scorer = PerplexityScorer.against_fp(model, windows, logits=True)
    assert scorer.fp == perplexity(model.fp_view().run, windows)
    layers = (HEAD, analog_names(small)[0])
    (score,) = run_sweep(model, scorer, [Point(0, layers=layers)]).values()
    chip = model.chip(0, analog_layers=layers)
    assert score == scorer(chip)
    error = output_error(chip.run(windows), model.fp_view().run(windows)).relative_error
    assert score.relative_error == pytest.approx(error, rel=1e-6)


@pytest.mark.slow
def test_sensitivity_resumes_from_its_log_without_opening_a_chip(small, windows, tmp_path,
                                                                 monkeypatch):
    """Sensitivity's chips are sweep points (seed, layers): 2n - 1 chips (the first
    cumulative point is the best layer alone), each logged with its layers; a rerun on
    the log opens none and gives the same report."""
    model = load(small)
    names = analog_names(small)
    scorer = PerplexityScorer.against_fp(model, windows, logits=True)
    opened: list[tuple[str, ...]] = []
    chip = CompiledModel.chip
    monkeypatch.setattr(CompiledModel, "chip", lambda self, seed, **kwargs: opened.append(
        kwargs["analog_layers"]) or chip(self, seed, **kwargs))
    log = tmp_path / sens.SENSITIVITY_LOG
    progress: list[tuple[int, int]] = []
    first = sens.measure_sensitivity(model, scorer, 0, log=log,
                                     progress=lambda *done: progress.append(done))
    ranked = tuple(layer.name for layer in first.layers)
    expected = [(name,) for name in names] + [ranked[:k] for k in range(2, len(names) + 1)]
    assert opened == expected
    assert progress == [(done, 2 * len(names) - 1) for done in range(1, 2 * len(names))]
    assert [tuple(json.loads(line)["layers"]) for line in log.read_text().splitlines()] == \
        expected
    assert first.cumulative[0].value == first.layers[0].value
    opened.clear()
    again = sens.measure_sensitivity(model, scorer, 0, log=log)
    assert opened == [] and again.to_json() == first.to_json()


@pytest.mark.slow
def test_budget_keeps_the_tail_of_the_ranking_digital(cli_report):
    report = cli_report["report"]
    values = [point["value"] for point in report["cumulative"]]
    k = sens.analog_prefix(values, report["fp"], 0.005)
    assert report["budget"] == 0.005
    assert report["keep_digital"] == [layer["name"] for layer in report["layers"][k:]]
    rules = load_config(cli_report["rules"]).placement.rules
    assert [(rule.name, rule.place) for rule in rules] == [
        (name, "digital") for name in report["keep_digital"]]
    assert "kept digital" in cli_report["output"]


def test_analog_prefix_on_hand_made_numbers():
    # perplexity 5.0: +0.4%, +1.4%, +0.8%, +6%: the last point within 1% is the third
    assert sens.analog_prefix([5.02, 5.07, 5.04, 5.3], 5.0, 0.01) == 3
    assert sens.analog_prefix([5.02, 5.07, 5.04, 5.3], 5.0, 0.005) == 1
    assert sens.analog_prefix([5.02, 5.07, 5.04, 5.3], 5.0, 0.1) == 4
    assert sens.analog_prefix([5.02, 5.07], 5.0, 0.0) == 0
    assert sens.analog_prefix([4.99, 5.07], 5.0, 0.0) == 1  # better than FP is within
    # relative error (no FP value): the budget bounds the error itself
    assert sens.analog_prefix([0.001, 0.02, 0.009], None, 0.01) == 3
    assert sens.analog_prefix([0.001, 0.02, 0.011], None, 0.01) == 1
    layers = [sens.LayerSensitivity(name, 40.0, 0.01, value, value - 5.0)
              for name, value in (("a", 5.01), ("b", 5.02), ("c", 5.03))]
    points = [sens.CumulativePoint(k, name, value)
              for k, (name, value) in enumerate((("a", 5.01), ("b", 5.04), ("c", 5.08)), 1)]
    report = sens.SensitivityReport("perplexity", 0, 5.0, layers, points)
    assert sens.suggest(report, 0.01) == ["c"] and report.budget == 0.01
    assert report.to_json()["keep_digital"] == ["c"]


def test_parse_budget():
    assert sens.parse_budget("1%") == pytest.approx(0.01)
    assert sens.parse_budget("0.5") == pytest.approx(0.005)
    assert sens.parse_budget("0") == 0.0
    for bad in ("-1", "-1%", "abc", "inf", "1%%", ""):
        with pytest.raises(ValueError, match="--budget"):
            sens.parse_budget(bad)


@pytest.mark.slow
def test_keep_digital_file_round_trips_through_compile(small, tmp_path):
    model = load(small)
    names = analog_names(small)
    kept = [HEAD, names[2]]
    sens.write_rules(tmp_path / "keep.yaml", model.record, kept)
    recompiled = afmc.compile("afmc-tiny", "aimc", load_config(tmp_path / "keep.yaml"),
                              output=tmp_path / "again").record
    before = {layer["name"]: layer["placement"] for layer in model.record["layers"]}
    after = {layer["name"]: layer["placement"] for layer in recompiled["layers"]}
    assert set(after) == set(before)
    for name, place in after.items():
        assert place == ("digital" if name in kept else before[name]), name
    assert recompiled["summary"]["analog_layers"] == len(names) - len(kept)
    assert recompiled["config"]["hardware"] == model.record["config"]["hardware"]


def _stored_output(small: Path, tmp_path: Path) -> Path:
    """A copy of the output whose record says it runs as stored (a digital target)."""
    copy = tmp_path / "int8"
    shutil.copytree(small, copy)
    record = json.loads((copy / "afmc.json").read_text())
    record.update(target="int8", runtime="stored")
    (copy / "afmc.json").write_text(json.dumps(record))
    return copy


@pytest.mark.slow
def test_other_runtimes_refuse_a_subset_of_analog_layers(small, tmp_path):
    with pytest.raises(ValueError, match="analog_layers applies to analog targets"):
        load(_stored_output(small, tmp_path)).chip(0, analog_layers=set())
    with pytest.raises(ValueError, match="'nope' is not an analog layer"):
        load(small).chip(0, analog_layers={"nope"})


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--sensitivity", "--budget", "-1"], "--budget '-1'"),
    (["--sensitivity", "--budget", "x%"], "--budget 'x%'"),
    (["--budget", "1%"], "--budget and --rules go with --sensitivity"),
    (["--sensitivity", "--rules", "k.yaml"], "--rules needs --budget"),
    (["--sensitivity", "--drift", "1y"], "--drift and --sensitivity are separate"),
    (["--sensitivity", "--task", "t.jsonl"], "--task and --sensitivity are separate"),
    (["--sensitivity", "--seed", "-1"], "--seed must be at least 0"),
    (["--sensitivity", "--budget", "1%", "--rules", "/nonexistent/k.yaml"],
     "directory does not exist"),
    (["--sensitivity", "--inputs", "x.npz"], "give either --text or --inputs"),
])
def test_bad_sensitivity_options_are_one_line_errors(small, args, message):
    result = runner.invoke(app, ["eval", str(small), "--text", "stdlib:heldout", *args])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


@pytest.mark.slow
def test_sensitivity_of_a_stored_output_is_a_one_line_error(small, tmp_path):
    result = runner.invoke(app, ["eval", str(_stored_output(small, tmp_path)), "--text",
                                 "stdlib:heldout", "--sensitivity"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --sensitivity: ")
    assert "the int8 target has no analog chips; per-layer sensitivity needs" in lines[0]


def test_sensitivity_of_a_model_that_is_not_a_language_model(tmp_path):
    """--inputs: the metric is the relative error of the outputs, delta that error."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                                 torch.nn.Linear(32, 4)).eval()
    calibration = [(torch.randn(4, 16),) for _ in range(4)]
    out = afmc.compile(module, "aimc", example_inputs=calibration[0], calibration=calibration,
                       output=tmp_path / "mlp").output
    model = load(out)
    x = np.random.default_rng(3).standard_normal((8, 16)).astype(np.float32)
    np.savez(tmp_path / "x.npz", **{model.record["inputs"][0]: x})
    result = runner.invoke(app, ["eval", str(out), "--inputs", str(tmp_path / "x.npz"),
                                 "--sensitivity", "--budget", "100%"])
    assert result.exit_code == 0, result.output
    (written,) = (out / "eval").glob("sensitivity-*.json")
    report = json.loads(written.read_text())
    assert report["metric"] == "relative_error" and report["fp"] is None
    fp = model.fp_view().run(x).astype(np.float64)

    def error(layers: list[str] | None) -> float:
        got = model.chip(0, analog_layers=layers).run(x).astype(np.float64)
        return float(np.linalg.norm(got - fp) / np.linalg.norm(fp))

    assert len(report["layers"]) == 2
    for layer in report["layers"]:
        assert layer["value"] == layer["delta"] == layer["relative_error"]
        assert layer["value"] == pytest.approx(error([layer["name"]]), rel=1e-6)
    assert report["all_analog"] == pytest.approx(error(None), rel=1e-6)
    assert report["keep_digital"] == [] and report["budget"] == 1.0
    assert (out / "eval" / "keep-digital.yaml").is_file()

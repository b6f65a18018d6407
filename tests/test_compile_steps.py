"""The compile driver's named steps (afmc.compiler.driver): --to-step stops after a step
and leaves the model as that step left it, for both front ends; --save-intermediate saves
the graph after every pass, as .pt2 (torch program) or .onnx (ONNX input)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from analog_models import UpDownMLP

import afmc
from afmc.compiler.driver import STEPS, check_step
from afmc.config import load_config

pytestmark = pytest.mark.slow




@pytest.fixture(scope="module")
def onnx_mlp(tmp_path_factory) -> tuple:
    """An MLP exported the default way (dynamo, external data), and calibration beside it."""
    root = tmp_path_factory.mktemp("mlp")
    path = root / "model.onnx"
    torch.onnx.export(UpDownMLP().eval(), (torch.randn(2, 16),), path, dynamo=True,
                      input_names=["x"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    calib = root / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((8, 16), dtype=np.float32))
    return path, calib


def _graph_bytes(model: onnx.ModelProto) -> bytes:
    """The graph, weights and functions without any metadata (records, stack traces)."""
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    del copy.metadata_props[:]
    for node in [*copy.graph.node, *(n for f in copy.functions for n in f.node)]:
        del node.metadata_props[:]
    return copy.SerializeToString()


def test_the_steps_are_named_in_order_and_a_wrong_name_is_an_error():
    assert STEPS == ("capture", "data", "passes", "lower", "target-lower", "fidelity",
                     "write")
    with pytest.raises(ValueError, match=r"unknown compile step 'lowering'; the steps: "
                                         r"capture, data, passes, lower, target-lower"):
        check_step("lowering")


def test_onnx_input_saves_every_pass_and_stops_after_passes(onnx_mlp, tmp_path):
    path, calib = onnx_mlp
    out = tmp_path / "out"
    result = afmc.compile(path, "aimc", calibration=calib, output=out, to_step="passes",
                          save_intermediate=True, progress=False)
    record = json.loads((out / "afmc.json").read_text())
    ran = [step["name"] for step in record["passes"]]
    assert record["to_step"] == "passes" and ran[0] == "load" and "lower" not in ran
    saved = sorted(p.name for p in (out / "intermediate").glob("*.onnx"))
    passes = [name for name in ran if name not in ("load", "fp-reference")]
    assert saved == sorted([f"{n:02d}-{name}.onnx" for n, name in enumerate(passes, 1)]
                           + ["passes.onnx"])
    assert sorted(p.name for p in (out / "intermediate").glob("*.json")) == [
        name.replace(".onnx", ".json") for name in saved]  # each graph's layer records
    assert not (out / "model.onnx").exists() and result.model is None
    last = onnx.load(str(out / "intermediate" / saved[-2]))
    assert _graph_bytes(last) == _graph_bytes(onnx.load(str(out / "intermediate/passes.onnx")))
    assert any(node.domain == "afmc" for node in last.graph.node), "analog nodes inserted"


@pytest.mark.parametrize("target", ["aimc", "int8"])
def test_stopping_after_target_lower_leaves_the_model_the_full_compile_writes(
        onnx_mlp, tmp_path, target):
    path, calib = onnx_mlp
    afmc.compile(path, target, calibration=calib, output=tmp_path / "full", progress=False)
    afmc.compile(path, target, calibration=calib, output=tmp_path / "part",
                 to_step="target-lower", progress=False)
    full = onnx.load(str(tmp_path / "full/model.onnx"))
    part = onnx.load(str(tmp_path / "part/intermediate/target-lower.onnx"))
    assert _graph_bytes(part) == _graph_bytes(full)
    x = np.random.default_rng(3).standard_normal((4, 16), dtype=np.float32)
    runs = [ort.InferenceSession(str(p)).run(None, {"x": x})[0] for p in (
        tmp_path / "full/model.onnx", tmp_path / "part/intermediate/target-lower.onnx")]
    np.testing.assert_array_equal(*runs)


def test_torch_program_stopped_after_capture_is_the_module(tmp_path):
    module = UpDownMLP().eval()
    x = torch.randn(3, 16)
    out = tmp_path / "out"
    afmc.compile(module, "aimc", example_inputs=(x,), output=out, to_step="capture",
                 progress=False)
    record = json.loads((out / "afmc.json").read_text())
    assert record["to_step"] == "capture" and record["source"] == "torch:UpDownMLP"
    program = torch.export.load(out / "intermediate/capture.pt2").module()
    torch.testing.assert_close(program(x), module(x), rtol=0, atol=0)


def test_the_command_line_stops_after_a_step_and_says_where_the_model_is(onnx_mlp, tmp_path):
    from typer.testing import CliRunner

    from afmc.cli import app

    path, calib = onnx_mlp
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["compile", str(path), "-o", str(out), "--calib",
                                      str(calib), "--to-step", "lower"])
    assert result.exit_code == 0, result.stderr
    said = f"stopped after step lower: the model as it left it is in {out / 'intermediate'}"
    assert "".join(said.split()) in "".join(result.stdout.split())  # rich wraps the path
    assert (out / "intermediate/lower.onnx").is_file()


def _layers(record: dict) -> list[dict]:
    """The layer records less the ONNX initializer names lowering gives (node names)."""
    return [{key: value for key, value in layer.items() if key != "onnx_weight"}
            for layer in record["layers"]]


def _outputs(out) -> np.ndarray:
    x = np.random.default_rng(3).standard_normal((4, 16), dtype=np.float32)
    return ort.InferenceSession(str(out / "model.onnx")).run(None, {"x": x})[0]


@pytest.mark.parametrize("front_end", ["torch", "onnx"])
def test_a_compile_stopped_after_its_passes_resumes_at_lower(onnx_mlp, tmp_path, front_end):
    """--to-step passes, then --from-step lower in the same OUT: the passes are not run
    again (their graph and records are read back), and the output is the uninterrupted
    compile's: the same layer records, fidelity, outputs on ONNX Runtime, pass list."""
    path, calib = onnx_mlp
    model = path if front_end == "onnx" else UpDownMLP().eval()
    options = {"calibration": calib, "progress": False}
    if front_end == "torch":
        options["example_inputs"] = (torch.randn(2, 16),)
    full = afmc.compile(model, "aimc", output=tmp_path / "full", **options).record
    out = tmp_path / "resumed"
    afmc.compile(model, "aimc", output=out, to_step="passes", **options)
    assert (out / "intermediate" / "passes.json").is_file()
    resumed = afmc.compile(model, "aimc", output=out, from_step="lower", **options).record
    assert "to_step" not in resumed and not (out / "intermediate").exists()
    assert _layers(resumed) == _layers(full)
    assert resumed["fidelity"] == full["fidelity"]
    names = [step["name"] for step in resumed["passes"]]
    assert [name for name in names if name != "read-back"] == [
        step["name"] for step in full["passes"]]
    np.testing.assert_array_equal(_outputs(out), _outputs(tmp_path / "full"))


def test_resuming_is_refused_where_it_cannot_continue(onnx_mlp, tmp_path):
    path, calib = onnx_mlp
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--from-step fidelity: a compile resumes at lower"):
        afmc.compile(path, "aimc", calibration=calib, output=out, from_step="fidelity",
                     progress=False)
    with pytest.raises(ValueError, match="is not the record of a compile stopped by "
                                         "--to-step passes"):
        afmc.compile(path, "aimc", calibration=calib, output=out, from_step="lower",
                     progress=False)
    afmc.compile(path, "aimc", calibration=calib, output=out, to_step="passes",
                 progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        afmc.compile(path, "aimc", load_config(None, ["hardware.out_res=16"]),
                     calibration=calib, output=out, from_step="lower", progress=False)
    with pytest.raises(ValueError, match="was stopped compiling onnx:.*, not torch:UpDownMLP"):
        afmc.compile(UpDownMLP().eval(), "aimc", calibration=calib, output=out, from_step="lower",
                     example_inputs=(torch.randn(2, 16),), progress=False)
    assert json.loads((out / "afmc.json").read_text())["to_step"] == "passes"  # left as is

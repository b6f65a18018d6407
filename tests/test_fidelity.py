"""The fidelity check that ends a compile: held-back data, numbers equal to an independent
ONNX Runtime evaluation of the written files, and a warning naming the worst layers."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from analog_models import UpDownMLP
from typer.testing import CliRunner

import afmc.api
from afmc.api import load
from afmc.cli import app
from afmc.compiler.fidelity import LayerProbe
from afmc.config import load_config
from afmc.data.calibration import split_text
from afmc.data.tokenizer import ByteTokenizer
from afmc.eval.perplexity import perplexity
from afmc.ops.analog_linear import ANALOG_LINEAR
from afmc.passes.layers import META_KEY

SETTINGS = ["calibration.seq_len=32", "calibration.max_tokens=256"]


def _held_back_windows(text: str) -> np.ndarray:
    config = load_config(None, SETTINGS).calibration
    batches, held = split_text(ByteTokenizer(), text, "calib", config, 2)
    assert sum(len(b) for b in batches) == 256 // 32 and len(held[0]) == 2
    return held[0]


@pytest.mark.slow
def test_fidelity_matches_an_independent_evaluation(model_dirs, calibration_text, tmp_path):
    out = tmp_path / "out"
    result = afmc.api.compile(model_dirs["llama"], "aimc", load_config(None, SETTINGS),
                              calibration=calibration_text, output=out)
    fidelity = json.loads((out / "afmc.json").read_text())["fidelity"]
    assert fidelity == result.record["fidelity"]
    assert fidelity["data"].startswith("1 held-back")
    windows = _held_back_windows(calibration_text.read_text())
    fp = perplexity(load(out).fp_view().run, windows)
    noise_free = perplexity(load(out).chip(None).run, windows)
    chip = perplexity(load(out).chip(0).run, windows)
    assert fidelity["fp_perplexity"] == pytest.approx(fp, rel=1e-4)
    assert fidelity["noise_free"]["perplexity"] == pytest.approx(noise_free, rel=1e-3)
    assert fidelity["chip_0"]["perplexity"] == pytest.approx(chip, rel=1e-3)
    assert fidelity["noise_free"]["perplexity"] != fidelity["chip_0"]["perplexity"]
    names = {layer.name for layer in result.layers if layer.placement == "analog"}
    worst = fidelity["worst_layers"]
    assert len(worst) == 5 and {layer["name"] for layer in worst} <= names
    errors = [layer["relative_error"] for layer in worst]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0
    assert fidelity["warning"] is None


@pytest.mark.slow
def test_digital_target_is_checked_through_onnx_runtime(model_dirs, calibration_text):
    result = afmc.api.compile(model_dirs["qwen2"], "int8", load_config(None, SETTINGS),
                              calibration=calibration_text)
    fidelity = result.record["fidelity"]
    assert "chip_0" not in fidelity and "worst_layers" not in fidelity
    assert 0 < fidelity["noise_free"]["relative_error"] < 0.2
    assert fidelity["noise_free"]["perplexity"] == pytest.approx(
        fidelity["fp_perplexity"], rel=0.05)


@pytest.mark.slow
def test_a_far_result_warns_with_the_worst_layers_on_the_cli(model_dirs, calibration_text,
                                                            tmp_path):
    """A 4-bit ADC: the check prints its figures and one warning line naming the worst
    layers (a FidelityWarning), which the record keeps too."""
    out = tmp_path / "cli"
    args = ["compile", str(model_dirs["llama"]), "-o", str(out), "--calib",
            str(calibration_text)]
    for setting in [*SETTINGS, "hardware.out_res=4", "hardware.out_bound=1"]:
        args += ["--set", setting]
    outcome = CliRunner().invoke(app, args)
    assert outcome.exit_code == 0, outcome.output
    assert "fidelity on 1 held-back calibration batch(es): FP perplexity" in outcome.output
    said = " ".join(outcome.output.split())
    assert "warning: the compiled model is far from FP" in said
    assert "worst layers by output error: lm.model.layers" in said
    warning = json.loads((out / "afmc.json").read_text())["fidelity"]["warning"]
    assert "relative output error" in warning and "worst layers by output error" in warning


@pytest.mark.slow
def test_no_check_without_data_or_when_disabled(model_dirs):
    """No calibration data: no check (held_back=0 disables it too: the no-check case of
    test_the_fp_model_is_let_go_before_the_passes)."""
    result = afmc.api.compile(model_dirs["llama"], "int4", load_config(None, []))
    assert "fidelity" not in result.record


@pytest.mark.slow
@pytest.mark.parametrize("settings", [SETTINGS, [*SETTINGS, "calibration.held_back=0"]],
                         ids=["checked", "no-check"])
def test_the_fp_model_is_let_go_before_the_passes(model_dirs, calibration_text, monkeypatch,
                                                  settings):
    """With or without the fidelity check, no pass runs while the front end holds the FP
    module, which keeps the original of every weight the passes replace (at 1.1B
    parameters, 4.4 GB more peak memory)."""
    from afmc.compiler.frontends.torch_program import TorchFrontend

    holding = []
    run_pass = TorchFrontend.run_pass

    def probe(self, *args, **kwargs):
        holding.append(self.captured.fp_module is not None)
        return run_pass(self, *args, **kwargs)

    monkeypatch.setattr(TorchFrontend, "run_pass", probe)
    result = afmc.api.compile(model_dirs["llama"], "aimc", load_config(None, settings),
                              calibration=calibration_text)
    assert holding and not any(holding)
    assert ("fidelity" in result.record) == (settings is SETTINGS)


def test_advice_names_only_the_levers_not_already_on():
    from afmc.compiler.fidelity import advice

    defaults = load_config(None).model_dump(mode="json")
    ran = [{"name": name, "modified": True} for name in
           ("place-layers", "chip-smooth-inputs", "insert-analog-linear", "split-outliers",
            "calibrate")]
    text = advice({"runtime": "analog", "config": defaults, "passes": ran})
    for lever in ("calibration.method", "smooth-inputs", "split-outliers"):
        assert lever not in text
    assert "devices_per_weight" in text and "placement.lm_head=digital" in text
    lean = load_config(None, ["calibration.method=max", "hardware.devices_per_weight=2",
                              "placement.lm_head=digital"]).model_dump(mode="json")
    text = advice({"runtime": "analog", "config": lean, "passes": ran[:1] + ran[2:3]})
    assert "calibration.method=search" in text and "chip-smooth-inputs" in text
    assert "split-outliers" in text
    assert "devices_per_weight" not in text and "lm_head" not in text
    assert advice({"runtime": "stored", "config": defaults, "passes": ran}).startswith(
        "keep the worst layers digital")
    # an ONNX compile: its passes' names, and its own names in the advice
    onnx_ran = [{"name": f"onnx-{step['name']}", "modified": True} for step in ran]
    assert "split-outliers" not in advice({"runtime": "analog", "config": defaults,
                                           "passes": onnx_ran})
    text = advice({"runtime": "analog", "config": defaults, "passes": onnx_ran[:1]})
    assert "the onnx-chip-smooth-inputs pass" in text and "the onnx-split-outliers pass" in text




class _TorchLayerErrors(torch.fx.Interpreter):
    """The peer of the runtime's ranking: each afmc analog_linear of a torch program, run
    by torch, against x W^T."""

    def __init__(self, program: torch.fx.GraphModule) -> None:
        super().__init__(program)
        self.errors: dict[str, float] = {}

    def run_node(self, node: torch.fx.Node):
        out = super().run_node(node)
        if node.op == "call_function" and node.target is ANALOG_LINEAR:
            x, weight = (self.env[arg] for arg in node.args[:2])
            exact = torch.nn.functional.linear(x, weight)
            self.errors[node.meta[META_KEY].name] = float(
                torch.linalg.norm(out - exact) / torch.linalg.norm(exact))
        return out


@pytest.mark.slow
def test_both_front_ends_rank_their_worst_layers_as_torch_does(tmp_path):
    """The same MLP as an ONNX export (the default way) and as a module, calibrated on the
    same data: one check on the lowered file through ONNX Runtime gives both the same
    noise-free and chip-0 errors and the same worst layers, and each layer's error (its
    input and output fetched from ONNX Runtime) equals the torch program's own, layer by
    layer (an fx.Interpreter running the afmc op in torch)."""
    module = UpDownMLP().eval()
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(module, (torch.randn(2, 16),), path, dynamo=True, input_names=["x"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((64, 16), dtype=np.float32))
    onnx_check = afmc.api.compile(path, "aimc", calibration=calib,
                                  progress=False).record["fidelity"]
    compiled = afmc.api.compile(module, "aimc", example_inputs=(torch.randn(2, 16),),
                                calibration=calib, progress=False)
    torch_check = compiled.record["fidelity"]
    for key in ("noise_free", "chip_0"):
        assert onnx_check[key]["relative_error"] == pytest.approx(
            torch_check[key]["relative_error"], rel=1e-5)
    assert [layer["name"] for layer in onnx_check["worst_layers"]] == ["down", "up"] == [
        layer["name"] for layer in torch_check["worst_layers"]]
    for got, want in zip(onnx_check["worst_layers"], torch_check["worst_layers"], strict=True):
        assert got["relative_error"] == pytest.approx(want["relative_error"], rel=1e-5)

    batch = np.random.default_rng(1).standard_normal((8, 16), dtype=np.float32)
    probe = LayerProbe(compiled.model, compiled.record["layers"])
    proto = ir.serde.serialize_model(compiled.model)
    probe.add_outputs(proto)
    ranked = probe.ranked(ort.InferenceSession(proto.SerializeToString()), (batch,), ["x"])
    reference = _TorchLayerErrors(compiled.program)
    with torch.no_grad():
        reference.run(torch.from_numpy(batch))
    assert {layer["name"]: pytest.approx(layer["relative_error"], rel=1e-4)
            for layer in ranked} == reference.errors
    assert min(reference.errors.values()) > 1e-4  # the DAC and ADC do change each output

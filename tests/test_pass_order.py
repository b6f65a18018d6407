"""Passes refuse to run out of order (passes.stages), at both graph levels.

A pass list in the wrong order used to compile without a word: calibrate before
insert-analog-linear calibrated nothing, split-outliers after calibrate left ranges
measured on the unsplit layers, smoothing after the analog ops smoothed nothing. Each
pass now declares what it needs; torch.fx's and onnx_ir's `requires` hook checks it
before the pass runs, and the error names the pass, the layers and what to run first.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from analog_models import UpDownMLP
from typer.testing import CliRunner

import afmc.api
from afmc.cli import app
from afmc.passes.stages import PassOrderError

EXAMPLE = (torch.randn(2, 16),)




def _compile(model, passes: list[str], **options):
    return afmc.api.compile(model, "aimc", passes=passes, progress=False, **options)


@pytest.mark.parametrize(("passes", "message"), [
    (["calibrate"], "pass calibrate: no layer is placed yet; run place-layers before it"),
    (["insert-analog-linear"],
     "pass insert-analog-linear: no layer is placed yet; run place-layers before it"),
    (["place-layers", "calibrate", "insert-analog-linear"],
     "pass calibrate: analog layer(s) up, down hold no analog op yet; run "
     "insert-analog-linear before it"),
    (["place-layers", "insert-analog-linear", "chip-smooth-inputs"],
     "pass chip-smooth-inputs must run before insert-analog-linear: analog layer(s) up, "
     "down already hold their analog op"),
    (["place-layers", "insert-analog-linear", "fold-norms"],
     "pass fold-norms must run before insert-analog-linear"),
    (["place-layers", "insert-analog-linear", "calibrate", "split-outliers"],
     "pass split-outliers must run before calibrate: the input ranges of up, down are "
     "already set"),
], ids=["calibrate-first", "insert-unplaced", "calibrate-before-insert", "smooth-after-insert",
        "fold-after-insert", "split-after-calibrate"])
def test_torch_passes_out_of_order_are_refused(passes, message):
    with pytest.raises(PassOrderError, match=re.escape(message)):
        _compile(UpDownMLP().eval(), passes, example_inputs=EXAMPLE)


def test_torch_passes_in_order_compile_and_calibrate_every_layer():
    result = _compile(UpDownMLP().eval(), ["place-layers", "insert-analog-linear",
                                      "split-outliers", "calibrate"], example_inputs=EXAMPLE)
    assert [(layer.name, layer.placement, bool(layer.calibrated)) for layer in result.layers] \
        == [("up", "analog", True), ("down", "analog", True)]


def test_a_model_without_layers_to_act_on_is_not_refused():
    """No static-weight layer: nothing is out of order (the compile warns as before)."""
    model = torch.nn.Sequential(torch.nn.ReLU()).eval()
    with pytest.warns(UserWarning, match="no layer runs on the aimc target"):
        _compile(model, ["calibrate"], example_inputs=EXAMPLE)


@pytest.fixture(scope="module")
def onnx_mlp(tmp_path_factory):
    folder = tmp_path_factory.mktemp("order")
    path = folder / "mlp.onnx"
    torch.onnx.export(UpDownMLP().eval(), EXAMPLE, path, dynamo=True, input_names=["x"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    calib = folder / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((32, 16), dtype=np.float32))
    return path, calib


@pytest.mark.parametrize(("passes", "message"), [
    (["onnx-place-layers", "onnx-calibrate"],
     "pass onnx-calibrate: analog layer\\(s\\) .* hold no analog op yet; run "
     "onnx-insert-analog-linear before it"),
    (["onnx-place-layers", "onnx-insert-analog-linear", "onnx-calibrate",
      "onnx-chip-smooth-inputs"],
     "pass onnx-chip-smooth-inputs must run before onnx-calibrate"),
    (["onnx-insert-analog-linear"],
     "pass onnx-insert-analog-linear: no layer is placed yet; run onnx-place-layers"),
], ids=["calibrate-before-insert", "smooth-after-calibrate", "insert-unplaced"])
def test_onnx_passes_out_of_order_are_refused(onnx_mlp, passes, message):
    path, calib = onnx_mlp
    with pytest.raises(PassOrderError, match=message):
        _compile(path, passes, calibration=calib)


def test_the_cli_names_the_pass_and_its_prerequisite_in_one_line(onnx_mlp, tmp_path):
    path, calib = onnx_mlp
    out = tmp_path / "out"
    outcome = CliRunner().invoke(app, ["-q", "compile", str(path), "--target", "aimc",
                                       "--calib", str(calib), "-o", str(out), "--passes",
                                       "onnx-place-layers,onnx-calibrate"])
    assert outcome.exit_code == 1
    lines = outcome.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: pass onnx-calibrate: analog layer")
    assert lines[0].endswith("run onnx-insert-analog-linear before it")
    assert not out.exists()

"""calibrate (FX) and onnx-calibrate (ONNX): static input ranges from the FP activations,
the methods against their definitions, and calibration data from text, .npy, .npz and .pt
files. A calibration sets the ranges' values only: the graph and its FP view stay as they
were. (calibration.method=search: tests/test_range_search.py.)"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch
from analog_models import (
    LayerNormMLP,
    TwoInputMLP,
    mlp_batches,
    random_weights,
    relu_mlp_graph,
    run_onnx,
    two_input_data,
)

import afmc.api
from afmc.capture import capture_module
from afmc.config import load_config
from afmc.ops.analog_linear import ANALOG_LINEAR
from afmc.passes.fx.calibrate import AnalogInputInterpreter, CalibrateInputRanges
from afmc.passes.fx.insert_analog_linear import InsertAnalogLinear
from afmc.passes.fx.place_layers import PlaceLayers
from afmc.passes.onnx.calibrate import CalibrateOnnxInputRanges
from afmc.passes.onnx.insert_analog_linear import InsertOnnxAnalogLinear
from afmc.passes.onnx.place_layers import PlaceOnnxLayers
from afmc.passes.onnx.static_layers import onnx_layer_records
from afmc.runtime.views import fp_reference

# ------------------------------------------------------------------ FX: calibrate


def test_calibrate_sets_each_slice_to_its_max_and_leaves_the_graph():
    """Method max: each slice's range is the largest |x| of its FP input over the batches;
    the graph and its FP view are unchanged, and the analog outputs come closer to FP."""
    torch.manual_seed(0)
    module = LayerNormMLP().eval()
    batches = mlp_batches(3)
    program = capture_module(module, (batches[0],)).graph_module
    config = load_config(None, ["hardware.max_in=16", "calibration.method=max"])
    for step in (PlaceLayers(config), InsertAnalogLinear(config)):
        step(program)
    before = program.graph.python_code("self").src
    fp_view = AnalogInputInterpreter(program, lambda *_: None)
    with torch.no_grad():
        fp = fp_view.run(batches[0])
        uncalibrated = program(batches[0])
    with pytest.raises(ValueError, match="no calibration data"):
        CalibrateInputRanges(config)(program)
    with pytest.raises(ValueError, match="holds no batch"):
        CalibrateInputRanges(config, [])(program)
    seen: list[int] = []

    assert CalibrateInputRanges(config, [(b,) for b in batches], progress=seen.append)(
        program).modified

    assert seen == [1, 2, 3]
    assert program.graph.python_code("self").src == before
    analog = program.graph.find_nodes(op="call_function", target=ANALOG_LINEAR)
    ranges = [program.get_parameter(node.args[2].target).detach() for node in analog]
    x = torch.cat(batches)
    with torch.no_grad():
        hidden = module.norm(torch.relu(module.fc1(x)))
    expected = [[x[:, :10].abs().max(), x[:, 10:].abs().max()],
                [part.abs().max() for part in hidden.split(12, dim=-1)]]
    for got, want in zip(ranges, expected, strict=True):
        torch.testing.assert_close(got, torch.stack(want), rtol=1e-6, atol=0)
    assert all(node.meta["afmc"].calibrated == "max" for node in analog)
    with torch.no_grad():
        assert torch.equal(fp_view.run(batches[0]), fp)
        calibrated = program(batches[0])
    assert (calibrated - fp).abs().max() < 0.5 * (uncalibrated - fp).abs().max()


def _ranges(result) -> list[torch.Tensor]:
    return [result.program.get_parameter(n.args[2].target).detach()
            for n in result.program.graph.nodes if n.target is ANALOG_LINEAR]


def _compile(method: str, calibration, **overrides):
    torch.manual_seed(0)
    settings = [f"calibration.method={method}", "hardware.max_in=16",
                "calibration.batch_size=16"]
    settings += [f"calibration.{k}={v}" for k, v in overrides.items()]
    return afmc.api.compile(TwoInputMLP().eval(), "aimc", load_config(None, settings),
                            example_inputs=tuple(t[:4] for t in two_input_data()),
                            calibration=calibration,
                            skip=["chip-smooth-inputs", "split-outliers"])


@pytest.mark.slow
def test_methods_follow_their_definitions():
    x, extra = two_input_data()
    batches = [(x[i:i + 16], extra[i:i + 16]) for i in range(0, 64, 16)]
    first_slices = torch.split(x, [12, 12], dim=-1)
    maximum = _ranges(_compile("max", batches))[0]
    torch.testing.assert_close(maximum, torch.stack([s.abs().max() for s in first_slices]))
    percentile = _ranges(_compile("percentile", batches, percentile=90.0))[0]
    expected = [np.percentile(s.abs().numpy(), 90.0) for s in first_slices]
    np.testing.assert_allclose(percentile.numpy(), expected, rtol=1e-5)
    kappa = _ranges(_compile("kappa-std", batches, kappa=3.0))[0]
    stds = [[float(b[0][:, :12].std()), float(b[0][:, 12:].std())] for b in batches]
    np.testing.assert_allclose(kappa.numpy(), 3.0 * np.mean(stds, axis=0), rtol=1e-5)
    assert bool((percentile < maximum).all())


@pytest.mark.slow
def test_tensor_files(tmp_path):
    x, extra = two_input_data()
    reference = _ranges(_compile("max", [(x, extra)]))
    np.savez(tmp_path / "calib.npz", x=x.numpy(), extra=extra.numpy())
    torch.save({"x": x, "extra": extra}, tmp_path / "calib.pt")
    for name in ("calib.npz", "calib.pt"):
        got = _ranges(_compile("max", tmp_path / name))
        for a, b in zip(got, reference, strict=True):
            torch.testing.assert_close(a, b)
    np.save(tmp_path / "one.npy", x.numpy())
    with pytest.raises(ValueError, match="one array given"):
        _compile("max", tmp_path / "one.npy")
    np.savez(tmp_path / "partial.npz", x=x.numpy())
    with pytest.raises(ValueError, match=r"\(missing \['extra'\]\)"):
        _compile("max", tmp_path / "partial.npz")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="bad.npy: cannot read"):
        _compile("max", tmp_path / "bad.npy")


@pytest.mark.slow
def test_text_calibration_uses_the_tokenizer(model_dirs, calibration_text):
    result = afmc.api.compile(str(model_dirs["llama"]), "aimc", calibration=calibration_text)
    assert result.record["calibration"] == str(calibration_text)
    assert all(layer.calibrated == "search" for layer in result.layers)


@pytest.mark.slow
def test_multi_input_chip(tmp_path):
    x, extra = two_input_data(8)
    torch.manual_seed(0)
    afmc.api.compile(TwoInputMLP().eval(), "aimc", example_inputs=(x[:4], extra[:4]),
                     calibration=[(x, extra)], output=tmp_path / "out")
    chip = afmc.api.load(tmp_path / "out").chip(1)
    assert chip.run(x[:4].numpy(), extra[:4].numpy()).shape == (4, 6)  # captured static shapes
    with pytest.raises(ValueError, match=r"takes 2 input\(s\) \(x, extra\), got 1"):
        chip.run(x.numpy())


# ------------------------------------------------------------------ ONNX: onnx-calibrate


def test_calibrate_sets_ranges_from_fp_activations():
    rng = np.random.default_rng(7)
    w1, w2 = random_weights(rng, 12, 6), random_weights(rng, 6, 3)
    model = relu_mlp_graph(w1, w2, 4)
    config = load_config(None, ["hardware.max_in=8", "calibration.method=max"])
    PlaceOnnxLayers(config)(model)
    InsertOnnxAnalogLinear(config)(model)
    batches = [{"x": rng.standard_normal((4, 12)).astype(np.float32)} for _ in range(3)]
    with pytest.raises(ValueError, match="lacks the model input"):
        CalibrateOnnxInputRanges(config, [{"input": batches[0]["x"]}])(model)
    with pytest.raises(ValueError, match="no batch"):
        CalibrateOnnxInputRanges(config, [])(model)
    seen: list[int] = []
    assert CalibrateOnnxInputRanges(config, batches, progress=seen.append)(model).modified
    assert seen == [1, 2, 3]
    x = np.concatenate([batch["x"] for batch in batches])
    hidden = np.maximum(x @ w1, 0)
    ranges = {
        r.name: model.graph.initializers[r.onnx_input_range].const_value.numpy()
        for r in onnx_layer_records(model)
    }
    np.testing.assert_allclose(
        ranges["fc1"], [np.abs(x[:, :6]).max(), np.abs(x[:, 6:]).max()], rtol=1e-6
    )
    np.testing.assert_allclose(ranges["fc2"], [hidden.max()], rtol=1e-5)
    assert all(r.calibrated == "max" for r in onnx_layer_records(model))


def test_onnx_calibrate_sets_the_range_values_only():
    """The nodes and initializers are those after insertion and the FP view is unchanged;
    the analog outputs come closer to FP."""
    rng = np.random.default_rng(3)
    model = relu_mlp_graph(random_weights(rng, 12, 6), random_weights(rng, 6, 3), 4)
    config = load_config(None, ["hardware.max_in=8", "calibration.method=max"])
    PlaceOnnxLayers(config)(model)
    InsertOnnxAnalogLinear(config)(model)
    batches = [{"x": 3 * rng.standard_normal((4, 12)).astype(np.float32)} for _ in range(2)]
    nodes = [(node.name, node.op_type) for node in model.graph]
    initializers = sorted(model.graph.initializers)
    fp = run_onnx(fp_reference(ir.to_proto(model)), batches[0])[0]
    uncalibrated = run_onnx(model, batches[0])[0]

    assert CalibrateOnnxInputRanges(config, batches)(model).modified

    assert [(node.name, node.op_type) for node in model.graph] == nodes
    assert sorted(model.graph.initializers) == initializers
    np.testing.assert_array_equal(run_onnx(fp_reference(ir.to_proto(model)), batches[0])[0], fp)
    calibrated = run_onnx(model, batches[0])[0]
    assert np.abs(calibrated - fp).max() < 0.5 * np.abs(uncalibrated - fp).max()

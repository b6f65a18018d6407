"""learned-ranges (FX) and onnx-learned-ranges (ONNX): each analog layer takes the input
ranges (and digital input scale, and outlier count) that hardware-aware training learned;
the graph before and after and the FP function kept, at both levels. Then end to end: an
ONNX file trained by `afmc train` compiles for aimc with its learned input ranges.
(A torch model trained and compiled: tests/test_train.py.)

A small CNN (Conv 3x3 + ReLU + Conv 1x1 + global pool + Linear) is exported with
torch.onnx.export(dynamo=True); beside it, as `afmc train` leaves them, its learned ranges
(afmc_ranges.safetensors: one layer with an input scale, one with outlier weights) and
its training record (afmc_training.json, hardware.max_in=16: two input slices for the
3x3 Conv and the Linear). afmc.compile then uses the learned ranges and the trained
configuration instead of calibrating, and the noise-free chip computes what the torch
analog op computes on each layer's im2col view with those ranges, scales and outliers.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import torch
import torch.nn.functional as F
from analog_models import (
    LayerNormMLP,
    mlp_batches,
    random_weights,
    relu_mlp_graph,
    run_onnx,
)
from safetensors.torch import save_file
from torch import nn

from afmc.api import compile as afmc_compile
from afmc.capture import capture_module
from afmc.compiler.trained_model import RANGES_FILE, TRAINING_RECORD
from afmc.config import AfmcConfig, HardwareConfig, load_config
from afmc.io.user_errors import InputWarning
from afmc.ops.analog_linear import ANALOG_LINEAR
from afmc.ops.sparse_outliers import SPARSE_OUTLIERS
from afmc.passes.fx.calibrate import AnalogInputInterpreter
from afmc.passes.fx.insert_analog_linear import InsertAnalogLinear
from afmc.passes.fx.learned_ranges import LearnedRanges
from afmc.passes.fx.place_layers import PlaceLayers
from afmc.passes.layer_score import split_indices
from afmc.passes.layers import META_KEY
from afmc.passes.learned_ranges import META_RANGES
from afmc.passes.onnx.insert_analog_linear import InsertOnnxAnalogLinear
from afmc.passes.onnx.learned_ranges import OnnxLearnedRanges
from afmc.passes.onnx.place_layers import PlaceOnnxLayers
from afmc.passes.onnx.static_layers import onnx_layer_records
from afmc.runtime.compiled import CompiledModel
from afmc.runtime.views import fp_reference
from afmc.targets import get_target
from passes.conftest import assert_equivalent

SIZES = {"stem": [14, 13], "mix": [4], "head": [10, 10]}  # slice_sizes at max_in=16
RANGES = {"stem": [2.5, 1.75], "mix": [1.5], "head": [0.75, 1.25]}
STEM_SCALE = torch.linspace(0.5, 2.0, 27)  # stem's digital input scale, im2col order
HEAD_OUTLIERS = 1


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)  # K = 3 * 3 * 3 = 27
        self.mix = nn.Conv2d(4, 20, 1)  # K = 4
        self.head = nn.Linear(20, 5)  # K = 20

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mix(torch.relu(self.stem(x)))
        return self.head(y.mean(dim=(2, 3)))


def _config() -> AfmcConfig:
    return load_config(None, ["hardware.max_in=16"])


# ------------------------------------------------------------------ the passes, one by one

LEARNED = {  # what afmc train leaves for LayerNormMLP at max_in=16 (fc1: 2 slices, fc2: 3)
    "fc1": torch.tensor([2.5, 1.5]),
    "fc1.input_scale": torch.linspace(0.5, 2.0, 20),
    "fc2": torch.tensor([1.0, 1.25, 0.75]),
    "fc2.outliers_per_slice": torch.tensor([1]),
}


def _fx_analog():
    torch.manual_seed(0)
    module = LayerNormMLP().eval()
    x = mlp_batches(1)[0]
    program = capture_module(module, (x,)).graph_module
    for step in (PlaceLayers(_config()), InsertAnalogLinear(_config())):
        step(program)
    return module, x, program


def test_learned_ranges_sets_ranges_scales_and_outliers_with_fp_kept():
    module, x, program = _fx_analog()
    weight = program.get_parameter("fc1.weight").detach().clone()
    assert not program.graph.find_nodes(op="call_function", target=torch.ops.aten.div.Tensor)
    assert not program.graph.find_nodes(op="call_function", target=SPARSE_OUTLIERS)
    program.meta[META_RANGES] = LEARNED

    assert LearnedRanges(_config())(program).modified

    analog = program.graph.find_nodes(op="call_function", target=ANALOG_LINEAR)
    for node in analog:
        name = node.meta[META_KEY].name
        assert torch.equal(program.get_parameter(node.args[2].target), LEARNED[name])
        assert node.meta[META_KEY].calibrated == "learned"
    fc1, fc2 = analog
    (divide,) = program.graph.find_nodes(op="call_function", target=torch.ops.aten.div.Tensor)
    assert fc1.args[0] is divide and divide.args[1].target == "fc1.input_scale"
    torch.testing.assert_close(program.get_parameter(fc1.args[1].target),
                               weight * LEARNED["fc1.input_scale"])
    (sparse,) = program.graph.find_nodes(op="call_function", target=SPARSE_OUTLIERS)
    assert sparse.args[0] is fc2.args[0] and fc2.meta[META_KEY].outliers_per_slice == 1
    with torch.no_grad():
        assert_equivalent(AnalogInputInterpreter(program, lambda *_: None).run(x), module(x))


def test_learned_ranges_without_a_layer_or_any_ranges_is_an_error():
    _, _, program = _fx_analog()
    with pytest.raises(ValueError, match="learned-ranges: the model has no learned input"):
        LearnedRanges(_config())(program)
    program.meta[META_RANGES] = {"fc1": LEARNED["fc1"]}
    with pytest.raises(ValueError, match="analog layer fc2 has no learned input ranges"):
        LearnedRanges(_config())(program)


def test_onnx_learned_ranges_sets_ranges_scales_and_outliers_with_fp_kept():
    rng = np.random.default_rng(1)
    model = relu_mlp_graph(random_weights(rng, 20, 36), random_weights(rng, 36, 10))
    PlaceOnnxLayers(_config())(model)
    InsertOnnxAnalogLinear(_config())(model)
    feed = {"x": rng.standard_normal((4, 20)).astype(np.float32)}
    fp = run_onnx(fp_reference(ir.to_proto(model)), feed)[0]
    nodes = {node.meta[META_KEY].name: node for node in model.graph
             if node.op_type == "AnalogLinear"}
    weight = nodes["fc1"].inputs[1].const_value.numpy().copy()
    with pytest.raises(ValueError, match="onnx-learned-ranges: the model has no learned"):
        OnnxLearnedRanges(_config())(model)
    assert not {"Div", "SparseOutliers"} & {node.op_type for node in model.graph}
    model.meta[META_RANGES] = LEARNED

    assert OnnxLearnedRanges(_config())(model).modified

    initializers = model.graph.initializers
    for record in onnx_layer_records(model):
        np.testing.assert_array_equal(initializers[record.onnx_input_range].const_value.numpy(),
                                      LEARNED[record.name].numpy())
        assert record.calibrated == "learned"
    (divide,) = [node for node in model.graph if node.op_type == "Div"]
    assert divide.inputs[0].name == "x" and divide.inputs[1].name == "fc1.input_scale"
    assert nodes["fc1"].inputs[0] is divide.outputs[0]
    np.testing.assert_allclose(nodes["fc1"].inputs[1].const_value.numpy(),
                               weight * LEARNED["fc1.input_scale"].numpy(), rtol=1e-6)
    (sparse,) = [node for node in model.graph if node.op_type == "SparseOutliers"]
    assert sparse.inputs[0] is nodes["fc2"].inputs[0]
    got = run_onnx(fp_reference(ir.to_proto(model)), feed)[0]
    np.testing.assert_allclose(got, fp, rtol=1e-5, atol=1e-5 * np.abs(fp).max())


# ------------------------------------------------------------------ a trained ONNX file compiled


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, SmallCNN, np.ndarray]:
    """The CNN's ONNX export (no ranges beside it), the module, and calibration inputs."""
    root = tmp_path_factory.mktemp("cnn")
    torch.manual_seed(0)
    module = SmallCNN().eval()
    inputs = np.random.default_rng(0).standard_normal((4, 3, 6, 6)).astype(np.float32)
    torch.onnx.export(module, (torch.from_numpy(inputs[:2]),), root / "model.onnx",
                      dynamo=True, input_names=["x"], output_names=["logits"], verbose=False)
    np.save(root / "calib.npy", inputs)
    return root, module, inputs


def _trained(folder: Path, exported: tuple[Path, SmallCNN, np.ndarray],
             ranges: dict[str, list[float]] = RANGES) -> Path:
    """A copy of the export with learned ranges and a training record beside it."""
    root = exported[0]
    folder.mkdir()
    for file in root.glob("model.onnx*"):  # the graph and its external data
        shutil.copy(file, folder / file.name)
    learned = {name: torch.tensor(values, dtype=torch.float32)
               for name, values in ranges.items()}
    learned["stem.input_scale"] = STEM_SCALE.clone()
    learned["head.outliers_per_slice"] = torch.tensor([HEAD_OUTLIERS], dtype=torch.int64)
    save_file(learned, folder / RANGES_FILE)
    record = {"config": _config().model_dump(mode="json"), "steps": 0}
    (folder / TRAINING_RECORD).write_text(json.dumps(record), encoding="utf-8")
    return folder / "model.onnx"


def _analog(x: torch.Tensor, weight: torch.Tensor, name: str, hw: HardwareConfig,
            scale: torch.Tensor | None = None, outliers: int = 0) -> torch.Tensor:
    """The trained analog layer's eval forward (train.analog_layer.AnalogTrainingLinear)."""
    sizes, ranges = SIZES[name], torch.tensor(RANGES[name])
    if scale is not None:
        x, weight = x / scale, weight * scale
    sparse = None
    if outliers:
        indices = split_indices(weight, sizes, outliers)
        sparse = indices, weight.gather(1, indices)
        weight = weight.scatter(1, indices, 0.0)
    out = ANALOG_LINEAR(x, weight, ranges, sizes, hw.inp_res, hw.out_res, hw.out_bound,
                        hw.out_noise)
    return out if sparse is None else out + SPARSE_OUTLIERS(x, *sparse)


def _conv(x: torch.Tensor, conv: nn.Conv2d, name: str, hw: HardwareConfig,
          scale: torch.Tensor | None = None) -> torch.Tensor:
    """An analog Conv on its im2col view: [B, L, C*kh*kw] patches through _analog."""
    batch, _, height, width = x.shape
    patches = F.unfold(x, conv.kernel_size, padding=conv.padding).transpose(1, 2)
    weight = conv.weight.reshape(conv.out_channels, -1)
    y = _analog(patches, weight, name, hw, scale) + conv.bias
    return y.transpose(1, 2).reshape(batch, conv.out_channels, height, width)


def _reference(module: SmallCNN, x: np.ndarray, hw: HardwareConfig) -> np.ndarray:
    with torch.no_grad():
        y = torch.relu(_conv(torch.from_numpy(x), module.stem, "stem", hw, STEM_SCALE))
        y = _conv(y, module.mix, "mix", hw).mean(dim=(2, 3))
        out = _analog(y, module.head.weight, "head", hw, outliers=HEAD_OUTLIERS)
        return (out + module.head.bias).numpy()


def _input_ranges(result) -> dict[str, np.ndarray]:
    initializers = result.model.graph.initializers
    return {layer.name: initializers[layer.onnx_input_range].const_value.numpy()
            for layer in result.layers if layer.placement == "analog"}


def test_trained_onnx_compiles_with_learned_ranges_and_trained_config(exported, tmp_path):
    path = _trained(tmp_path / "trained", exported)
    result = afmc_compile(path, "aimc", calibration=exported[0] / "calib.npy",
                          output=tmp_path / "out")
    ran = [step["name"] for step in result.record["passes"]]
    assert [name for name in ran if name.startswith("onnx-")] == list(
        get_target("aimc").trained_onnx_passes)
    assert result.record["config"]["hardware"]["max_in"] == 16, "the trained configuration"
    assert {layer.name: layer.slice_sizes for layer in result.layers} == SIZES
    for name, ranges in _input_ranges(result).items():
        np.testing.assert_array_equal(ranges, np.float32(RANGES[name]))
    assert all(layer.calibrated == "learned" for layer in result.layers)
    head = next(layer for layer in result.layers if layer.name == "head")
    assert head.outliers_per_slice == HEAD_OUTLIERS and head.outlier_values
    divisions = [node for node in result.model.graph if node.op_type == "Div"]
    assert [node.inputs[1].name for node in divisions] == ["stem.input_scale"]

    _, module, inputs = exported
    x = inputs[:2]
    chip = CompiledModel(tmp_path / "out").chip(None).run(x)
    np.testing.assert_allclose(chip, _reference(module, x, _config().hardware),
                               rtol=1e-5, atol=1e-6)


def test_missing_layer_or_slice_count_is_an_error_naming_the_layer(exported, tmp_path):
    calibration = exported[0] / "calib.npy"
    missing = {name: values for name, values in RANGES.items() if name != "mix"}
    with pytest.raises(ValueError, match="analog layer mix has no learned input ranges"):
        afmc_compile(_trained(tmp_path / "missing", exported, missing), "aimc",
                     calibration=calibration)
    three = {**RANGES, "head": [1.0, 1.0, 1.0]}
    with pytest.raises(ValueError, match="head has 3 learned ranges but 2 input slices"):
        afmc_compile(_trained(tmp_path / "three", exported, three), "aimc",
                     calibration=calibration)


def test_recalibrate_calibrates_instead(exported, tmp_path):
    path = _trained(tmp_path / "trained", exported)
    result = afmc_compile(path, "aimc", calibration=exported[0] / "calib.npy",
                          recalibrate=True)
    ran = [step["name"] for step in result.record["passes"]]
    assert "onnx-calibrate" in ran and "onnx-learned-ranges" not in ran
    assert result.record["config"]["hardware"]["max_in"] == 16, "still the trained config"
    for name, ranges in _input_ranges(result).items():
        assert not np.allclose(ranges, RANGES[name])
    assert all(layer.calibrated not in ("", "learned") for layer in result.layers)


def test_recalibrate_without_learned_ranges_is_a_named_warning(exported):
    path = exported[0] / "model.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = afmc_compile(path, "aimc", _config(), calibration=exported[0] / "calib.npy",
                              recalibrate=True)
    assert [str(w.message) for w in caught if issubclass(w.category, InputWarning)] == [
        f"{path}: --recalibrate has nothing to replace (the model holds no learned input "
        "ranges of afmc train); it is calibrated as usual"]
    assert "onnx-calibrate" in [step["name"] for step in result.record["passes"]]

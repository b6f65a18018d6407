"""A small MobileNet-style CNN exported as a user would, through int8 and aimc (issue 26).

The network has what real mobile CNNs have: batch norm after every convolution (with
trained-like statistics, which the exporter's optimizer fuses into the convolution), ReLU6,
a depthwise convolution, a residual Add, global pooling and a linear classifier.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_ir
import onnxruntime as ort
import pytest
import torch
from torch import nn

import afmc.api
from afmc.config import load_config
from afmc.passes.onnx.place_layers import GroupedConvolutionWarning
from afmc.targets.ort_quant import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
    quiet,
)

BATCH = 4
# a torch.onnx export and compiles of a small CNN (module fixture), built once on one
# worker (make test: --dist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group(__name__)]


def _conv_bn(cin: int, cout: int, kernel: int, groups: int = 1, act: bool = True) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups,
                                         bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class TinyMobileNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 16, 3)
        self.expand = _conv_bn(16, 32, 1)
        self.depthwise = _conv_bn(32, 32, 3, groups=32)
        self.project = _conv_bn(32, 16, 1, act=False)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.depthwise(self.expand(x)))
        return self.head(x.mean((2, 3)))


def _trained_like(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            count = module.num_features
            module.running_mean.copy_(torch.randn(count, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(count, generator=generator) * 2 + 0.2)
            module.weight.data.copy_(torch.rand(count, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(count, generator=generator) * 0.3 + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """The exported CNN (dynamo=True, external data), a calibration file and held-out images."""
    folder = tmp_path_factory.mktemp("cnn")
    torch.manual_seed(0)
    model = _trained_like(TinyMobileNet())
    rng = np.random.default_rng(0)
    images = rng.standard_normal((48, 3, 16, 16)).astype(np.float32)
    with quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(images[:BATCH]),),
                          str(folder / "model.onnx"), dynamo=True, external_data=True)
    np.save(folder / "calib.npy", images[:16])
    return folder / "model.onnx", folder / "calib.npy", images[16:]


def _logits(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[start:start + BATCH]})[0]
                           for start in range(0, len(images), BATCH)])


def _relative(got: np.ndarray, fp: np.ndarray) -> float:
    return float(np.linalg.norm(got - fp) / np.linalg.norm(fp))


class _Batches(CalibrationDataReader):
    def __init__(self, name: str, images: np.ndarray) -> None:
        self._next = iter([{name: images[start:start + BATCH]}
                           for start in range(0, len(images), BATCH)])

    def get_next(self) -> dict | None:
        return next(self._next, None)


def test_int8_quantizes_every_convolution_with_its_activation_and_matches_ort(cnn, tmp_path):
    model, calib, held_out = cnn
    out = tmp_path / "int8"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = afmc.api.compile(model, "int8", calibration=calib, output=out)
    layers = {layer.name: layer for layer in result.layers}
    # the exporter fuses each batch norm into its convolution; the layer keeps the conv's name
    assert set(layers) == {"stem.0", "expand.0", "depthwise.0", "project.0", "head"}
    assert {layer.precision for layer in layers.values()} == {"int8"}, "depthwise included"
    graph = onnx.load(str(out / "model.onnx")).graph
    assert not [node for node in graph.node if node.op_type == "Clip"], \
        "every ReLU6 is fused into its convolution's output quantization"
    initializers = {tensor.name: onnx.numpy_helper.to_array(tensor)
                    for tensor in graph.initializer}
    relu6_scales = [float(initializers[node.input[1]]) for node in graph.node
                    if node.op_type == "QuantizeLinear"
                    and int(initializers[node.input[2]]) == 0]
    assert len(relu6_scales) >= 3 and max(relu6_scales) <= 6 / 255 * (1 + 1e-6), \
        "a ReLU6 output is quantized over [0, its largest value <= 6]"

    fp = _logits(model, held_out)
    name = ort.InferenceSession(str(model)).get_inputs()[0].name
    with quiet():
        quantize_static(str(model), str(tmp_path / "ort.onnx"),
                        _Batches(name, np.load(calib)), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    ours = _relative(afmc.api.load(out).run(held_out[:BATCH]), fp[:BATCH])
    theirs = _relative(_logits(tmp_path / "ort.onnx", held_out[:BATCH]), fp[:BATCH])
    assert 0 < ours <= theirs * 1.05, (ours, theirs)


def test_aimc_keeps_grouped_convolutions_digital_with_one_warning(cnn, tmp_path):
    model, calib, _ = cnn
    with pytest.warns(GroupedConvolutionWarning) as caught:
        result = afmc.api.compile(model, "aimc", calibration=calib, output=tmp_path / "aimc")
    grouped = [warning for warning in caught if warning.category is GroupedConvolutionWarning]
    assert len(grouped) == 1
    assert str(grouped[0].message).startswith("1 grouped convolution(s) stay digital")
    assert "depthwise.0" in str(grouped[0].message)
    placements = {layer.name: layer.placement for layer in result.layers}
    assert placements == {"stem.0": "analog", "expand.0": "analog", "depthwise.0": "digital",
                          "project.0": "analog", "head": "analog"}


# DAC and ADC so fine that the analog op is the float product: the chip must then equal FP
EXACT = ["calibration.method=max", "hardware.inp_res=16777216", "hardware.out_res=16777216",
         "hardware.out_bound=1000"]


def test_aimc_maps_grouped_convolutions_block_diagonally_when_asked(cnn, tmp_path):
    """placement.grouped_convs=analog: the depthwise conv is a 32 x 288 block-diagonal
    crossbar matrix on its im2col patch, exact in FP (the noise-free chip at near-infinite
    DAC/ADC resolution equals the exported model), with one tile for its one slice."""
    model, calib, _ = cnn
    config = load_config(None, ["placement.grouped_convs=analog", *EXACT])
    with warnings.catch_warnings():
        warnings.simplefilter("error", GroupedConvolutionWarning)
        result = afmc.api.compile(model, "aimc", config, calibration=calib,
                                  output=tmp_path / "aimc", skip=["onnx-split-outliers"])
    layers = {layer.name: layer for layer in result.layers}
    depthwise = layers["depthwise.0"]
    assert (depthwise.placement, depthwise.groups, depthwise.in_features) == ("analog", 32, 288)
    assert depthwise.slice_sizes == [288] and depthwise.tiles == 1
    compiled = afmc.api.load(tmp_path / "aimc")
    assert compiled.record["summary"]["analog_weights"] == sum(
        layer.in_features * layer.out_features // layer.groups for layer in layers.values())
    stored = onnx.numpy_helper.to_array(
        compiled.runtime.initializers[depthwise.onnx_weight], str(tmp_path / "aimc"))
    assert stored.shape == (32, 288)
    outside = ~np.kron(np.eye(32, dtype=bool), np.ones((1, 9), bool))
    assert not stored[outside].any() and np.count_nonzero(stored) > 200
    x = np.load(calib)[:BATCH]  # inside the calibrated (max) ranges: no input clipped
    fp = _logits(model, x)
    assert _relative(compiled.chip(None).run(x), fp) < 1e-4
    assert _relative(compiled.chip(0).run(x), fp) > 1e-3, "chips program it with noise"


def test_chips_of_an_exported_cnn_run_on_the_fused_kernels(cnn, tmp_path):
    """The analog outputs of a torch.onnx export are typed, so onnxruntime takes the fused
    bodies (it cannot infer a type through afmc.kernels ops): no fallback, same numbers."""
    from afmc.runtime import fused

    if not fused.enabled():
        pytest.skip("no C++ compiler: the fused kernels are not built here")
    model, calib, held_out = cnn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        afmc.api.compile(model, "aimc", calibration=calib, output=tmp_path / "aimc")
    compiled = afmc.api.load(tmp_path / "aimc")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a KernelWarning (fallback) fails the test
        fused_out = compiled.chip(1).run(held_out[:BATCH])
    assert compiled.runtime.kernels
    compiled.runtime.kernels = False
    np.testing.assert_array_equal(compiled.chip(1).run(held_out[:BATCH]), fused_out)


def test_onnx_split_outliers_keeps_the_fp_view_and_programs_the_dense_part(cnn, tmp_path):
    """onnx-split-outliers on a torch.onnx export: the split file's FP view is bit for bit
    the unsplit one, chips program only the dense part, a plain onnxruntime runs the file
    from another folder and matches the noise-free chip."""
    model, calib, held_out = cnn
    outs = {}
    for name, budget in (("split", 0.05), ("whole", 0.0)):
        config = load_config(None, [f"outliers.budget={budget}"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # smoothing scores the split it expects, so it may choose otherwise: left out
            afmc.api.compile(model, "aimc", config, calibration=calib, output=tmp_path / name,
                             skip=["onnx-chip-smooth-inputs"])
        outs[name] = afmc.api.load(tmp_path / name)
    split = outs["split"]
    layers = [layer for layer in split.record["layers"] if layer.get("outlier_values")]
    assert layers and split.record["summary"]["outliers"]["weights"] == sum(
        layer["outlier_weights"] for layer in layers)
    steps = {step["name"]: step for step in split.record["passes"]}
    assert steps["onnx-split-outliers"]["modified"]
    x = held_out[:BATCH]
    np.testing.assert_array_equal(split.fp_view().run(x), outs["whole"].fp_view().run(x))
    programmed = dict(split.runtime.programmed(0, split.noise))
    for layer in layers:
        indices = onnx.numpy_helper.to_array(split.runtime.initializers[layer["outlier_indices"]],
                                             str(tmp_path / "split"))
        assert np.all(np.take_along_axis(programmed[layer["onnx_weight"]], indices, 1) == 0)
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "split", moved)
    graph = onnx.load(str(moved / "model.onnx")).graph
    assert sum(node.op_type == "SparseOutliers" for node in graph.node) == len(layers)
    np.testing.assert_allclose(_logits(moved / "model.onnx", x), split.chip(None).run(x),
                               rtol=1e-4, atol=1e-4)


def test_training_refuses_grouped_convolutions_on_crossbars(cnn):
    """afmc train keeps grouped convolutions digital: asked otherwise, it names the layer."""
    from afmc.config import ConfigError
    from afmc.train.onnx_torch import OnnxTorchModule

    model, _, _ = cnn
    config = load_config(None, ["placement.grouped_convs=analog"])
    with pytest.raises(ConfigError, match="layer depthwise.0: afmc train keeps grouped"):
        OnnxTorchModule(onnx_ir.load(str(model)), config)

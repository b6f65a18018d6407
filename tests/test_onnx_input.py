"""ONNX input: the ONNX passes one by one, and whole compiles against the torch path.

Unit tests build small models inline with onnx.helper and assert each pass's graph
before and after, plus numerical equivalence where the pass must not change results
(fold-norms, the FP view after insertion) or must match the torch op (insertion of
MatMul, Gemm and im2col Conv). End to end, a torch MLP with LayerNorm and a tiny
Llama are compiled both ways (afmc.api.compile on the module, compile_onnx on its
ONNX export) with calibration method max on the same batches: the FP views are
equal and, with noise off, the analog outputs agree within one ADC step of the
output layer.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from conftest import tiny_model
from onnx import TensorProto, helper, numpy_helper

from afmc.api import compile as afmc_compile
from afmc.api import load
from afmc.capture import CaptureError, capture_causal_lm, capture_module
from afmc.capture.onnx_model import load_onnx_model
from afmc.compiler.lowering import read_metadata
from afmc.compiler.onnx_export import export_onnx
from afmc.config import ConfigError, load_config
from afmc.data.calibration import (
    SYNTHETIC_SOURCE,
    InputSpec,
    ModelSignature,
    SyntheticCalibrationWarning,
    load_calibration,
)
from afmc.data.tokenizer import ByteTokenizer
from afmc.eval.perplexity import perplexity
from afmc.ops import onnx_model
from afmc.ops.analog_linear import analog_linear
from afmc.passes.onnx.calibrate import CalibrateOnnxInputRanges
from afmc.passes.onnx.fold_norms import FoldNorms
from afmc.passes.onnx.insert_analog_linear import InsertOnnxAnalogLinear
from afmc.passes.onnx.place_layers import PlaceOnnxLayers, onnx_layer_records
from afmc.passes.onnx.static_layers import UnsupportedLayerWarning
from afmc.passes.onnx.upgrade_opset import UpgradeOpset, default_opset
from afmc.passes.verify import VerificationError
from afmc.runtime.chip import load_record
from afmc.runtime.views import fp_reference
from afmc.targets import get_target

OPSET = 20
FLOAT = TensorProto.FLOAT
RES = 254.0
BOUND = 14.0


# ------------------------------------------------------------------ helpers


def _model(
    nodes: list,
    inputs: dict[str, list],
    outputs: list[str],
    initializers: dict[str, np.ndarray],
    opset: int = OPSET,
) -> ir.Model:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(name, FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, FLOAT, None) for name in outputs],
        [numpy_helper.from_array(_array(value), name) for name, value in initializers.items()],
    )
    return ir.from_proto(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    )


def _array(value: np.ndarray | float) -> np.ndarray:
    array = np.asarray(value)
    return array.astype(np.float32) if array.dtype.kind == "f" else array


def _run(model: ir.Model | onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _ops(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


def _weights(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)


def _adc_steps(weight: np.ndarray, ranges: np.ndarray, sizes: list[int]) -> np.ndarray:
    """One ADC step per slice, summed, per output channel of an [N, K] weight."""
    parts = np.split(weight, np.cumsum(sizes)[:-1], axis=1)
    return sum(
        2 * BOUND * r * np.abs(p).max(axis=1) / RES for r, p in zip(ranges, parts, strict=True)
    )


def _torch_analog(x: np.ndarray, weight: np.ndarray, sizes: list[int]) -> np.ndarray:
    ranges = torch.ones(len(sizes))
    return analog_linear(
        torch.from_numpy(x), torch.from_numpy(weight), ranges, sizes, RES, RES, BOUND, 0.0
    ).numpy()


def _assert_within_adc_step(actual: np.ndarray, expected: np.ndarray, steps: np.ndarray) -> None:
    diff = np.abs(actual - expected)
    assert (diff <= steps + 1e-5).all(), f"off by {diff.max()} (step {steps.min()})"
    assert np.mean(diff < 1e-5) > 0.95


def _initializers(out: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(out / "model.onnx"))
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _analog_layers(out: Path) -> dict[str, tuple[np.ndarray, np.ndarray, list[int]]]:
    """name -> (input ranges, [N, K] weight, slice sizes) of every analog layer of OUT."""
    values = _initializers(out)
    return {
        layer["name"]: (
            values[layer["onnx_input_range"]],
            values[layer["onnx_weight"]],
            layer["slice_sizes"],
        )
        for layer in load_record(out)["layers"]
        if layer["placement"] == "analog"
    }


def _output_adc_step(out: Path) -> float:
    ranges, weight, sizes = list(_analog_layers(out).values())[-1]
    return float(_adc_steps(weight, ranges, sizes).max())


# ------------------------------------------------------------------ loader


def test_loader_reports_missing_corrupt_and_external_data(tmp_path):
    with pytest.raises(CaptureError, match="ONNX file not found"):
        load_onnx_model(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not protobuf \xff\xfe" * 10)
    with pytest.raises(CaptureError, match="not a valid ONNX model"):
        load_onnx_model(corrupt)
    model = _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        {"x": [2, 64]},
        ["y"],
        {"w": np.ones((64, 64))},
    )
    path = tmp_path / "external.onnx"
    ir.save(model, path, external_data="external.onnx.data")
    assert len(load_onnx_model(path).graph) == 1
    data = tmp_path / "external.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(CaptureError, match="too short for initializer 'w'"):
        load_onnx_model(path)
    data.unlink()
    with pytest.raises(CaptureError, match="external data file external.onnx.data not found"):
        load_onnx_model(path)


# ------------------------------------------------------------------ passes


def test_upgrade_opset_converts_old_models_only():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    x = rng.standard_normal((3, 8)).astype(np.float32)
    old = _model(nodes, {"x": [3, 8]}, ["y"], {"w": _weights(rng, 8, 4)}, opset=13)
    expected = _run(old, {"x": x})[0]
    assert UpgradeOpset()(old).modified
    assert default_opset(old) == 18
    np.testing.assert_allclose(_run(old, {"x": x})[0], expected, rtol=1e-6)
    assert not UpgradeOpset()(_model(nodes, {"x": [3, 8]}, ["y"], {"w": np.ones((8, 4))})).modified


def test_fold_layer_norm_into_matmul_and_gemm():
    rng = np.random.default_rng(1)
    model = _model(
        [
            helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], epsilon=1e-5),
            helper.make_node("MatMul", ["n", "w1"], ["y1"], name="mm"),
            helper.make_node(
                "Gemm", ["n", "w2", "c"], ["y2"], name="gemm", transB=1, alpha=0.5, beta=2.0
            ),
        ],
        {"x": [3, 8]},
        ["y1", "y2"],
        {
            "g": rng.uniform(0.5, 2, 8),
            "b": rng.standard_normal(8),
            "w1": _weights(rng, 8, 5),
            "w2": _weights(rng, 6, 8),
            "c": rng.standard_normal(6),
        },
    )
    x = rng.standard_normal((3, 8)).astype(np.float32)
    expected = _run(model, {"x": x})
    assert FoldNorms()(model).modified
    norm = model.graph.node(0)
    assert len(norm.inputs) == 2 and np.all(norm.inputs[1].const_value.numpy() == 1)
    assert _ops(model) == ["LayerNormalization", "MatMul", "Add", "Gemm"]
    assert model.graph.node("gemm").attributes.get_float("beta") == 1.0
    assert not {"g", "b"} & set(model.graph.initializers)
    for got, want in zip(_run(model, {"x": x}), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fold_decomposed_rms_norm_copies_a_shared_weight():
    rng = np.random.default_rng(2)
    model = _model(
        [
            helper.make_node("Pow", ["x", "two"], ["sq"]),
            helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
            helper.make_node("Add", ["ms", "eps"], ["ms_eps"]),
            helper.make_node("Sqrt", ["ms_eps"], ["rms"]),
            helper.make_node("Reciprocal", ["rms"], ["inv"]),
            helper.make_node("Mul", ["x", "inv"], ["n"]),
            helper.make_node("Mul", ["g", "n"], ["scaled"], name="gain"),
            helper.make_node("MatMul", ["scaled", "w"], ["y1"]),
            helper.make_node("MatMul", ["x", "w"], ["y2"]),
        ],
        {"x": [2, 3, 8]},
        ["y1", "y2"],
        {
            "two": np.float32(2),
            "axes": np.array([-1]),
            "eps": np.float32(1e-6),
            "g": rng.uniform(0.5, 2, 8),
            "w": _weights(rng, 8, 4),
        },
    )
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    expected = _run(model, {"x": x})
    assert FoldNorms()(model).modified
    assert "gain" not in [node.name for node in model.graph]
    assert "g" not in model.graph.initializers
    readers = [node.inputs[1].name for node in model.graph if node.op_type == "MatMul"]
    assert readers == ["w.folded", "w"]
    for got, want in zip(_run(model, {"x": x}), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op_type", ["RMSNormalization", "SimplifiedLayerNormalization"])
def test_fold_rms_norm_ops(op_type):
    rng = np.random.default_rng(3)
    model = _model(
        [
            helper.make_node(op_type, ["x", "g"], ["n"], axis=-1),
            helper.make_node("MatMul", ["n", "w"], ["y"]),
        ],
        {"x": [4, 8]},
        ["y"],
        {"g": rng.uniform(0.5, 2, 8), "w": _weights(rng, 8, 3)},
        opset=23,
    )
    x = rng.standard_normal((4, 8)).astype(np.float32)
    expected = _run(model, {"x": x})[0]
    assert FoldNorms()(model).modified
    assert np.all(model.graph.node(0).inputs[1].const_value.numpy() == 1)
    np.testing.assert_allclose(_run(model, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)


def test_fold_norms_leaves_a_norm_with_other_readers():
    rng = np.random.default_rng(4)
    model = _model(
        [
            helper.make_node("LayerNormalization", ["x", "g"], ["n"]),
            helper.make_node("MatMul", ["n", "w"], ["y"]),
            helper.make_node("Add", ["n", "x"], ["residual"]),
        ],
        {"x": [2, 8]},
        ["y", "residual"],
        {"g": rng.uniform(0.5, 2, 8), "w": _weights(rng, 8, 8)},
    )
    before = onnx.printer.to_text(ir.to_proto(model))
    assert not FoldNorms()(model).modified
    assert onnx.printer.to_text(ir.to_proto(model)) == before


def _placement_model() -> ir.Model:
    rng = np.random.default_rng(5)
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="enc/fc"),
            helper.make_node("Transpose", ["h"], ["ht"], perm=[1, 0]),
            helper.make_node("MatMul", ["h", "ht"], ["scores"], name="attention"),
            helper.make_node("Gemm", ["h", "w2"], ["g"], name="head", transB=1),
            helper.make_node("Conv", ["img", "wc"], ["c"], name="depthwise", group=2),
            helper.make_node("DequantizeLinear", ["q", "scale"], ["wq"]),
            helper.make_node("MatMul", ["x", "wq"], ["z"], name="quantized"),
        ],
        {"x": [2, 8], "img": [1, 2, 5, 5]},
        ["scores", "g", "c", "z"],
        {
            "w1": _weights(rng, 8, 8),
            "w2": _weights(rng, 3, 8),
            "wc": _weights(rng, 2, 1, 3, 3),
            "scale": np.float32(0.1),
            "q": np.ones((8, 4), np.int8),
        },
    )
    fc = model.graph.node("enc/fc")
    fc.metadata_props["pkg.torch.onnx.name_scopes"] = "['', 'enc', 'enc.fc', 'linear']"
    return model


def test_place_layers_rules_and_unsupported_layers():
    model = _placement_model()
    config = load_config(None, ['placement.digital=["^head$"]'])
    with pytest.warns(UnsupportedLayerWarning) as caught:
        assert PlaceOnnxLayers(config)(model).modified
    records = {record.name: record for record in onnx_layer_records(model)}
    assert list(records) == ["enc.fc", "head", "depthwise", "quantized"], "attention is no layer"
    assert records["enc.fc"].placement == "analog"
    assert (records["enc.fc"].in_features, records["enc.fc"].out_features) == (8, 8)
    assert (records["head"].placement, records["head"].rule) == (
        "digital", "placement.digital[0] (regex '^head$' -> digital)")
    assert records["depthwise"].placement == "digital" and "group=2" in records["depthwise"].rule
    assert "DequantizeLinear" in records["quantized"].rule
    assert len(caught) == 2
    assert model.graph.node("enc/fc").metadata_props["afmc.placement"] == "analog"
    no_match = pytest.raises(ConfigError, match=r"'nothing' -> digital\) matches no layer")
    with no_match, pytest.warns(UnsupportedLayerWarning):
        PlaceOnnxLayers(load_config(None, ['placement.digital=["nothing"]']))(_placement_model())


def test_insert_analog_linear_matches_the_torch_op():
    """MatMul (unequal slices), Gemm (transA, alpha, beta, C) and im2col Conv (stride, pads)."""
    rng = np.random.default_rng(6)
    w_mm, w_gemm, w_conv = _weights(rng, 20, 6), _weights(rng, 5, 7), _weights(rng, 4, 3, 3, 3)
    c, b = rng.standard_normal(5).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    model = _model(
        [
            helper.make_node("MatMul", ["x1", "w_mm"], ["y1"], name="mm"),
            helper.make_node(
                "Gemm",
                ["x2", "w_gemm", "c"],
                ["y2"],
                name="gemm",
                transA=1,
                transB=1,
                alpha=0.5,
                beta=2.0,
            ),
            helper.make_node(
                "Conv",
                ["x3", "w_conv", "b"],
                ["y3"],
                name="conv",
                strides=[2, 2],
                pads=[1, 1, 1, 1],
            ),
        ],
        {"x1": [2, 5, 20], "x2": [7, 4], "x3": [1, 3, 6, 6]},
        ["y1", "y2", "y3"],
        {"w_mm": w_mm, "w_gemm": w_gemm, "c": c, "w_conv": w_conv, "b": b},
    )
    feed = {
        "x1": rng.uniform(-1, 1, (2, 5, 20)),
        "x2": rng.uniform(-1, 1, (7, 4)),
        "x3": rng.uniform(-1, 1, (1, 3, 6, 6)),
    }
    feed = {name: value.astype(np.float32) for name, value in feed.items()}
    expected_fp = _run(model, feed)
    config = load_config(None, ["hardware.max_in=8"])
    PlaceOnnxLayers(config)(model)
    assert InsertOnnxAnalogLinear(config)(model).modified
    ops = _ops(model)
    assert ops.count("AnalogLinear") == 3 and "MatMul" not in ops and "Gemm" not in ops
    assert ops.count("SliceInput") == 4, "MatMul and Conv inputs split unequally"
    im2col = next(node for node in model.graph if node.op_type == "Conv")
    # a one-hot kernel per input channel (group 3): 27 patch values, 27 x 9 kernel entries
    assert im2col.inputs[1].const_value.shape == (27, 1, 3, 3)
    assert im2col.attributes.get_int("group") == 3
    assert {f.name for f in model.functions.values()} == {"AnalogLinear", "SliceInput"}
    records = {record.name: record for record in onnx_layer_records(model)}
    assert records["mm"].slice_sizes == [7, 7, 6] and records["conv"].slice_sizes == [7, 7, 7, 6]
    assert records["gemm"].onnx_weight == "gemm.analog_weight" and records["mm"].tiles == 3

    y1, y2, y3 = _run(model, feed)
    _assert_within_adc_step(
        y1,
        _torch_analog(feed["x1"], w_mm.T.copy(), [7, 7, 6]),
        _adc_steps(w_mm.T, np.ones(3), [7, 7, 6]),
    )
    gemm = _torch_analog(feed["x2"].T.copy(), 0.5 * w_gemm, [7]) + 2 * c
    _assert_within_adc_step(y2, gemm, _adc_steps(0.5 * w_gemm, np.ones(1), [7]))
    patches = torch.nn.functional.unfold(torch.from_numpy(feed["x3"]), 3, padding=1, stride=2)
    flat = w_conv.reshape(4, 27)
    conv = _torch_analog(patches.transpose(1, 2).numpy().copy(), flat, [7, 7, 7, 6]) + b
    _assert_within_adc_step(
        y3,
        conv.transpose(0, 2, 1).reshape(1, 4, 3, 3),
        _adc_steps(flat, np.ones(4), [7, 7, 7, 6])[None, :, None, None],
    )
    for got, want in zip(_run(fp_reference(ir.to_proto(model)), feed), expected_fp, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_calibrate_sets_ranges_from_fp_activations():
    rng = np.random.default_rng(7)
    w1, w2 = _weights(rng, 12, 6), _weights(rng, 6, 3)
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["a"]),
            helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2"),
        ],
        {"x": [4, 12]},
        ["y"],
        {"w1": w1, "w2": w2},
    )
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


# ------------------------------------------------------------------ compile, both paths


class _MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(20, 36)
        self.norm = torch.nn.LayerNorm(36)
        self.fc2 = torch.nn.Linear(36, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(torch.relu(self.fc1(x))))


def _mlp_batches(count: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    return [torch.randn(4, 20, generator=generator) for _ in range(count)]


def _compile_onnx(path, target="aimc", config=None, batches=None, output=None, **options):
    """afmc.compile on an ONNX file, with the calibration batches in the 4th place."""
    return afmc_compile(path, target, config, calibration=batches, output=output, **options)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> tuple[Path, Path, torch.nn.Module]:
    """The MLP compiled by the torch path and, from its ONNX export, by afmc.compile."""
    root = tmp_path_factory.mktemp("mlp")
    torch.manual_seed(0)
    module = _MLP().eval()
    batches = _mlp_batches()
    export_onnx(capture_module(module, (batches[0],)), root / "mlp.onnx")
    config = load_config(None, ["hardware.max_in=16", "calibration.method=max"])
    afmc_compile(
        module,
        "aimc",
        config,
        calibration=[(b,) for b in batches],
        example_inputs=(batches[0],),
        output=root / "torch",
        skip=["chip-smooth-inputs"],  # the ONNX path smooths by a Mul, not into U's rows
    )
    _compile_onnx(
        root / "mlp.onnx", "aimc", config, [{"x": b.numpy()} for b in batches], root / "onnx",
        skip=["onnx-chip-smooth-inputs"],
    )
    return root / "torch", root / "onnx", module


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny Llama compiled by the torch path and, from its ONNX export, by afmc.compile."""
    root = tmp_path_factory.mktemp("llama")
    captured = capture_causal_lm(tiny_model("llama"))
    export_onnx(captured, root / "llama.onnx")
    ids = [np.random.default_rng(i).integers(0, 256, (2, 24)) for i in range(2)]
    config = load_config(None, ["hardware.max_in=40", "calibration.method=max"])
    afmc_compile(
        captured,
        "aimc",
        config,
        calibration=[(torch.from_numpy(i),) for i in ids],
        output=root / "torch",
        skip=["chip-smooth-inputs"],  # the ONNX path smooths by a Mul, not into U's rows
    )
    _compile_onnx(
        root / "llama.onnx",
        "aimc",
        config,
        [{"input_ids": i} for i in ids],
        root / "onnx",
        tokenizer=ByteTokenizer(),
        skip=["onnx-chip-smooth-inputs"],
    )
    return root / "torch", root / "onnx"


def _assert_paths_agree(torch_out: Path, onnx_out: Path, inputs: np.ndarray) -> None:
    torch_layers, onnx_layers = _analog_layers(torch_out), _analog_layers(onnx_out)
    assert list(torch_layers) == list(onnx_layers), "same layer names on both paths"
    for name, (ranges, weight, sizes) in onnx_layers.items():
        assert sizes == torch_layers[name][2]
        np.testing.assert_array_equal(weight, torch_layers[name][1])
        np.testing.assert_allclose(ranges, torch_layers[name][0], rtol=1e-5)
    fp_torch = load(torch_out).fp_view().run(inputs)
    np.testing.assert_allclose(
        load(onnx_out).fp_view().run(inputs), fp_torch, rtol=1e-5, atol=1e-5
    )
    analog_torch = load(torch_out).chip(None).run(inputs)
    analog_onnx = load(onnx_out).chip(None).run(inputs)
    assert np.abs(analog_onnx - fp_torch).max() > 1e-3, "quantization had no effect"
    assert np.abs(analog_onnx - analog_torch).max() <= _output_adc_step(onnx_out)


def test_mlp_both_paths_agree(mlp):
    torch_out, onnx_out, module = mlp
    inputs = _mlp_batches(4)[-1].numpy()
    _assert_paths_agree(torch_out, onnx_out, inputs)
    with torch.no_grad():
        expected = module(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(
        load(onnx_out).fp_view().run(inputs), expected, rtol=1e-5, atol=1e-5
    )


def test_llama_both_paths_agree(llama):
    torch_out, onnx_out = llama
    _assert_paths_agree(torch_out, onnx_out, np.random.default_rng(9).integers(0, 256, (3, 21)))


def test_llama_output_layout_matches_torch_path(llama):
    torch_out, onnx_out = llama
    model = onnx.load(str(onnx_out / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    record, torch_record = load_record(onnx_out), load_record(torch_out)
    assert set(record) == set(torch_record)
    for key in ("summary", "tile_map", "dependencies"):
        assert record[key] == torch_record[key], key
    assert len(record["fold_notes"]) == 5 and not any(n["folded"] for n in record["fold_notes"])
    assert record["fold_notes"][0]["norm"] == "lm.model.layers.0.input_layernorm"
    assert (record["inputs"], record["outputs"]) == (["input_ids"], ["logits"])
    assert [step["name"] for step in record["passes"]] == [
        "load",
        "fp-reference",
        "onnx-upgrade-opset",
        "onnx-fold-norms",
        "onnx-place-layers",
        "onnx-insert-analog-linear",
        "onnx-split-outliers",
        "onnx-calibrate",
        "lower",
        "fidelity",
    ]  # onnx-chip-smooth-inputs skipped by the fixture
    first_batch = np.random.default_rng(0).integers(0, 256, (2, 24))  # the fixture's
    for key, seed in (("noise_free", None), ("chip_0", 0)):
        expected = perplexity(load(onnx_out).chip(seed).run, first_batch)
        assert record["fidelity"][key]["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert read_metadata(onnx_out / "model.onnx")["layers"] == record["layers"]
    analog = [n for n in model.graph.node if n.domain == "afmc" and n.op_type == "AnalogLinear"]
    assert len(analog) == record["summary"]["analog_layers"] == 15
    assert isinstance(load(onnx_out).tokenizer(), ByteTokenizer)
    ids = np.random.default_rng(10).integers(0, 256, (2, 12))
    chip = load(onnx_out).chip(3).run(ids)
    np.testing.assert_array_equal(chip, load(onnx_out).chip(3).run(ids))
    assert np.abs(chip - load(onnx_out).chip(None).run(ids)).max() > 1e-3


def test_fold_norms_on_the_exported_llama(llama):
    """The torch exporter's decomposed RMSNorm (one gain shared by all five norms) folds."""
    model = ir.load(llama[1].parent / "llama.onnx")
    gain = model.graph.initializers["lm.model.layers.0.input_layernorm.weight"]
    gain.const_value = ir.tensor(np.linspace(0.5, 2.0, 64, dtype=np.float32), name=gain.name)
    ids = {"input_ids": np.random.default_rng(13).integers(0, 256, (2, 9))}
    expected = _run(model, ids)[0]
    assert FoldNorms()(model).modified
    assert gain.name not in model.graph.initializers, "all five norms folded"
    np.testing.assert_allclose(_run(model, ids)[0], expected, rtol=1e-4, atol=1e-4)


def test_layer_norm_affine_is_folded_with_fp_outputs_kept(tmp_path):
    torch.manual_seed(1)
    module = _MLP().eval()
    with torch.no_grad():
        module.norm.weight.uniform_(0.5, 2.0)
        module.norm.bias.normal_()
    batches = _mlp_batches()
    export_onnx(capture_module(module, (batches[0],)), tmp_path / "mlp.onnx")
    result = _compile_onnx(
        tmp_path / "mlp.onnx",
        "aimc",
        load_config(None, []),
        [{"x": b.numpy()} for b in batches],
        tmp_path / "out",
    )
    assert next(p for p in result.record["passes"] if p["name"] == "onnx-fold-norms")["modified"]
    norms = [note for note in result.record["fold_notes"] if "chip error" not in note["reason"]]
    assert norms == [{"norm": "norm", "folded": True, "reason": "folded into fc2"}]
    norm = next(node for node in result.model.graph if node.op_type == "LayerNormalization")
    assert len(norm.inputs) == 2 and np.all(norm.inputs[1].const_value.numpy() == 1)
    inputs = batches[1].numpy()
    with torch.no_grad():
        expected = module(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(
        load(tmp_path / "out").fp_view().run(inputs), expected, rtol=1e-5, atol=1e-5
    )


# ------------------------------------------------------------------ compile: other models, errors


def _conv_net(path: Path) -> dict[str, np.ndarray]:
    """Conv -> Relu -> attention-like MatMul of two activations -> Flatten -> Gemm head."""
    rng = np.random.default_rng(12)
    model = _model(
        [
            helper.make_node("Conv", ["img", "wc", "bc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["a"]),
            helper.make_node("Transpose", ["a"], ["at"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", ["a", "at"], ["gram"], name="gram"),
            helper.make_node("Flatten", ["gram"], ["flat"]),
            helper.make_node("Gemm", ["flat", "wh"], ["logits"], name="head", transB=1),
        ],
        {"img": [2, 3, 4, 4]},
        ["logits"],
        {"wc": _weights(rng, 4, 3, 3, 3), "bc": np.zeros(4), "wh": _weights(rng, 5, 64)},
    )
    ir.save(model, path)
    return {"img": rng.uniform(-1, 1, (2, 3, 4, 4)).astype(np.float32)}


def test_conv_is_analog_via_im2col_and_dynamic_matmul_stays_digital(tmp_path):
    batch = _conv_net(tmp_path / "conv.onnx")
    result = _compile_onnx(  # no outlier split: the im2col numerics alone (split: its tests)
        tmp_path / "conv.onnx", "aimc", load_config(None, ["outliers.budget=0"]), [batch],
        tmp_path / "out"
    )
    assert [(r.name, r.placement) for r in result.layers] == [
        ("conv", "analog"),
        ("head", "analog"),
    ]
    assert result.layers[0].in_features == 27 and result.record["summary"]["tiles"] == 2
    gram = next(node for node in result.model.graph if node.op_type == "MatMul")
    assert gram.name == "gram", "the product of two activations stays a digital MatMul"
    analog = load(tmp_path / "out").chip(None).run(batch["img"])
    fp = load(tmp_path / "out").fp_view().run(batch["img"])
    assert 0 < np.abs(analog - fp).max() < 0.1 * np.abs(fp).max()
    assert load(tmp_path / "out").chip(0).run(batch["img"]).shape == (2, 5)


def test_compile_onnx_errors_leave_no_output(tmp_path):
    batch = _conv_net(tmp_path / "conv.onnx")
    out = tmp_path / "out"
    with pytest.warns(SyntheticCalibrationWarning, match="conv.onnx: no calibration data"):
        synthetic = _compile_onnx(tmp_path / "conv.onnx", "aimc")
    assert synthetic.record["calibration"] == SYNTHETIC_SOURCE
    assert all(layer.calibrated for layer in synthetic.layers)
    with pytest.raises(KeyError, match="unknown target"):
        _compile_onnx(tmp_path / "conv.onnx", "tpu", None, [batch], out)
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(CaptureError, match="bad.onnx: not a valid ONNX model"):
        _compile_onnx(tmp_path / "bad.onnx", "aimc", None, [batch], out)
    with pytest.raises(CaptureError, match="ONNX file not found"):
        _compile_onnx(tmp_path / "absent.onnx", "aimc", None, [batch], out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.onnx",
        "conv.onnx",
    ]
    compiled = _compile_onnx(tmp_path / "conv.onnx", "aimc", None, [batch], tmp_path / "first")
    with pytest.raises(CaptureError, match="already compiled by afmc"):
        _compile_onnx(compiled.output / "model.onnx", "aimc", None, [batch], out)
    shutil.rmtree(tmp_path / "first")
    result = _compile_onnx(tmp_path / "conv.onnx", "fp", None, None, out)
    assert result.record["summary"]["analog_layers"] == 0
    np.testing.assert_allclose(
        load(out).chip(None).run(batch["img"]),
        _run(ir.load(tmp_path / "conv.onnx"), batch)[0],
        rtol=1e-6,
    )
    with pytest.raises(FileExistsError):
        _compile_onnx(tmp_path / "conv.onnx", "fp", None, None, out)


def test_pass_selection_and_custom_passes(tmp_path):
    batch = _conv_net(tmp_path / "conv.onnx")
    path = tmp_path / "conv.onnx"
    with pytest.raises(ValueError, match="runs on the torch program"):
        _compile_onnx(path, "aimc", None, [batch], passes=["onnx-place-layers", "calibrate"])
    with pytest.raises(ValueError, match="--skip onnx-fold-norms: not among"):
        _compile_onnx(
            path, "aimc", None, [batch], passes=["onnx-place-layers"], skip=["onnx-fold-norms"]
        )
    int8 = _compile_onnx(path, "int8", None, [batch])
    assert [(layer.name, layer.precision) for layer in int8.layers] == [
        ("conv", "int8"), ("head", "int8")]
    sort = ir.passes.common.TopologicalSortPass()
    result = _compile_onnx(
        path, "aimc", None, None, skip=["onnx-calibrate"],
        passes=[*get_target("aimc").onnx_passes, sort],
    )
    assert [step["name"] for step in result.record["passes"]][-3:] == [
        "onnx-split-outliers",
        "TopologicalSortPass",
        "lower",
    ]
    assert all(not layer.calibrated for layer in result.layers)



class _DropOneRange(ir.passes.InPlacePass):
    """A broken pass: the first analog node's input ranges lose one slice."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        node = onnx_model.analog_nodes(model)[0]
        value = node.inputs[2]
        value.const_value = ir.tensor(value.const_value.numpy()[:-1], name=value.name)
        value.shape = ir.Shape([value.const_value.shape[0]])
        return ir.passes.PassResult(model, True)


def test_a_pass_that_breaks_an_analog_node_names_itself(tmp_path):
    """After every ONNX pass the graph is checked (passes.verify.check_onnx_graph), as after
    every FX pass: a pass that leaves an analog node's ranges short of its slices is an
    error naming the pass and the node, and nothing is written."""
    batch = _conv_net(tmp_path / "conv.onnx")
    config = load_config(None, ["hardware.max_in=16"])
    passes = ["onnx-place-layers", "onnx-insert-analog-linear", _DropOneRange()]
    with pytest.raises(VerificationError, match=r"after pass _DropOneRange: analog node "
                                                r"\S+: input ranges of shape \[\d+\] for \d+ "
                                                r"slices"):
        _compile_onnx(tmp_path / "conv.onnx", "aimc", config, [batch],
                      output=tmp_path / "out", passes=passes)
    assert not (tmp_path / "out").exists()

def test_calibration_from_files_and_text(tmp_path):
    config = load_config(None, ["calibration.batch_size=4", "calibration.seq_len=8"]).calibration
    two = ModelSignature((InputSpec("img", np.dtype("float32"), ("batch", 3)),
                          InputSpec("mask", np.dtype("float32"), ("batch", 2))))

    def no_tokenizer():
        raise ValueError("needs a tokenizer")

    np.savez(tmp_path / "data.npz", img=np.zeros((10, 3)), mask=np.ones((10, 2)))
    data = load_calibration(tmp_path / "data.npz", two, config, no_tokenizer)
    assert [b["img"].shape[0] for b in data.batches] == [4, 4, 2]
    assert set(data.batches[0]) == {"img", "mask"} and data.batches[0]["img"].dtype == np.float32
    other = ModelSignature((two.inputs[0], InputSpec("ids", np.dtype("int64"), ("batch", 8))))
    with pytest.raises(ValueError, match=r"\(missing \['ids'\]\) \(unknown \['mask'\]\)"):
        load_calibration(tmp_path / "data.npz", other, config, no_tokenizer)
    one = ModelSignature(two.inputs[:1])
    np.save(tmp_path / "one.npy", np.zeros((5, 3)))
    assert len(load_calibration(tmp_path / "one.npy", one, config, no_tokenizer).batches) == 2
    text = tmp_path / "calib.txt"
    text.write_text("hello analog world " * 10)
    ids = ModelSignature((InputSpec("input_ids", np.dtype("int64"), ("batch", "seq")),), 256)
    windows = load_calibration(text, ids, config, ByteTokenizer).batches
    assert windows[0]["input_ids"].shape == (4, 8) and windows[0]["input_ids"].dtype == np.int64
    with pytest.raises(ValueError, match="needs a tokenizer"):
        load_calibration(text, ids, config, no_tokenizer)
    # an export at a static [3, 5]: windows of 5 tokens in whole batches of 3, mask included
    fixed = ModelSignature((InputSpec("input_ids", np.dtype("int64"), (3, 5)),
                            InputSpec("attention_mask", np.dtype("int64"), (3, 5))), 256)
    data = load_calibration(text, fixed, config, ByteTokenizer, held_back=2)
    assert {b["input_ids"].shape for b in data.batches + data.held} == {(3, 5)}
    assert len(data.batches) == 190 // 5 // 3 - 1 and len(data.held) == 1
    short = tmp_path / "short.txt"
    short.write_text("0123456789")  # two windows, the model takes batches of 3
    with pytest.raises(ValueError, match=r"short.txt: the text gives 2 window\(s\) of 5 "
                                         r"tokens; the model takes batches of 3"):
        load_calibration(short, fixed, config, ByteTokenizer)



def _assert_smoothed_with_fp_kept(smoothed_out: Path, unsmoothed_out: Path, groups: int) -> None:
    """One Mul by 1/s per smoothed group in the file, and its FP view that of the unsmoothed
    compile to rounding."""
    graph = onnx.load(str(smoothed_out / "model.onnx")).graph
    muls = [node for node in graph.node
            if node.op_type == "Mul" and any(i.endswith(".smooth_scale") for i in node.input)]
    assert len(muls) == groups
    inputs = np.random.default_rng(9).integers(0, 256, (3, 21))
    np.testing.assert_allclose(load(smoothed_out).fp_view().run(inputs),
                               load(unsmoothed_out).fp_view().run(inputs), rtol=1e-4, atol=1e-4)

@pytest.mark.slow
def test_onnx_chip_smoothing_chooses_as_the_torch_path_and_keeps_fp(llama, tmp_path):
    """onnx-chip-smooth-inputs on the exported Llama: the same alpha per group as the FX
    pass chip-smooth-inputs on the same data (one choice core), a Mul by 1/s before each
    smoothed group and W diag(s) on its crossbars, FP outputs unchanged to rounding."""
    torch_out, onnx_out = llama
    root = torch_out.parent
    ids = [np.random.default_rng(i).integers(0, 256, (2, 24)) for i in range(2)]
    config = load_config(None, ["hardware.max_in=40", "calibration.method=max",
                                "outliers.budget=0"])
    afmc_compile(capture_causal_lm(tiny_model("llama")), "aimc", config,
                 calibration=[(torch.from_numpy(i),) for i in ids], output=tmp_path / "torch")
    result = _compile_onnx(root / "llama.onnx", "aimc", config,
                           [{"input_ids": i} for i in ids], tmp_path / "onnx",
                           tokenizer=ByteTokenizer())

    def alphas(record: dict) -> dict[str, str]:
        return {note["norm"]: re.search(r"alpha [\d.]+ by|not smoothed", note["reason"])[0]
                for note in record["fold_notes"] if "chip error" in note["reason"]}

    chosen = alphas(result.record)
    assert chosen and chosen == alphas(load_record(tmp_path / "torch"))
    smoothed = [group for group, alpha in chosen.items() if alpha.startswith("alpha")]
    assert smoothed, "the test needs a smoothed group"
    _assert_smoothed_with_fp_kept(tmp_path / "onnx", onnx_out, len(smoothed))


@pytest.mark.slow
def test_onnx_smooth_inputs_scales_as_the_torch_path_and_keeps_fp(llama, tmp_path):
    """onnx-smooth-inputs (a fixed alpha) on the exported Llama: the channel scales of every
    group are those of the FX pass smooth-inputs on the same data (one scale rule), a Mul by
    1/s before each group, FP outputs unchanged to rounding."""
    torch_out, onnx_out = llama
    root = torch_out.parent
    ids = [np.random.default_rng(i).integers(0, 256, (2, 24)) for i in range(2)]
    config = load_config(None, ["hardware.max_in=40", "calibration.method=max",
                                "smoothing.alpha=0.5"])
    afmc_compile(capture_causal_lm(tiny_model("llama")), "aimc", config,
                 calibration=[(torch.from_numpy(i),) for i in ids], output=tmp_path / "torch",
                 passes=["fold-norms", "place-layers", "smooth-inputs", "insert-analog-linear",
                         "calibrate"])
    result = _compile_onnx(root / "llama.onnx", "aimc", config,
                           [{"input_ids": i} for i in ids], tmp_path / "onnx",
                           tokenizer=ByteTokenizer(),
                           passes=["onnx-upgrade-opset", "onnx-fold-norms", "onnx-place-layers",
                                   "onnx-insert-analog-linear", "onnx-smooth-inputs",
                                   "onnx-calibrate"])

    def scales(record: dict) -> dict[str, str]:
        return {note["norm"]: re.search(r"channel scales [^)]+", note["reason"])[0]
                for note in record["fold_notes"] if "alpha 0.5" in note["reason"]}

    chosen = scales(result.record)
    assert len(chosen) >= 4 and chosen == scales(load_record(tmp_path / "torch"))
    _assert_smoothed_with_fp_kept(tmp_path / "onnx", onnx_out, len(chosen))

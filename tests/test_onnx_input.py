"""ONNX input: the front end and whole compiles against the torch path.

Loading (missing, corrupt and external-data files), calibration data from files and text,
pass selection and the check after every pass, and end to end: a torch MLP with LayerNorm
and a tiny Llama are compiled both ways (afmc.api.compile on the module, compile_onnx on
its ONNX export) with calibration method max on the same batches: the FP views are equal
and, with noise off, the analog outputs agree within one ADC step of the output layer. The
ONNX passes one by one are tested in tests/passes/ (one file per pass, beside its FX twin).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from analog_models import (
    LayerNormMLP,
    adc_steps,
    compile_onnx,
    compiled_llama,
    mlp_batches,
    onnx_graph,
    random_weights,
    run_onnx,
)
from onnx import helper, numpy_helper

from afmc.api import compile as afmc_compile
from afmc.api import load
from afmc.capture import CaptureError, capture_module
from afmc.capture.onnx_model import load_onnx_model
from afmc.compiler.lowering import read_metadata
from afmc.compiler.onnx_export import export_onnx
from afmc.config import load_config
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
from afmc.passes.verify import VerificationError
from afmc.runtime.chip import load_record
from afmc.targets import get_target

# the module fixtures are built once, on one worker (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group(__name__)

# ------------------------------------------------------------------ helpers


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
    return float(adc_steps(weight, ranges, sizes).max())


# ------------------------------------------------------------------ loader


def test_loader_reports_missing_corrupt_and_external_data(tmp_path):
    with pytest.raises(CaptureError, match="ONNX file not found"):
        load_onnx_model(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not protobuf \xff\xfe" * 10)
    with pytest.raises(CaptureError, match="not a valid ONNX model"):
        load_onnx_model(corrupt)
    model = onnx_graph(
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


# ------------------------------------------------------------------ compile, both paths


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> tuple[Path, Path, torch.nn.Module]:
    """The MLP compiled by the torch path and, from its ONNX export, by afmc.compile."""
    root = tmp_path_factory.mktemp("mlp")
    torch.manual_seed(0)
    module = LayerNormMLP().eval()
    batches = mlp_batches()
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
    compile_onnx(
        root / "mlp.onnx", "aimc", config, [{"x": b.numpy()} for b in batches], root / "onnx",
        skip=["onnx-chip-smooth-inputs"],
    )
    return root / "torch", root / "onnx", module


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny Llama compiled by the torch path and, from its ONNX export, by afmc.compile
    (analog_models.compiled_llama: one compile per process, shared with tests/passes/)."""
    return compiled_llama(tmp_path_factory)


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
    inputs = mlp_batches(4)[-1].numpy()
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


# ------------------------------------------------------------------ compile: other models, errors


def _conv_net(path: Path) -> dict[str, np.ndarray]:
    """Conv -> Relu -> attention-like MatMul of two activations -> Flatten -> Gemm head."""
    rng = np.random.default_rng(12)
    model = onnx_graph(
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
        {"wc": random_weights(rng, 4, 3, 3, 3), "bc": np.zeros(4),
         "wh": random_weights(rng, 5, 64)},
    )
    ir.save(model, path)
    return {"img": rng.uniform(-1, 1, (2, 3, 4, 4)).astype(np.float32)}


def test_conv_is_analog_via_im2col_and_dynamic_matmul_stays_digital(tmp_path):
    batch = _conv_net(tmp_path / "conv.onnx")
    result = compile_onnx(  # no outlier split: the im2col numerics alone (split: its tests)
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
        synthetic = compile_onnx(tmp_path / "conv.onnx", "aimc")
    assert synthetic.record["calibration"] == SYNTHETIC_SOURCE
    assert all(layer.calibrated for layer in synthetic.layers)
    with pytest.raises(KeyError, match="unknown target"):
        compile_onnx(tmp_path / "conv.onnx", "tpu", None, [batch], out)
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(CaptureError, match="bad.onnx: not a valid ONNX model"):
        compile_onnx(tmp_path / "bad.onnx", "aimc", None, [batch], out)
    with pytest.raises(CaptureError, match="ONNX file not found"):
        compile_onnx(tmp_path / "absent.onnx", "aimc", None, [batch], out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.onnx",
        "conv.onnx",
    ]
    compiled = compile_onnx(tmp_path / "conv.onnx", "aimc", None, [batch], tmp_path / "first")
    with pytest.raises(CaptureError, match="already compiled by afmc"):
        compile_onnx(compiled.output / "model.onnx", "aimc", None, [batch], out)
    shutil.rmtree(tmp_path / "first")
    result = compile_onnx(tmp_path / "conv.onnx", "fp", None, None, out)
    assert result.record["summary"]["analog_layers"] == 0
    np.testing.assert_allclose(
        load(out).chip(None).run(batch["img"]),
        run_onnx(ir.load(tmp_path / "conv.onnx"), batch)[0],
        rtol=1e-6,
    )
    with pytest.raises(FileExistsError):
        compile_onnx(tmp_path / "conv.onnx", "fp", None, None, out)


def test_pass_selection_and_custom_passes(tmp_path):
    batch = _conv_net(tmp_path / "conv.onnx")
    path = tmp_path / "conv.onnx"
    with pytest.raises(ValueError, match="runs on the torch program"):
        compile_onnx(path, "aimc", None, [batch], passes=["onnx-place-layers", "calibrate"])
    with pytest.raises(ValueError, match="--skip onnx-fold-norms: not among"):
        compile_onnx(
            path, "aimc", None, [batch], passes=["onnx-place-layers"], skip=["onnx-fold-norms"]
        )
    int8 = compile_onnx(path, "int8", None, [batch])
    assert [(layer.name, layer.precision) for layer in int8.layers] == [
        ("conv", "int8"), ("head", "int8")]
    sort = ir.passes.common.TopologicalSortPass()
    result = compile_onnx(
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
        compile_onnx(tmp_path / "conv.onnx", "aimc", config, [batch],
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

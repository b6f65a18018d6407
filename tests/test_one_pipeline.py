"""One compile pipeline: every front end takes every target, and the output stands alone.

Models are exported the way users export them (torch.onnx.export(..., dynamo=True),
which writes the weights to FILE.onnx.data beside the file): an MLP with two inputs, a
CNN with a static batch, a tiny Llama and a BERT encoder with three inputs. Each is
compiled for aimc, int8, int4 and fp; the output directory is moved elsewhere, the input
deleted, and the result checked with onnx.checker (full_check) and run by a plain
onnxruntime session against the FP model. Calibration data is checked against the
model's inputs before any pass runs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers as hf
from conftest import VOCAB, tiny_model
from torch import nn

import afmc
from afmc.api import NoAcceleratedLayersWarning
from afmc.capture.hf import CausalLMLogits
from afmc.compiler.frontends import StaticBatchWarning
from afmc.data.calibration import SYNTHETIC_SOURCE, SyntheticCalibrationWarning

# the module fixtures are built once, on one worker (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group(__name__)

TARGETS = ("aimc", "int8", "int4", "fp")
ROOT = Path(__file__).resolve().parents[1]


class TwoInputMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left, self.right, self.head = nn.Linear(24, 48), nn.Linear(8, 48), nn.Linear(48, 6)

    def forward(self, features: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.left(features) + self.right(context)))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3), nn.Linear(8 * 6 * 6, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(image)).flatten(1))


class Encoder(nn.Module):
    """A BERT encoder's last hidden state, taking its three text inputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.bert = hf.BertModel(hf.BertConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=64))

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state


def _export(module: nn.Module, example: tuple, path: Path, names: list[str],
            dynamic: dict | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(module.eval(), example, path, dynamo=True, input_names=names,
                      dynamic_shapes=dynamic, verbose=False)
    assert (path.parent / f"{path.name}.data").is_file(), "exported with external data"
    return path


def _feeds(name: str, rng: np.random.Generator, samples: int) -> dict[str, np.ndarray]:
    if name == "mlp":
        return {"features": rng.standard_normal((samples, 24), dtype=np.float32),
                "context": rng.standard_normal((samples, 8), dtype=np.float32)}
    if name == "cnn":
        return {"image": rng.standard_normal((samples, 3, 8, 8), dtype=np.float32)}
    ids = rng.integers(0, VOCAB, (samples, 16))
    if name == "llama":
        return {"input_ids": ids}
    return {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids)}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """Each model exported the default way, with a calibration .npz beside it."""
    root = tmp_path_factory.mktemp("exports")
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("seq", max=64)
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (2, 16))
    paths = {
        "mlp": _export(TwoInputMLP(), (torch.randn(2, 24), torch.randn(2, 8)),
                       root / "mlp/model.onnx", ["features", "context"],
                       ({0: batch}, {0: batch})),
        "cnn": _export(SmallCNN(), (torch.randn(2, 3, 8, 8),), root / "cnn/model.onnx",
                       ["image"], None),
        "llama": _export(CausalLMLogits(tiny_model("llama")), (ids,), root / "llama/model.onnx",
                         ["input_ids"], ({0: batch, 1: seq},)),
        "bert": _export(Encoder(), (ids, torch.ones_like(ids), torch.zeros_like(ids)),
                        root / "bert/model.onnx",
                        ["input_ids", "attention_mask", "token_type_ids"],
                        tuple({0: batch, 1: seq} for _ in range(3))),
    }
    for name, path in paths.items():
        np.savez(path.parent / "calib.npz", **_feeds(name, np.random.default_rng(1), 8))
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["mlp", "cnn", "llama", "bert"])
def test_onnx_export_compiles_for_every_target_into_a_self_contained_output(
        exports, name, target, tmp_path):
    source = tmp_path / "input"
    shutil.copytree(exports[name].parent, source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # int4 keeps the CNN's conv in FP
        result = afmc.compile(source / "model.onnx", target,
                              calibration=source / "calib.npz", output=tmp_path / "out")
    used = None if target == "fp" else str(source / "calib.npz")  # fp calibrates nothing
    assert result.record["calibration"] == used
    moved = tmp_path / "elsewhere" / "compiled"
    moved.parent.mkdir()
    shutil.move(tmp_path / "out", moved)
    fp_session = ort.InferenceSession(str(source / "model.onnx"))
    feeds = _feeds(name, np.random.default_rng(2), 2)
    expected = fp_session.run(None, feeds)[0]
    shutil.rmtree(source)
    for file in moved.glob("*.onnx"):
        onnx.checker.check_model(str(file), full_check=True)
    assert not any(moved.glob("*.data")), "small models are written inline"
    got = ort.InferenceSession(str(moved / "model.onnx")).run(None, feeds)[0]
    assert got.shape == expected.shape and np.isfinite(got).all()
    error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    assert (error < 1e-5) if target == "fp" else (0 < error < 0.5), error
    chip = afmc.load(moved).chip(0).run(*feeds.values())
    assert chip.shape == expected.shape


@pytest.mark.slow
def test_text_calibration_feeds_every_text_input_of_an_encoder(exports, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text((ROOT / "afmc" / "api.py").read_text()[:3000])
    result = afmc.compile(exports["bert"], "aimc", calibration=text, tokenizer="bytes",
                          output=tmp_path / "out")
    assert result.record["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert result.record["tokenizer"] == "bytes"
    assert result.record["summary"]["analog_layers"] > 0
    assert all(layer.calibrated for layer in result.layers if layer.placement == "analog")
    assert result.record["fidelity"]["data"] == "1 held-back calibration batch(es)"


@pytest.mark.slow
def test_onnx_without_calibration_uses_synthetic_inputs_and_says_so(exports, tmp_path):
    with pytest.warns(SyntheticCalibrationWarning, match="model.onnx: no calibration data"):
        synthetic = afmc.compile(exports["mlp"], "aimc", output=tmp_path / "synthetic")
    assert synthetic.record["calibration"] == SYNTHETIC_SOURCE
    assert "fidelity" not in synthetic.record, "no fidelity claim on made-up data"
    real = afmc.compile(exports["mlp"], "aimc", calibration=exports["mlp"].parent / "calib.npz")
    ranges = [(layer.name, layer.input_range) for layer in real.layers]
    assert ranges == [(layer.name, layer.input_range) for layer in synthetic.layers]

    def initial_ranges(model):
        return {node.inputs[2].name: node.inputs[2].const_value.numpy() for node in model.graph
                if node.domain == "afmc" and node.op_type.startswith("Analog")}

    assert any(not np.allclose(initial_ranges(real.model)[key], value) for key, value in
               initial_ranges(synthetic.model).items()), "real data gives other ranges"


@pytest.mark.slow
def test_token_ids_calibrate_a_model_directory_without_tokenizer_files(tmp_path):
    model_dir = tmp_path / "llama"
    hf.LlamaForCausalLM(hf.LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, max_position_embeddings=64)).save_pretrained(model_dir)
    np.savez(tmp_path / "ids.npz", input_ids=np.random.default_rng(0).integers(0, 300, (4, 16)))
    result = afmc.compile(model_dir, "aimc", calibration=tmp_path / "ids.npz",
                          output=tmp_path / "out")
    assert result.record["tokenizer"] is None and result.record["summary"]["analog_layers"] == 8
    assert result.record["max_positions"] == 64
    chip = afmc.load(tmp_path / "out").chip(0)
    assert chip.run(np.zeros((1, 64), np.int64)).shape == (1, 64, 300)
    with pytest.raises(ValueError, match="65 tokens exceeds the model's 64 positions"):
        chip.run(np.zeros((1, 65), np.int64))
    with pytest.raises(ValueError, match="needs a tokenizer and .*llama has none"):
        afmc.compile(model_dir, "aimc", calibration=ROOT / "README.md")
    np.savez(tmp_path / "big.npz", input_ids=np.full((2, 16), 300))
    with pytest.raises(ValueError, match=r"token ids span \[300, 300\], the vocabulary is "
                                         r"\[0, 299\]"):
        afmc.compile(model_dir, "aimc", calibration=tmp_path / "big.npz")


@pytest.mark.slow
def test_a_module_compiles_with_a_dynamic_batch_axis(tmp_path):
    torch.manual_seed(0)
    module = TwoInputMLP().eval()
    example = (torch.randn(1, 24), torch.randn(1, 8))
    batches = [(torch.randn(4, 24), torch.randn(4, 8)) for _ in range(2)]
    afmc.compile(module, "aimc", calibration=batches, example_inputs=example,
                 output=tmp_path / "out")
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    for size in (1, 3, 7):
        feeds = {"features": np.ones((size, 24), np.float32),
                 "context": np.ones((size, 8), np.float32)}
        assert session.run(None, feeds)[0].shape == (size, 6)


class FixedBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(2, 12))


def test_a_module_that_fixes_its_batch_compiles_static_with_a_warning():
    with pytest.warns(StaticBatchWarning, match=r"FixedBatch: captured with the example's "
                                                r"fixed shapes \(\[2, 12\]\)"):
        result = afmc.compile(FixedBatch().eval(), "fp", example_inputs=(torch.randn(2, 12),))
    assert [d.value if hasattr(d, "value") else d for d in result.model.graph.inputs[0].shape] \
        == [2, 12]


BAD_CALIBRATION = [
    ({"features": np.zeros((4, 24), np.int64), "context": np.zeros((4, 8), np.float32)},
     r"batch 0, input 'features': dtype int64, the model takes float32"),
    ({"features": np.zeros((4, 24, 1), np.float32), "context": np.zeros((4, 8), np.float32)},
     r"input 'features': rank 3 \(shape \[4, 24, 1\]\), the model takes rank 2"),
    ({"features": np.zeros((4, 23), np.float32), "context": np.zeros((4, 8), np.float32)},
     r"input 'features': axis 1 has size 23, the model takes 24"),
    ({"features": np.full((4, 24), np.inf, np.float32), "context": np.zeros((4, 8), np.float32)},
     r"input 'features': 96 non-finite value\(s\) \(first inf\)"),
    ({"features": np.zeros((4, 24), np.float32)},
     r"arrays \['features'\] do not match the model's inputs \['features', 'context'\] "
     r"\(missing \['context'\]\)"),
    ({"features": np.zeros((4, 24), np.float32), "context": np.zeros((4, 8), np.float32),
      "extra": np.zeros(4, np.float32)}, r"\(unknown \['extra'\]\)"),
    ({"features": np.zeros((4, 24), np.float32), "context": np.zeros((3, 8), np.float32)},
     r"differ in sample count \(first axis: \{'features': 4, 'context': 3\}\)"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("feeds", "message"), BAD_CALIBRATION)
def test_bad_calibration_tensors_are_one_line_errors_naming_the_input(exports, tmp_path, feeds,
                                                                        message):
    np.savez(tmp_path / "bad.npz", **feeds)
    out = tmp_path / "out"
    args = ["compile", str(exports["mlp"]), "-o", str(out), "--calib", str(tmp_path / "bad.npz")]
    if feeds is BAD_CALIBRATION[0][0]:  # one row through a fresh interpreter, the rest in-process
        result = subprocess.run([sys.executable, "-c", "from afmc.cli import app; app()", *args],
                                capture_output=True, text=True)
        code, stderr = result.returncode, result.stderr
    else:
        from typer.testing import CliRunner

        from afmc.cli import app

        invoked = CliRunner().invoke(app, args)
        code, stderr = invoked.exit_code, invoked.stderr
        assert invoked.exception is None or isinstance(invoked.exception, SystemExit), stderr
    assert code == 1 and "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'bad.npz'}: ")
    assert __import__("re").search(message, lines[0]), lines[0]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad.npz"], "nothing left"


def test_a_model_with_nothing_to_accelerate_says_so(tmp_path):
    relu = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "relu",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])]),
        opset_imports=[onnx.helper.make_opsetid("", 18)])
    onnx.save(relu, tmp_path / "relu.onnx")
    np.save(tmp_path / "x.npy", np.ones((4, 4), np.float32))
    with pytest.warns(NoAcceleratedLayersWarning, match="relu.onnx: no layer runs on the aimc "
                      "target: it has no MatMul, Gemm or Conv with a constant weight"):
        afmc.compile(tmp_path / "relu.onnx", "aimc", calibration=tmp_path / "x.npy")
    weights_as_input = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4]),
         onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [4, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])]),
        opset_imports=[onnx.helper.make_opsetid("", 18)])
    onnx.save(weights_as_input, tmp_path / "mm.onnx")
    np.savez(tmp_path / "xw.npz", x=np.ones((4, 4), np.float32), w=np.ones((4, 4), np.float32))
    with pytest.warns(NoAcceleratedLayersWarning, match="mm.onnx: no layer runs on the int8"):
        afmc.compile(tmp_path / "mm.onnx", "int8", calibration=tmp_path / "xw.npz")


COMPILE_OPTION_CASES = [
    (["--target", "tpu"], r"unknown target 'tpu' \(known: aimc, int8, int4, fp\)"),
    (["--tokenizer", "/nonexistent"], r"no tokenizer for /nonexistent"),
    (["--digital", "["], r"placement.digital\[0\]: bad pattern '\['"),
    (["--digital", "nomatch"], r"placement.digital\[0\] \(regex 'nomatch' -> digital\) "
                               r"matches no layer"),
    (["--set", "calibration.method=bogus"], r"calibration.method: Input should be"),
    (["--passes", "onnx-place-layers,calibrate"],
     r"pass 'calibrate' runs on the torch program, not on this input"),
    (["--passes", "bogus"], r"unknown pass 'bogus' \(known: "),
    (["--skip", "calibrate"], r"--skip calibrate: not among the passes of this compile"),
    (["--verify"], r"--verify applies to the torch path, not to ONNX input"),
    (["--to-step", "bogus"], r"unknown compile step 'bogus'; the steps: capture, data, "),
    (["--calib", "{tmp}/absent.npz"], r"absent.npz: calibration file not found"),
    (["--calib", "{readme}"], r"text calibration feeds a model whose inputs are among "
                              r"input_ids, .* this model takes features float32\[batch, 24\]"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("options", "message"), COMPILE_OPTION_CASES,
                         ids=[" ".join(case[0]) for case in COMPILE_OPTION_CASES])
def test_every_compile_option_refuses_bad_values_in_one_line(exports, tmp_path, options,
                                                              message):
    from typer.testing import CliRunner

    from afmc.cli import app

    values = [option.format(tmp=tmp_path, readme=ROOT / "README.md") for option in options]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["compile", str(exports["mlp"]), "-o", str(out),
                                      "--calib", str(exports["mlp"].parent / "calib.npz"),
                                      *values])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and result.exception is None or \
        isinstance(result.exception, SystemExit), result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not out.exists() and not list(tmp_path.glob(".out*")), "nothing left behind"


@pytest.mark.slow
def test_recalibrate_without_learned_ranges_is_a_named_warning(exports, tmp_path):
    from typer.testing import CliRunner

    from afmc.cli import app

    result = CliRunner().invoke(app, ["compile", str(exports["mlp"]), "-o", str(tmp_path / "o"),
                                      "--calib", str(exports["mlp"].parent / "calib.npz"),
                                      "--recalibrate"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        "warning: " + str(exports["mlp"]) + ": --recalibrate has nothing to replace (the model "
        "holds no learned input ranges of afmc train); it is calibrated as usual"]


@pytest.mark.slow
def test_token_id_calibration_needs_no_tokenizer(tmp_path):
    """A Hugging Face directory without tokenizer files (vocabulary 1000, so no byte
    fallback) compiles from token ids, and its output runs from token-id inputs."""
    config = hf.LlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=64)
    torch.manual_seed(0)
    hf.LlamaForCausalLM(config).eval().save_pretrained(tmp_path / "lm")
    ids = np.random.default_rng(0).integers(0, 1000, (6, 16), dtype=np.int64)
    np.savez(tmp_path / "ids.npz", input_ids=ids)
    result = afmc.compile(str(tmp_path / "lm"), "aimc", calibration=tmp_path / "ids.npz",
                          output=tmp_path / "out")
    assert result.record["tokenizer"] is None
    assert result.record["calibration"].endswith("ids.npz")
    model = afmc.load(tmp_path / "out")
    assert model.chip(0).run(ids[:2]).shape == (2, 16, 1000)
    with pytest.raises(ValueError, match="no tokenizer"):
        model.tokenizer()

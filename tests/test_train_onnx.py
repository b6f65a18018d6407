"""Hardware-aware training of any ONNX model: its torch form, the trainer on input tensors,
and the compile of the result with its learned ranges.

Models as a user exports them (torch.onnx.export(dynamo=True)): a small CNN with batch norm
(fused into its convolutions by the exporter), ReLU6, a depthwise and a 3x3 convolution
with asymmetric padding, at a static batch of 4; a BERT-style encoder of transformers with
two inputs (input_ids, attention_mask).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from afmc.api import compile as afmc_compile
from afmc.capture.onnx_model import load_onnx_model
from afmc.cli import app
from afmc.compiler.trained_model import RANGES_FILE, TRAINING_RECORD
from afmc.config import AfmcConfig, load_config
from afmc.runtime.compiled import CompiledModel
from afmc.train.analog_layer import AnalogTrainingLinear
from afmc.train.onnx_torch import OnnxTorchModule, module_key
from afmc.train.tasks import OnnxTask
from afmc.train.trainer import train

# the module fixtures are built once, on one worker (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group(__name__)

BATCH = 4
TRAINING = ["hardware.max_in=32", "training.steps=2", "training.batch_size=4",
            "training.range_init=search", "training.split_outliers=true",
            "training.smoothing=true", "training.learning_rate=1e-3",
            "calibration.search_rows=64", "outliers.sample_rows=64"]


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.expand = nn.Conv2d(8, 24, 1)
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x, (0, 1, 0, 1))  # TF "same" padding of a stride-2 stem
        x = torch.clamp(self.bn(self.stem(x)), 0, 6)
        x = torch.clamp(self.expand(self.depthwise(x)), 0, 6)
        return self.head(x.mean(dim=(2, 3)))


def _export(module: nn.Module, example: tuple, path: Path, **names) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), dynamo=True, **names)
    return path


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> tuple[Path, Path]:
    """The exported CNN (trained-like batch-norm statistics) and 32 input images (.npy)."""
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
    folder = tmp_path_factory.mktemp("cnn")
    path = _export(model, (torch.randn(BATCH, 3, 16, 16),), folder / "fp" / "model.onnx")
    images = folder / "images.npy"
    np.save(images, np.random.default_rng(0).normal(size=(32, 3, 16, 16)).astype(np.float32))
    return path, images


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_torch_form_computes_the_cnn_as_onnxruntime(cnn):
    path, images = cnn
    x = np.load(images)[:BATCH]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = OnnxTorchModule(load_onnx_model(path), AfmcConfig())
    with torch.no_grad():
        got = module(**{module.input_names[0]: torch.from_numpy(x)})[0].numpy()
    np.testing.assert_allclose(got, _ort(path, {module.input_names[0]: x})[0], atol=1e-5)
    # the crossbar layers are Linears of the im2col view; the depthwise conv stays a conv
    assert set(module.records) == {"stem", "depthwise", "expand", "head"}
    assert module.layers[module_key("stem")].weight.shape == (8, 27)
    assert module.records["depthwise"].placement == "digital"


def test_torch_form_computes_an_encoder_with_two_inputs(tmp_path):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=32)
    torch.manual_seed(0)
    bert = BertModel(config).eval()
    ids = torch.randint(0, 64, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.int64)
    mask[1, 8:] = 0
    path = _export(bert, (ids, mask), tmp_path / "bert" / "model.onnx",
                   input_names=["input_ids", "attention_mask"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = OnnxTorchModule(load_onnx_model(path), AfmcConfig())
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    with torch.no_grad():
        got = module(**{name: torch.from_numpy(value) for name, value in feeds.items()})
    for mine, theirs in zip(got, _ort(path, feeds), strict=True):
        np.testing.assert_allclose(mine.numpy(), theirs, atol=1e-4)
    assert len([r for r in module.records.values() if r.placement == "analog"]) >= 12


def test_write_back_of_an_untrained_module_keeps_every_value(cnn, tmp_path):
    path, images = cnn
    import onnx_ir as ir

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = OnnxTorchModule(load_onnx_model(path), AfmcConfig())
    ir.save(module.write_back(), tmp_path / "same.onnx")
    x = np.load(images)[:BATCH]
    name = module.input_names[0]
    np.testing.assert_array_equal(_ort(tmp_path / "same.onnx", {name: x})[0],
                                  _ort(path, {name: x})[0])


@pytest.fixture(scope="module")
def trained(cnn, tmp_path_factory) -> Path:
    path, images = cnn
    out = tmp_path_factory.mktemp("trained") / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(path, images, out, load_config(None, TRAINING))
    assert result.steps == 2 and result.unit == "samples" and result.seen == 8
    return out


def test_training_writes_the_graph_with_trained_weights_and_ranges_by_layer_name(cnn, trained):
    path, images = cnn
    record = json.loads((trained / TRAINING_RECORD).read_text())
    assert all(np.isfinite(record["losses"])) and record["samples"] == 8
    ranges = load_file(trained / RANGES_FILE)
    assert {"stem", "expand", "head"} <= set(ranges)
    assert ranges["stem"].numel() == 1 and ranges["head"].numel() == 1  # K 27 and 24
    source, result = load_onnx_model(path), load_onnx_model(trained / "model.onnx")
    assert [n.op_type for n in source.graph] == [n.op_type for n in result.graph]
    moved = {name: not np.array_equal(value.const_value.numpy(),
                                      result.graph.initializers[name].const_value.numpy())
             for name, value in source.graph.initializers.items()
             if value.const_value.numpy().size > 1}
    assert moved["head.weight"] and moved["expand.weight"]


def test_compiled_trained_model_computes_what_the_student_computes(cnn, trained, tmp_path):
    """The noise-free chip of the compiled trained file equals the student in eval mode
    (AnalogTrainingLinear's eval path: the afmc op with the learned ranges, scales and
    outliers), so compile programs exactly what training shaped."""
    _, images = cnn
    x = np.load(images)[:BATCH]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = afmc_compile(trained / "model.onnx", "aimc", calibration=images,
                              output=tmp_path / "aimc")
    out = result.output
    layers = {layer.name: layer for layer in result.layers}
    assert layers["stem"].calibrated == "learned"
    config = load_config(None, TRAINING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = OnnxTask(trained / "model.onnx", images, config, "cpu")
    student = task.teacher
    task.convert(student, config)
    learned = load_file(trained / RANGES_FILE)
    with torch.no_grad():
        for name in student.records:
            layer = student.layers[module_key(name)]
            if not isinstance(layer, AnalogTrainingLinear):
                continue
            layer.input_range.copy_(learned[name])
            if f"{name}.input_scale" in learned:
                layer.input_scale.copy_(learned[f"{name}.input_scale"])
            if f"{name}.outliers_per_slice" in learned:
                layer.outliers.fill_(int(learned[f"{name}.outliers_per_slice"]))
        want = task.outputs(student.eval(), task.batch(np.arange(BATCH), "cpu")).numpy()
    got = CompiledModel(out).chip(None).run(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_images_of_the_wrong_shape_are_one_error_line(cnn, tmp_path):
    path, _ = cnn
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((8, 3, 32, 32), np.float32))
    run = CliRunner().invoke(app, ["train", str(path), "--data", str(wrong), "-o",
                                   str(tmp_path / "out"), "--steps", "1"])
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.exit_code == 1 and len(lines) == 1, run.stderr
    assert lines[0].startswith("error:") and "wrong.npy" in lines[0] and "16" in lines[0], \
        lines[0]
    assert not (tmp_path / "out").exists()


def test_text_for_an_onnx_model_and_a_batch_it_cannot_take_are_refused(cnn, tmp_path):
    path, images = cnn
    text = tmp_path / "t.txt"
    text.write_text("words")
    with pytest.raises(ValueError, match="tensor file"):
        from afmc.train.options import check_train_options

        check_train_options(model=str(path), data=str(text), steps=1, lora_rank=None,
                            max_minutes=None, device="cpu")
    with pytest.raises(ValueError, match="batches of exactly 4"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(path, images, tmp_path / "out", load_config(None, [*TRAINING,
                                                                  "training.batch_size=8"]))

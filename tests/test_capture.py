"""Capture front ends: torch.export of plain modules and HF causal LMs, and their ONNX lowering."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnxscript import opset18 as op
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from afmc.capture import (
    CapturedModel,
    CaptureError,
    capture_causal_lm,
    capture_module,
    load_causal_lm,
)
from afmc.compiler import onnx_export
from afmc.compiler.onnx_export import export_onnx

VOCAB = 300
TOKENS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
DECODER = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": VOCAB,
    "max_position_embeddings": 128,
    **TOKENS,
}
ARCHITECTURES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**DECODER)),
    "phi3": lambda: Phi3ForCausalLM(Phi3Config(**DECODER)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**DECODER)),
    "gpt2": lambda: GPT2LMHeadModel(
        GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=128, **TOKENS)
    ),
}


def _tokens(batch: int, seq: int) -> torch.Tensor:
    return torch.randint(VOCAB, (batch, seq), generator=torch.Generator().manual_seed(batch * seq))


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _axes(value_info: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def saved_lm(request, tmp_path_factory) -> tuple[PreTrainedModel, Path]:
    """A tiny random model of each architecture, saved with save_pretrained."""
    torch.manual_seed(0)
    model = ARCHITECTURES[request.param]().eval()
    model_dir = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(model_dir)
    return model, model_dir


@pytest.fixture(scope="module")
def captured_lm(saved_lm) -> tuple[PreTrainedModel, CapturedModel]:
    model, model_dir = saved_lm
    return model, capture_causal_lm(model_dir, example_seq_len=16)


def test_causal_lm_graph_matches_hf_logits(captured_lm):
    model, captured = captured_lm
    assert captured.input_names == ["input_ids"]
    assert captured.output_names == ["logits"]
    assert captured.example_inputs[0].shape == (2, 16)
    ids = _tokens(3, 11)
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits
        got = captured.graph_module(ids)
        reference = captured.fp_module(ids)
    assert got.shape == (3, 11, VOCAB)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reference, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_causal_lm_lowers_to_onnx(captured_lm, tmp_path):
    _, captured = captured_lm
    path = tmp_path / "model.onnx"
    export_onnx(captured, path)
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == ["input_ids"]
    assert _axes(graph.input[0]) == ["batch", "seq"]
    assert [o.name for o in graph.output] == ["logits"]
    assert _axes(graph.output[0]) == ["batch", "seq", VOCAB]
    session = _session(path)
    for batch, seq in [(1, 5), (3, 23)]:
        ids = _tokens(batch, seq)
        with torch.no_grad():
            expected = captured.graph_module(ids).numpy()
        (got,) = session.run(["logits"], {"input_ids": ids.numpy()})
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_capture_from_loaded_model():
    torch.manual_seed(0)
    model = ARCHITECTURES["llama"]().eval()
    captured = capture_causal_lm(model, example_seq_len=8)
    assert captured.source.startswith("hf:")
    ids = _tokens(1, 1)
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits
        torch.testing.assert_close(captured.graph_module(ids), expected, rtol=1e-5, atol=1e-6)


def test_missing_model_directory(tmp_path):
    with pytest.raises(CaptureError, match="not found: .*absent"):
        load_causal_lm(tmp_path / "absent")


def test_missing_config(tmp_path):
    with pytest.raises(CaptureError, match=r"config\.json: file not found"):
        load_causal_lm(tmp_path)


def test_corrupt_config(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(CaptureError, match=r"config\.json: not a valid JSON file"):
        capture_causal_lm(tmp_path)


def test_model_type_without_causal_lm_class(tmp_path):
    config = {"model_type": "vit", "architectures": ["ViTModel"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CaptureError, match=r"model type 'vit' \(ViTModel\) has no causal-LM class"):
        load_causal_lm(tmp_path)


def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    with pytest.raises(CaptureError, match=r"model type 'no-such-model' does not load") as info:
        load_causal_lm(tmp_path)
    assert "\n" not in str(info.value)


class DataDependentBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        if y.sum() > 0:
            return y * 2
        return y


class NumpySine(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.sin(x.numpy()))


class CallsNumpy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 4), NumpySine())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def test_capture_error_names_data_dependent_branch():
    with pytest.raises(CaptureError) as info:
        capture_module(DataDependentBranch(), (torch.randn(2, 4),))
    message = str(info.value)
    assert "\n" not in message
    assert "module '<root>' (DataDependentBranch)" in message
    assert "data-dependent control flow" in message
    assert "`if y.sum() > 0:`" in message


def test_capture_error_names_numpy_call():
    with pytest.raises(CaptureError) as info:
        capture_module(CallsNumpy(), (torch.randn(2, 4),))
    message = str(info.value)
    assert "\n" not in message
    assert "module 'block.1' (NumpySine)" in message
    assert "NumPy call on a tensor" in message
    assert "np.sin(x.numpy())" in message


class ConvMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.fc2(torch.relu(self.fc1(features)))


def _capture_conv_mlp() -> CapturedModel:
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1)
    return capture_module(ConvMLP().eval(), (torch.randn(2, 3, 8, 8),), {"x": {0: batch}})


@pytest.mark.slow
def test_plain_module_through_capture_and_onnx(tmp_path):
    captured = _capture_conv_mlp()
    assert (captured.input_names, captured.output_names) == (["x"], ["output"])
    assert captured.source == "torch:ConvMLP"
    assert {n.op for n in captured.graph_module.graph.nodes} == {
        "placeholder",
        "get_attr",
        "call_function",
        "output",
    }
    images = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        expected = captured.fp_module(images)
        torch.testing.assert_close(captured.graph_module(images), expected, rtol=1e-5, atol=1e-6)
    path = tmp_path / "convmlp.onnx"
    export_onnx(captured, path)
    onnx.checker.check_model(str(path), full_check=True)
    assert _axes(onnx.load(path).graph.input[0]) == ["batch", 3, 8, 8]
    session = _session(path)
    (got,) = session.run(["output"], {"x": images.numpy()})
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)
    (single,) = session.run(["output"], {"x": images[:1].numpy()})
    np.testing.assert_allclose(single, expected[:1].numpy(), rtol=1e-4, atol=1e-5)


@torch.library.custom_op("afmc_test::scaled_linear", mutates_args=())
def scaled_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scale: float
) -> torch.Tensor:
    return torch.nn.functional.linear(x, weight, bias) * scale


@scaled_linear.register_fake
def _scaled_linear_fake(x, weight, bias, scale):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _scaled_linear_onnx(x, weight, bias, scale: float):
    y = op.Add(op.MatMul(x, op.Transpose(weight, perm=[1, 0])), bias)
    return op.Mul(y, op.CastLike(op.Constant(value_float=scale), y))


def test_rewritten_graph_lowers_with_custom_translation(tmp_path):
    """A pass-style rewrite (aten.linear -> custom op) in place, then lowering again."""
    captured = _capture_conv_mlp()
    gm = captured.graph_module
    for node in gm.graph.find_nodes(op="call_function", target=torch.ops.aten.linear.default):
        node.target = torch.ops.afmc_test.scaled_linear.default
        node.args = (*node.args, 0.5)
    gm.recompile()
    images = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected = gm(images)
    path = tmp_path / "rewritten.onnx"
    table = {torch.ops.afmc_test.scaled_linear.default: _scaled_linear_onnx}
    export_onnx(
        gm,
        path,
        table,
        example_inputs=captured.example_inputs,
        dynamic_shapes=captured.dynamic_shapes,
    )
    onnx.checker.check_model(str(path), full_check=True)
    session = _session(path)
    (got,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("translated", [False, True], ids=["aten", "custom-op"])
def test_lowering_gives_what_torch_onnx_export_gives(translated):
    """The lowering calls torch.onnx's exporter with a registry built once per process;
    the model is byte for byte what torch.onnx.export(dynamo=True) makes, with and
    without custom translations, and again on a second call (the cached registry)."""
    captured = _capture_conv_mlp()
    gm = captured.graph_module
    table = None
    if translated:
        for node in gm.graph.find_nodes(op="call_function",
                                        target=torch.ops.aten.linear.default):
            node.target = torch.ops.afmc_test.scaled_linear.default
            node.args = (*node.args, 0.5)
        gm.recompile()
        table = {torch.ops.afmc_test.scaled_linear.default: _scaled_linear_onnx}
    names = captured.input_names, captured.output_names
    ours = [onnx_export.to_onnx_model(gm, captured.example_inputs, captured.dynamic_shapes,
                                      *names, table, optimize=False) for _ in range(2)]
    program = torch.export.export(gm, captured.example_inputs,
                                  dynamic_shapes=captured.dynamic_shapes)
    theirs = torch.onnx.export(program, dynamo=True, custom_translation_table=table,
                               input_names=names[0], output_names=names[1], optimize=False,
                               verbose=False)
    theirs.rename_axes(onnx_export._axis_names(theirs.model, captured.dynamic_shapes))
    want = ir.serde.serialize_model(theirs.model).SerializeToString()
    assert [ir.serde.serialize_model(model).SerializeToString() for model in ours] == [want] * 2


def test_large_weights_go_to_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD_BYTES", 0)
    captured = _capture_conv_mlp()
    path = tmp_path / "big.onnx"
    export_onnx(captured, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    onnx.checker.check_model(str(path), full_check=True)
    images = torch.randn(2, 3, 8, 8)
    (got,) = _session(path).run(["output"], {"x": images.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, captured.graph_module(images).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("architecture", ["llama", "phi3", "qwen2", "gpt2"])
def test_sixteen_bit_checkpoint_loads_as_its_float32_load(architecture, model_dirs, tmp_path,
                                                         monkeypatch):
    """A bfloat16 safetensors directory is loaded in bfloat16 and upcast tensor by tensor
    (afmc.capture.upcast): every parameter and buffer, and the logits, equal
    transformers' float32 load of the same files."""
    from afmc.capture import hf
    from afmc.capture.hf import load_causal_lm, read_config
    from afmc.capture.upcast import stored_dtype, upcast_in_place

    upcasts = []
    monkeypatch.setattr(hf, "upcast_in_place",
                        lambda model: upcasts.append(upcast_in_place(model)) or upcasts[-1])

    directory = tmp_path / "bf16"
    model = AutoModelForCausalLM.from_pretrained(model_dirs[architecture])
    model.to(torch.bfloat16).save_pretrained(directory)
    assert stored_dtype(read_config(directory), directory) == torch.bfloat16
    got = load_causal_lm(directory)
    assert upcasts == [True]  # loaded in 16 bits and upcast, not loaded again
    expected = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    got_state, expected_state = got.state_dict(), expected.state_dict()
    assert got_state.keys() == expected_state.keys()
    for name, tensor in expected_state.items():
        assert got_state[name].dtype == tensor.dtype, name
        assert torch.equal(got_state[name], tensor), name
    for (name, buffer), (_, reference) in zip(got.named_buffers(), expected.named_buffers(),
                                              strict=True):
        assert buffer.dtype == reference.dtype and torch.equal(buffer, reference), name
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(got(ids).logits, expected(ids).logits)


def test_upcast_refuses_a_sixteen_bit_buffer_computed_at_init():
    """A non-persistent buffer made in 16 bits at initialisation cannot be upcast exactly:
    upcast_in_place says so (the loader then loads in float32)."""
    from afmc.capture.upcast import upcast_in_place

    module = nn.Linear(4, 4).to(torch.bfloat16)
    module.register_buffer("frequencies", torch.ones(4, dtype=torch.bfloat16), persistent=False)
    assert not upcast_in_place(module)
    module.frequencies = torch.ones(4)
    assert upcast_in_place(module)
    assert module.weight.dtype == torch.float32 and module.bias.dtype == torch.float32

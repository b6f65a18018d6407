"""fold-norms (FX) and onnx-fold-norms (ONNX): graphs before and after, numerical
equivalence, refusals. (fold-batchnorm: test_fold_batchnorm.py.)"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from analog_models import (
    LayerNormMLP,
    compile_onnx,
    mlp_batches,
    onnx_graph,
    op_types,
    random_weights,
    run_onnx,
)
from conftest import VOCAB, tiny_model
from onnx import helper
from torch import fx, nn
from transformers import LlamaConfig, LlamaForCausalLM

from afmc.api import load
from afmc.capture import CapturedModel, capture_causal_lm, capture_module
from afmc.compiler import lowering
from afmc.compiler.onnx_export import export_onnx
from afmc.config import AfmcConfig, load_config
from afmc.ops.analog_linear import ANALOG_LINEAR
from afmc.passes import get_pass
from afmc.passes.fx.fold_norms import FoldNorms
from afmc.passes.layers import NOTES_KEY
from afmc.passes.onnx.fold_norms import FoldNorms as OnnxFoldNorms
from passes.conftest import assert_equivalent

aten = torch.ops.aten
NORM_COUNT = 5  # 2 layers x (attention norm, MLP norm) + the final norm


def _randomise_norms(model: nn.Module) -> nn.Module:
    """Norm weights away from one and biases away from zero, so folding is not a no-op."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if "Norm" not in type(module).__name__:
                continue
            module.weight.copy_(1 + 0.5 * torch.randn(module.weight.shape, generator=generator))
            if getattr(module, "bias", None) is not None:
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=generator))
    return model


def _check_logits(captured: CapturedModel, program: fx.GraphModule) -> None:
    input_ids = torch.randint(VOCAB, (3, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_equivalent(program(input_ids), captured.fp_module(input_ids))


def _notes(program: fx.GraphModule) -> dict[str, dict]:
    return {note["norm"]: note for note in program.meta[NOTES_KEY]}


def _targets(program: fx.GraphModule) -> set[str]:
    return {node.target for node in program.graph.find_nodes(op="get_attr")}


# ------------------------------------------------------------------ FX: fold-norms


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "phi3"])
def test_rmsnorm_scales_fold_into_the_linear_layers(architecture: str) -> None:
    captured = capture_causal_lm(_randomise_norms(tiny_model(architecture)))
    program = captured.graph_module
    layer = captured.fp_module.lm.model.layers[0]
    qkv = "qkv_proj" if architecture == "phi3" else "q_proj"
    original = getattr(layer.self_attn, qkv).weight.detach().clone()
    nodes = len(program.graph.nodes)
    assert sum(target.endswith("norm.weight") for target in _targets(program)) == NORM_COUNT

    result = FoldNorms()(program)

    assert result.modified
    # each norm loses its scale multiply and the get_attr of its weight
    assert len(program.graph.nodes) == nodes - 2 * NORM_COUNT
    assert not any(target.endswith("norm.weight") for target in _targets(program))
    notes = _notes(program)
    assert len(notes) == NORM_COUNT and all(note["folded"] for note in notes.values())
    assert notes["lm.model.norm"]["reason"] == "folded into lm.lm_head"
    assert qkv in notes["lm.model.layers.0.input_layernorm"]["reason"]
    folded = program.get_parameter(f"lm.model.layers.0.self_attn.{qkv}.weight")
    scale = layer.input_layernorm.weight.detach()
    torch.testing.assert_close(folded, original * scale, rtol=1e-6, atol=1e-7)
    assert torch.equal(getattr(layer.self_attn, qkv).weight, original)  # FP model untouched
    _check_logits(captured, program)


def test_gpt2_layernorms_fold_into_conv1d_addmm_except_the_tied_head() -> None:
    captured = capture_causal_lm(_randomise_norms(tiny_model("gpt2")))
    program = captured.graph_module
    block = captured.fp_module.lm.transformer.h[0]
    w, b = block.attn.c_attn.weight.detach().clone(), block.attn.c_attn.bias.detach().clone()
    g, beta = block.ln_1.weight.detach(), block.ln_1.bias.detach()
    nodes = len(program.graph.nodes)

    assert FoldNorms()(program).modified

    norms = program.graph.find_nodes(op="call_function", target=aten.layer_norm.default)
    assert [node.args[2] is None and node.args[3] is None for node in norms] == [True] * 4 + [False]
    assert len(program.graph.nodes) == nodes - 2 * 4  # weight and bias get_attr of 4 norms
    torch.testing.assert_close(
        program.get_parameter("lm.transformer.h.0.attn.c_attn.weight"),
        w * g[:, None],
        rtol=1e-6,
        atol=1e-7,
    )
    torch.testing.assert_close(
        program.get_parameter("lm.transformer.h.0.attn.c_attn.bias"),
        b + beta @ w,
        rtol=1e-6,
        atol=1e-6,
    )
    final = _notes(program)["lm.transformer.ln_f"]
    assert not final["folded"]
    assert "lm.lm_head.weight" in final["reason"] and "embedding" in final["reason"]
    _check_logits(captured, program)


def test_tied_embeddings_leave_the_final_norm_unchanged() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=100,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
        )
    )
    captured = capture_causal_lm(_randomise_norms(model))
    program = captured.graph_module

    assert FoldNorms()(program).modified

    notes = _notes(program)
    assert [note["folded"] for note in notes.values()] == [True] * 4 + [False]
    reason = notes["lm.model.norm"]["reason"]
    assert "lm.lm_head.weight" in reason and "aten.embedding" in reason
    assert "lm.model.norm.weight" in _targets(program)  # its scale multiply is still there
    _check_logits(captured, program)


class _Block(nn.Module):
    """x -> norm -> linear (+ the norm's output again when `residual`)."""

    def __init__(self, norm: nn.Module, bias: bool, residual: bool = False) -> None:
        super().__init__()
        self.norm, self.proj, self.residual = norm, nn.Linear(8, 8, bias=bias), residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        return self.proj(y) + y if self.residual else self.proj(y)


@pytest.mark.parametrize("norm", [nn.LayerNorm(8), nn.RMSNorm(8)], ids=["layer_norm", "rms_norm"])
def test_aten_norms_fold_and_a_linear_without_bias_gains_one(norm: nn.Module) -> None:
    torch.manual_seed(0)
    module = _Block(_randomise_norms(norm), bias=False).eval()
    x = torch.randn(4, 3, 8)
    captured = capture_module(module, (x,))
    program = captured.graph_module

    assert FoldNorms()(program).modified

    (norm_node,) = [
        n
        for n in program.graph.nodes
        if n.target in (aten.layer_norm.default, aten.rms_norm.default)
    ]
    assert norm_node.args[2] is None
    (linear,) = program.graph.find_nodes(op="call_function", target=aten.linear.default)
    assert (len(linear.args) > 2) == isinstance(norm, nn.LayerNorm)  # the shift made a bias
    assert "norm.weight" not in _targets(program)
    assert_equivalent(program(x), module(x))


def test_a_norm_read_by_a_residual_add_is_left_unchanged() -> None:
    module = _Block(_randomise_norms(nn.LayerNorm(8)), bias=True, residual=True).eval()
    x = torch.randn(2, 8)
    program = capture_module(module, (x,)).graph_module
    before = program.graph.python_code("self").src

    assert not FoldNorms()(program).modified

    assert program.graph.python_code("self").src == before
    (note,) = program.meta[NOTES_KEY]
    assert note["norm"] == "norm" and not note["folded"]
    assert "aten.add.Tensor" in note["reason"] and "reads its output" in note["reason"]
    assert_equivalent(program(x), module(x))


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_analog_layers_hold_the_folded_weights(architecture: str) -> None:
    captured = capture_causal_lm(_randomise_norms(tiny_model(architecture)))
    program = FoldNorms()(captured.graph_module).graph_module
    config = AfmcConfig()
    if architecture == "gpt2":  # lowering handles layer_norm without weight and bias
        model = lowering.export_program(
            program,
            captured.example_inputs,
            captured.dynamic_shapes,
            captured.input_names,
            captured.output_names,
        )
        session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString())
        ids = captured.example_inputs[0]
        (logits,) = session.run(None, {"input_ids": ids.numpy()})
        assert_equivalent(torch.from_numpy(logits), captured.fp_module(ids).detach())
    folded = {
        name: p.detach().clone() for name, p in program.named_parameters(remove_duplicate=False)
    }
    for name in ("place-layers", "insert-analog-linear"):
        program = get_pass(name).factory(config)(program).graph_module

    analog = program.graph.find_nodes(op="call_function", target=ANALOG_LINEAR)
    assert len(analog) == {"llama": 2 * 7 + 1, "gpt2": 2 * 4 + 1}[architecture]
    lm = captured.fp_module.lm
    if architecture == "llama":  # the first analog layer is q_proj, then c_attn (as [out, in])
        block = lm.model.layers[0]
        expected = block.self_attn.q_proj.weight * block.input_layernorm.weight
    else:
        block = lm.transformer.h[0]
        expected = (block.attn.c_attn.weight * block.ln_1.weight[:, None]).T
    held = program.get_parameter(analog[0].args[1].target)
    torch.testing.assert_close(held, expected.detach(), rtol=1e-6, atol=1e-7)
    for node in analog:
        name = node.meta["afmc"].name
        source = folded[f"{name}.weight"]
        if architecture == "gpt2" and name != "lm.lm_head":  # Conv1D holds W as [in, out]
            source = source.T
        assert torch.equal(program.get_parameter(node.args[1].target), source), name
    assert torch.isfinite(program(captured.example_inputs[0])).all()


# ------------------------------------------------------------------ ONNX: onnx-fold-norms


def test_fold_layer_norm_into_matmul_and_gemm():
    rng = np.random.default_rng(1)
    model = onnx_graph(
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
            "w1": random_weights(rng, 8, 5),
            "w2": random_weights(rng, 6, 8),
            "c": rng.standard_normal(6),
        },
    )
    x = rng.standard_normal((3, 8)).astype(np.float32)
    expected = run_onnx(model, {"x": x})
    assert OnnxFoldNorms()(model).modified
    norm = model.graph.node(0)
    assert len(norm.inputs) == 2 and np.all(norm.inputs[1].const_value.numpy() == 1)
    assert op_types(model) == ["LayerNormalization", "MatMul", "Add", "Gemm"]
    assert model.graph.node("gemm").attributes.get_float("beta") == 1.0
    assert not {"g", "b"} & set(model.graph.initializers)
    for got, want in zip(run_onnx(model, {"x": x}), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fold_decomposed_rms_norm_copies_a_shared_weight():
    rng = np.random.default_rng(2)
    model = onnx_graph(
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
            "w": random_weights(rng, 8, 4),
        },
    )
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    expected = run_onnx(model, {"x": x})
    assert OnnxFoldNorms()(model).modified
    assert "gain" not in [node.name for node in model.graph]
    assert "g" not in model.graph.initializers
    readers = [node.inputs[1].name for node in model.graph if node.op_type == "MatMul"]
    assert readers == ["w.folded", "w"]
    for got, want in zip(run_onnx(model, {"x": x}), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op_type", ["RMSNormalization", "SimplifiedLayerNormalization"])
def test_fold_rms_norm_ops(op_type):
    rng = np.random.default_rng(3)
    model = onnx_graph(
        [
            helper.make_node(op_type, ["x", "g"], ["n"], axis=-1),
            helper.make_node("MatMul", ["n", "w"], ["y"]),
        ],
        {"x": [4, 8]},
        ["y"],
        {"g": rng.uniform(0.5, 2, 8), "w": random_weights(rng, 8, 3)},
        opset=23,
    )
    x = rng.standard_normal((4, 8)).astype(np.float32)
    expected = run_onnx(model, {"x": x})[0]
    assert OnnxFoldNorms()(model).modified
    assert np.all(model.graph.node(0).inputs[1].const_value.numpy() == 1)
    np.testing.assert_allclose(run_onnx(model, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)


def test_fold_norms_leaves_a_norm_with_other_readers():
    rng = np.random.default_rng(4)
    model = onnx_graph(
        [
            helper.make_node("LayerNormalization", ["x", "g"], ["n"]),
            helper.make_node("MatMul", ["n", "w"], ["y"]),
            helper.make_node("Add", ["n", "x"], ["residual"]),
        ],
        {"x": [2, 8]},
        ["y", "residual"],
        {"g": rng.uniform(0.5, 2, 8), "w": random_weights(rng, 8, 8)},
    )
    before = onnx.printer.to_text(ir.to_proto(model))
    assert not OnnxFoldNorms()(model).modified
    assert onnx.printer.to_text(ir.to_proto(model)) == before


def test_fold_norms_on_the_exported_llama(llama_onnx):
    """The torch exporter's decomposed RMSNorm (one gain shared by all five norms) folds."""
    model = ir.load(llama_onnx)
    gain = model.graph.initializers["lm.model.layers.0.input_layernorm.weight"]
    gain.const_value = ir.tensor(np.linspace(0.5, 2.0, 64, dtype=np.float32), name=gain.name)
    ids = {"input_ids": np.random.default_rng(13).integers(0, 256, (2, 9))}
    expected = run_onnx(model, ids)[0]
    assert OnnxFoldNorms()(model).modified
    assert gain.name not in model.graph.initializers, "all five norms folded"
    np.testing.assert_allclose(run_onnx(model, ids)[0], expected, rtol=1e-4, atol=1e-4)


def test_layer_norm_affine_is_folded_with_fp_outputs_kept(tmp_path):
    torch.manual_seed(1)
    module = LayerNormMLP().eval()
    with torch.no_grad():
        module.norm.weight.uniform_(0.5, 2.0)
        module.norm.bias.normal_()
    batches = mlp_batches()
    export_onnx(capture_module(module, (batches[0],)), tmp_path / "mlp.onnx")
    result = compile_onnx(
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

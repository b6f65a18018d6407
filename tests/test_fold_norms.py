"""fold-norms and fold-batchnorm: graphs before and after, numerical equivalence, refusals."""

from __future__ import annotations

import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from conftest import VOCAB, tiny_model
from torch import fx, nn
from transformers import LlamaConfig, LlamaForCausalLM

from afmc.capture import CapturedModel, capture_causal_lm, capture_module
from afmc.compiler import lowering
from afmc.config import AfmcConfig
from afmc.ops.analog_linear import ANALOG_LINEAR
from afmc.passes import get_pass
from afmc.passes.fx.fold_batchnorm import FoldBatchNorm
from afmc.passes.fx.fold_norms import FoldNorms
from afmc.passes.layers import NOTES_KEY

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


def _assert_equivalent(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal within 1e-5 relative to the largest magnitude."""
    actual, expected = actual.detach(), expected.detach()
    error = float((actual - expected).abs().max())
    assert error <= 1e-5 * float(expected.abs().max()), error


def _check_logits(captured: CapturedModel, program: fx.GraphModule) -> None:
    input_ids = torch.randint(VOCAB, (3, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _assert_equivalent(program(input_ids), captured.fp_module(input_ids))


def _notes(program: fx.GraphModule) -> dict[str, dict]:
    return {note["norm"]: note for note in program.meta[NOTES_KEY]}


def _targets(program: fx.GraphModule) -> set[str]:
    return {node.target for node in program.graph.find_nodes(op="get_attr")}


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
    _assert_equivalent(program(x), module(x))


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
    _assert_equivalent(program(x), module(x))


class _ConvBN(nn.Module):
    """conv + BatchNorm2d + relu, linear + BatchNorm1d, conv1d + BatchNorm1d without affine."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)
        self.lin, self.bn1 = nn.Linear(5, 6), nn.BatchNorm1d(6)
        self.conv1, self.bn2 = nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4, affine=False)
        with torch.no_grad():
            for bn in (self.bn, self.bn1, self.bn2):
                bn.running_mean.normal_()
                bn.running_var.uniform_(0.5, 2.0)
                if bn.affine:
                    bn.weight.uniform_(0.5, 1.5)
                    bn.bias.normal_()

    def forward(self, x, y, z):
        return torch.relu(self.bn(self.conv(x))), self.bn1(self.lin(y)), self.bn2(self.conv1(z))


def _bn_inputs() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(3)
    return tuple(
        torch.randn(shape, generator=generator) for shape in ((2, 3, 8, 8), (4, 5), (2, 3, 9))
    )


def _check_outputs(program: fx.GraphModule, module: nn.Module, inputs: tuple) -> None:
    with torch.no_grad():
        for actual, expected in zip(program(*inputs), module(*inputs), strict=True):
            _assert_equivalent(actual, expected)


def test_batchnorm_folds_into_conv_and_linear() -> None:
    torch.manual_seed(0)
    module, inputs = _ConvBN().eval(), _bn_inputs()
    program = capture_module(module, inputs).graph_module
    nodes = len(program.graph.nodes)

    assert FoldBatchNorm()(program).modified

    assert not program.graph.find_nodes(op="call_function", target=aten.batch_norm.default)
    # 3 BN nodes and their statistics (2 x 4 + 1 x 2 get_attr) go, conv gains a bias get_attr
    assert len(program.graph.nodes) == nodes - 3 - 10 + 1
    (conv,) = program.graph.find_nodes(op="call_function", target=aten.conv2d.default)
    assert conv.args[2].target == "conv.bias"
    assert [note["folded"] for note in program.meta[NOTES_KEY]] == [True] * 3
    assert module.conv.bias is None  # the FP module keeps its own parameters
    _check_outputs(program, module, inputs)


@pytest.mark.slow
def test_batchnorm_after_decompositions() -> None:
    torch.manual_seed(0)
    module, inputs = _ConvBN().eval(), _bn_inputs()
    program = torch.export.export(module, inputs).run_decompositions().module()

    assert FoldBatchNorm()(program).modified

    legit = aten._native_batch_norm_legit_no_training.default
    assert len(program.graph.find_nodes(op="call_function", target=legit)) == 1
    notes = {note["norm"]: note for note in program.meta[NOTES_KEY]}
    assert notes["bn"]["folded"] and notes["bn2"]["folded"]
    assert "addmm" in notes["bn1"]["reason"]  # linear decomposes to permute + addmm
    _check_outputs(program, module, inputs)


class _SharedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


@pytest.mark.parametrize("train", [False, True], ids=["shared-output", "training"])
def test_batchnorm_refusals(train: bool) -> None:
    module = _SharedConv().train(train)
    x = torch.randn(2, 3, 4, 4)
    program = capture_module(module, (x,)).graph_module

    assert not FoldBatchNorm()(program).modified

    (note,) = program.meta[NOTES_KEY]
    expected = "batch statistics" if train else "is also read by add"
    assert not note["folded"] and expected in note["reason"]


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
        _assert_equivalent(torch.from_numpy(logits), captured.fp_module(ids).detach())
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

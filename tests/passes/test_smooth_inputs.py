"""smooth-inputs (FX) and onnx-smooth-inputs (ONNX), SmoothQuant at a fixed alpha: exact
in FP, balanced channel maxima, folds into the up projection (FX), a Mul by 1/s before
each group (ONNX), a tied weight copied; the same scales at both levels; and it helps int8
on a model with an outlier channel."""

from __future__ import annotations

import re

import numpy as np
import onnx_ir as ir
import pytest
import torch
from analog_models import compile_onnx, run_onnx
from conftest import tiny_model

from afmc.api import compile as afmc_compile
from afmc.capture import capture_causal_lm
from afmc.config import load_config
from afmc.data.tokenizer import ByteTokenizer
from afmc.passes.fx.smooth_inputs import (
    accelerator_groups,
    channel_maxima,
    smoothing_scale,
    weight_matrix,
)
from afmc.passes.layers import META_KEY, NOTES_KEY
from afmc.passes.onnx.insert_analog_linear import InsertOnnxAnalogLinear
from afmc.passes.onnx.place_layers import PlaceOnnxLayers
from afmc.passes.onnx.smooth_inputs import SmoothOnnxInputs
from afmc.passes.onnx.smoothing import crossbar_weight
from afmc.passes.registry import get_pass
from afmc.runtime.chip import load_record
from afmc.runtime.views import fp_reference
from passes.conftest import (
    TwoGroups,
    assert_smoothed_with_fp_kept,
    smoothing_muls,
    two_groups_batches,
    two_groups_onnx,
)

aten = torch.ops.aten


def _batches(vocab: int = 256, count: int = 3) -> list[tuple[torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randint(vocab, (2, 24), generator=generator),) for _ in range(count)]


def _with_outlier_channel(model: torch.nn.Module) -> torch.nn.Module:
    """Make channel 5 of every input-norm output 40x larger (an LLM-like outlier)."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[5] = 40.0
            layer.post_attention_layernorm.weight[5] = 40.0
    return model


def _smoothed(alpha: float = 0.5):
    model = _with_outlier_channel(tiny_model("llama")).eval()
    captured = capture_causal_lm(model)
    config = load_config(None, [f"smoothing.alpha={alpha}"])
    gm = captured.graph_module
    for name in ("fold-norms", "place-layers"):
        gm = get_pass(name).factory(config)(gm).graph_module
    gm = get_pass("smooth-inputs").factory(config, batches=_batches())(gm).graph_module
    return captured, gm


# ------------------------------------------------------------------ FX: smooth-inputs


def test_smoothing_scale_formula():
    x_max = torch.tensor([1.0, 4.0, 100.0, 0.0])
    w_max = torch.tensor([1.0, 1.0, 0.25, 2.0])
    scale = smoothing_scale(x_max, w_max, 0.5)
    raw = (x_max[:3] ** 0.5) / (w_max[:3] ** 0.5)
    expected = raw / raw.log().mean().exp()
    torch.testing.assert_close(scale[:3], expected)
    assert scale[3] == 1.0  # channel never seen: unchanged
    torch.testing.assert_close(smoothing_scale(x_max, w_max, 0.0)[:3],
                               (1 / w_max[:3]) / (1 / w_max[:3]).log().mean().exp())


def test_smoothing_is_exact_and_balances_channels():
    captured, gm = _smoothed()
    ids = _batches()[0][0]
    with torch.no_grad():
        expected = captured.fp_module(ids)
        torch.testing.assert_close(gm(ids), expected, rtol=1e-4, atol=1e-4)
    groups = accelerator_groups(gm)
    maxima = channel_maxima(gm, groups, _batches())
    q_group = next(x for x, layers in groups.items()
                   if layers[0].name.endswith("layers.0.self_attn.q_proj"))
    x_max = maxima[q_group]
    w_max = torch.stack([weight_matrix(gm, layer).abs().amax(0)
                         for layer in groups[q_group]]).amax(0)
    ratio = x_max / w_max  # alpha 0.5: max |x'_k| / max |W'_k| is the same for every channel
    torch.testing.assert_close(ratio, ratio.mean().expand_as(ratio), rtol=1e-4, atol=0)
    # fold-norms moved the outlier (norm weight 40 on channel 5) into the weight columns;
    # smoothing shares it between inputs and weights: sqrt(40) each, about
    layer = captured.fp_module.lm.model.layers[0]
    folded = (layer.self_attn.q_proj.weight * layer.input_layernorm.weight).detach()
    folded = folded.abs().amax(0)
    assert float(w_max[5] / w_max.median()) < float(folded[5] / folded.median()) / 3


def test_down_projection_scale_folds_into_up_rows():
    _, gm = _smoothed()
    notes = {note["norm"]: note for note in gm.meta[NOTES_KEY]}
    down = next(note for name, note in notes.items() if name.endswith("layers.0.mlp.down_proj"))
    assert down["folded"] and "rows of" in down["reason"] and "up_proj" in down["reason"]
    qkv = next(note for name, note in notes.items() if "layers.0.self_attn.q_proj" in name)
    assert "digital scale" in qkv["reason"]
    digital_scales = [n for n in gm.graph.nodes
                      if n.op == "get_attr" and "smooth_scale" in str(n.target)]
    # q/k/v, gate/up and o_proj of each of the 2 layers, and the LM head: no scale for down
    assert len(digital_scales) == 2 * 3 + 1


def test_tied_weight_gets_its_own_scaled_copy():
    model = tiny_model("llama")
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    captured = capture_causal_lm(model.eval())
    config = load_config(None, [])
    gm = get_pass("place-layers").factory(config)(captured.graph_module).graph_module
    gm = get_pass("smooth-inputs").factory(config, batches=_batches())(gm).graph_module
    head = next(note for note in gm.meta[NOTES_KEY] if note["norm"].endswith("lm_head"))
    assert head["folded"]
    embedding = captured.fp_module.lm.model.embed_tokens.weight
    torch.testing.assert_close(gm.get_parameter("lm.model.embed_tokens.weight"), embedding)
    head_weight = next(n for n in gm.graph.nodes if n.op == "get_attr"
                       and "smoothed_weight" in str(n.target))
    assert not torch.equal(gm.get_parameter(head_weight.target), embedding)
    ids = _batches()[0][0]
    with torch.no_grad():
        torch.testing.assert_close(gm(ids), captured.fp_module(ids), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_smoothing_lowers_the_int8_error_of_an_outlier_channel():
    import afmc.api

    model = _with_outlier_channel(tiny_model("llama")).eval()
    errors = {}
    for skip in ([], ["smooth-inputs"]):
        result = afmc.api.compile(capture_causal_lm(model), "int8", load_config(None, []),
                                  calibration=_batches(), skip=skip)
        errors[bool(skip)] = result.record["fidelity"]["noise_free"]["relative_error"]
    assert errors[False] < 0.8 * errors[True]


# ------------------------------------------------------------------ ONNX: onnx-smooth-inputs


def test_onnx_smooth_inputs_puts_a_mul_before_each_group_with_fp_kept():
    """A Mul by 1/s before each group of analog nodes reading one activation, W diag(s) on
    their crossbars with s = a^alpha / w^(1 - alpha): at alpha 0.5 every channel's
    max |x / s| / max |W diag(s)| is the same; the FP view is unchanged."""
    torch.manual_seed(0)
    module, batches = TwoGroups().eval(), two_groups_batches()
    config = load_config(None, ["hardware.max_in=16", "smoothing.alpha=0.5"])
    model = two_groups_onnx(module)
    PlaceOnnxLayers(config)(model)
    InsertOnnxAnalogLinear(config)(model)
    feeds = [{"x": batch.numpy()} for batch in batches]
    fp = [run_onnx(fp_reference(ir.to_proto(model)), feed)[0] for feed in feeds]
    analog = {node.meta[META_KEY].name: node for node in model.graph
              if node.op_type == "AnalogLinear"}
    weights = {name: crossbar_weight(node).numpy() for name, node in analog.items()}
    assert not smoothing_muls(model)

    assert SmoothOnnxInputs(config, feeds)(model).modified

    muls = smoothing_muls(model)
    assert list(muls) == ["x", "a"]
    (mul,) = [node for node in model.graph if node.op_type == "Mul" and node.inputs[0].name == "x"]
    assert {user.name for user, _ in mul.outputs[0].uses()} == {analog["q"].name,
                                                                 analog["k"].name}
    notes = {note["norm"]: note for note in model.meta[NOTES_KEY]}
    assert list(notes) == ["q, k", "o"] and all("alpha 0.5" in n["reason"] for n in notes.values())
    for group, names in (("x", ("q", "k")), ("a", ("o",))):
        for name in names:
            np.testing.assert_allclose(crossbar_weight(analog[name]).numpy(),
                                       weights[name] / muls[group], rtol=1e-5)
    x_max = torch.cat(batches).abs().amax(0).numpy()
    w_max = np.maximum(np.abs(weights["q"]).max(0), np.abs(weights["k"]).max(0))
    ratio = (x_max * muls["x"]) / (w_max / muls["x"])
    np.testing.assert_allclose(ratio, np.full_like(ratio, ratio.mean()), rtol=1e-4)
    for feed, expected in zip(feeds, fp, strict=True):
        got = run_onnx(fp_reference(ir.to_proto(model)), feed)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


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
    result = compile_onnx(root / "llama.onnx", "aimc", config,
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
    assert_smoothed_with_fp_kept(tmp_path / "onnx", onnx_out, len(chosen))


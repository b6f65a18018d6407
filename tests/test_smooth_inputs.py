"""smooth-inputs: exact in FP, balanced channel maxima, folds into the up projection,
a tied weight copied; and it helps int8 on a model with an outlier channel."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from afmc.capture import capture_causal_lm
from afmc.config import load_config
from afmc.passes.fx.smooth_inputs import (
    accelerator_groups,
    channel_maxima,
    smoothing_scale,
    weight_matrix,
)
from afmc.passes.layers import NOTES_KEY
from afmc.passes.registry import get_pass

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

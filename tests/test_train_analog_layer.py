"""The training-mode analog layer against aihwkit-lightning 2.1.0 and against its formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from afmc.config import AfmcConfig, config_from_dict
from afmc.ops.analog_linear import slice_sizes
from afmc.train.analog_layer import (
    AnalogTrainingLinear,
    analog_layers,
    apply_range_decay,
    clip_weights,
    convert_to_analog,
    learned_ranges,
    restore_linears,
)

peer_nn = pytest.importorskip("aihwkit_lightning.nn")
peer_configs = pytest.importorskip("aihwkit_lightning.simulator.configs")

OUT = 12


@pytest.fixture(autouse=True)
def _torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIHWKIT_USE_TRITON", raising=False)


def _config(max_in: int, **training) -> AfmcConfig:
    base = {"weight_noise": 0.0, "range_init_batches": 0}
    return config_from_dict({"hardware": {"max_in": max_in},
                             "training": {**base, **training}})


def _peer(max_in: int, decay: float, weight: torch.Tensor, bias: torch.Tensor,
          r: torch.Tensor):
    config = peer_configs.TorchInferenceRPUConfig()
    config.forward.inp_res = 254.0
    config.forward.out_res = 254.0
    config.forward.out_bound = 14.0
    config.forward.out_noise = 0.0
    config.mapping.max_input_size = max_in
    ranges = config.pre_post.input_range
    ranges.enable, ranges.dynamic, ranges.fast_mode = True, False, False
    ranges.learn_input_range = True
    ranges.init_from_data = 0
    ranges.decay = decay
    ranges.input_min_percentage = 0.95
    config.clip.type = peer_configs.WeightClipType.LAYER_GAUSSIAN_PER_CHANNEL
    config.clip.sigma = 2.5
    config.modifier.noise_type = peer_configs.WeightNoiseInjectionType.NONE
    config.modifier.quantization_type = peer_configs.WeightQuantizationType.NONE
    layer = peer_nn.AnalogLinear(weight.shape[1], weight.shape[0], bias=True,
                                 rpu_config=config)
    layer.set_weights_and_biases(weight, bias)
    layer.input_range.data = r.clone()
    return layer.train()


def _afmc(config: AfmcConfig, weight: torch.Tensor, bias: torch.Tensor, r: torch.Tensor):
    linear = nn.Linear(weight.shape[1], weight.shape[0])
    linear.weight.data, linear.bias.data = weight.clone(), bias.clone()
    layer = AnalogTrainingLinear(linear, config.hardware, config.training)
    layer.input_range.data = r.clone()
    return layer.train()


CASES = {  # name: (K, max_in, range scale): scale 4 leaves > 95% of inputs unclipped (decay)
    "no-split": (300, -1, 1.0),
    "unequal": (301, 128, 1.0),
    "unequal-wide-ranges": (301, 128, 4.0),
    "1025": (1025, 512, 1.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_training_forward_and_gradients_match_peer(case: str):
    """Noise off, decay on: output and the gradients of x, W and the input ranges equal the
    peer's AnalogLinear in training mode."""
    k, max_in, scale = CASES[case]
    gen = torch.Generator().manual_seed(k + max_in)
    sizes = slice_sizes(k, max_in)
    x = torch.randn(3, 7, k, generator=gen)
    weight = torch.randn(OUT, k, generator=gen) * 0.05 * (torch.rand(OUT, 1, generator=gen) + .2)
    bias = torch.randn(OUT, generator=gen)
    r = (torch.rand(len(sizes), generator=gen) + 0.5) * scale
    upstream = torch.randn(3, 7, OUT, generator=gen)
    results = []
    for layer in (_peer(max_in, 0.01, weight, bias, r),
                  _afmc(_config(max_in, range_decay=0.01), weight, bias, r)):
        x_in = x.clone().requires_grad_(True)
        y = layer(x_in)
        y.backward(upstream)
        if isinstance(layer, AnalogTrainingLinear):  # afmc adds the decay once per step
            apply_range_decay(layer, 0.01, 0.95)
        results.append((y.detach(), x_in.grad, layer.weight.grad, layer.input_range.grad))
    (y_p, gx_p, gw_p, gr_p), (y_a, gx_a, gw_a, gr_a) = results
    torch.testing.assert_close(y_a, y_p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_a, gx_p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw_a, gw_p, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gr_a, gr_p, rtol=1e-4, atol=1e-5)
    unclipped = (x.abs() < r.max()).float().mean()
    assert (scale > 1) == bool(unclipped > 0.95)  # both decay branches are exercised


def test_eval_mode_is_the_inference_op():
    """eval() computes exactly torch.ops.afmc.analog_linear + bias, as compile does."""
    config = _config(128)
    gen = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(OUT, 301, generator=gen) * 0.1, torch.randn(OUT, generator=gen)
    layer = _afmc(config, weight, bias, torch.tensor([2.0, 2.5, 3.0])).eval()
    x = torch.randn(4, 301, generator=gen)
    expected = torch.ops.afmc.analog_linear(x, weight, torch.tensor([2.0, 2.5, 3.0]),
                                            slice_sizes(301, 128), 254.0, 254.0, 14.0, 0.0)
    assert torch.equal(layer(x), expected + bias)


def _identity_readout(layer: AnalogTrainingLinear, k: int) -> torch.Tensor:
    """One training forward of the K unit vectors: row i holds the programmed column i."""
    with torch.no_grad():
        return layer(torch.eye(k)) - layer.bias


def test_weight_noise_statistics_follow_the_formula():
    """Training weight noise: fresh every forward, zero mean, std 0.03 * max|W[j, slice]|
    per row and slice (ADC and DAC made fine enough not to hide it)."""
    k, max_in = 256, 128
    config = config_from_dict({
        "hardware": {"max_in": max_in, "inp_res": 2, "out_res": 2 ** 22, "out_bound": 1e3},
        "training": {"weight_noise": 0.03, "range_init_batches": 0}})
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(OUT, k, generator=gen) * (torch.rand(OUT, 1, generator=gen) + 0.1)
    layer = _afmc(config, weight, torch.zeros(OUT), torch.ones(2))
    torch.manual_seed(0)
    draws = torch.stack([_identity_readout(layer, k).T for _ in range(40)])  # [40, N, K]
    noise = draws - weight
    assert not torch.equal(draws[0], draws[1])
    for index, cols in enumerate((slice(0, 128), slice(128, 256))):
        expected = 0.03 * weight[:, cols].abs().amax(dim=1)
        measured = noise[:, :, cols].std(dim=(0, 2))
        # 40 * 128 samples per row: the std estimate is within 5% (> 5 sigma)
        assert torch.allclose(measured, expected, rtol=0.05), index
        assert noise[:, :, cols].mean().abs() < 0.002 * expected.mean() * 10


def test_read_noise_statistics_follow_the_formula():
    """Training read noise: std read_noise * r / sqrt(n) * w_max per output channel."""
    k, max_in = 256, 128
    config = config_from_dict({
        "hardware": {"max_in": max_in, "out_res": 2 ** 22, "out_bound": 1e3},
        "training": {"weight_noise": 0.0, "read_noise": 0.05, "range_init_batches": 0}})
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(OUT, k, generator=gen) * (torch.rand(OUT, 1, generator=gen) + 0.1)
    r = torch.tensor([2.0, 3.0])
    layer = _afmc(config, weight, torch.zeros(OUT), r)
    x = torch.zeros(4000, k)
    torch.manual_seed(0)
    with torch.no_grad():
        y = layer(x) - layer.bias  # x = 0: the output is the read noise alone
    w_max = torch.stack([w.abs().amax(dim=1) for w in weight.split(128, dim=1)])  # [2, N]
    expected = (0.05 / math.sqrt(2) * r[:, None] * w_max).square().sum(0).sqrt()
    torch.testing.assert_close(y.std(dim=0), expected, rtol=0.05, atol=0)


def test_clip_weights_follows_the_formula():
    """Each analog row is clamped to +-2.5 std(row); digital layers are untouched."""
    model = nn.Sequential(nn.Linear(64, 8), nn.Linear(8, 4))
    gen = torch.Generator().manual_seed(2)
    for layer in model:
        layer.weight.data = torch.randn(layer.weight.shape, generator=gen) ** 3
    before = [layer.weight.detach().clone() for layer in model]
    config = config_from_dict({"placement": {"digital": ["^lm\\.1$"]}})
    convert_to_analog(model, config)
    clip_weights(model, 2.5)
    bound = 2.5 * before[0].std(dim=1, keepdim=True)
    assert torch.equal(model[0].weight, before[0].clamp(-bound, bound))
    assert (before[0].abs() > bound).any()
    assert torch.equal(model[1].weight, before[1])
    assert type(model[1]) is nn.Linear


def test_range_initialisation_is_the_running_mean_of_kappa_std():
    """r = mean over the first N batches of kappa * std(x_s) (unbiased), then learned."""
    config = _config(4, range_init_batches=2, range_kappa=18.0)
    layer = _afmc(config, torch.randn(3, 8) * 0.1, torch.zeros(3), torch.ones(2))
    batches = [torch.randn(5, 8) * scale for scale in (1.0, 3.0, 10.0)]
    for batch in batches:
        layer(batch).sum().backward()
    std = [[float(b[:, :4].std()), float(b[:, 4:].std())] for b in batches[:2]]
    expected = torch.tensor([18 * (std[0][i] + std[1][i]) / 2 for i in range(2)])
    torch.testing.assert_close(layer.input_range.detach(), expected)
    assert layer.range_init_steps.tolist() == [2, 2]
    assert layer.input_range.grad is not None  # learned from then on


def test_convert_and_restore_a_tied_causal_lm():
    """Placement rules pick the layers; tied weights stay tied; restore gives nn.Linear back."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    names = convert_to_analog(model, config_from_dict(
        {"placement": {"digital": ["mlp\\.down_proj$"]}}))
    assert "lm_head" in names and "model.layers.0.mlp.down_proj" not in names
    assert len(names) == 7
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert set(learned_ranges(model)) == set(names)
    assert all(layer.sizes == [32] or layer.sizes == [48] for _, layer in analog_layers(model))
    restore_linears(model)
    assert not list(analog_layers(model))
    assert type(model.lm_head) is nn.Linear
    assert model.lm_head.weight is model.model.embed_tokens.weight

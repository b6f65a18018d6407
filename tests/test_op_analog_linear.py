"""The afmc analog linear op (shared/HARDWARE.md, "One analog linear layer, forward").

Checks the torch op against a float64 per-slice reference written here from HARDWARE.md's
steps, the ONNX functions (afmc.SliceInput / AnalogLinear / NoisyAnalogLinear) on
onnxruntime against the torch op, the read-noise statistics of both, the straight-through
gradients, and torch.export / torch.onnx.export of modules that call the op.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from analog_models import OPSET, analog_linear_model, analog_session
from onnx import TensorProto, helper

import afmc.ops
from afmc.ops.analog_linear import slice_sizes

AFM = {"inp_res": 254.0, "out_res": 254.0, "out_bound": 14.0}


# ------------------------------------------------------------------ helpers


def _reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    input_range: torch.Tensor,
    sizes: Sequence[int],
    inp_res: float,
    out_res: float,
    out_bound: float,
    per_layer_bound: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """HARDWARE.md steps 1-7 in float64, slice by slice.

    Returns (y, adc_step_sum) where adc_step_sum[j] = sum over slices of 2 b[s, j] / out_res,
    the tolerance "one ADC step per slice" for output channel j. per_layer_bound=True is the
    wrong semantics (one w_max per slice for all rows), for a negative check.
    """
    x64, w64 = x.double(), weight.double()
    y = torch.zeros(*x.shape[:-1], weight.shape[0], dtype=torch.float64)
    step_sum = torch.zeros(weight.shape[0], dtype=torch.float64)
    start = 0
    for s, size in enumerate(sizes):
        x_s, w_s = x64[..., start : start + size], w64[:, start : start + size]
        start += size
        r = float(input_range[s])
        in_step = 2 * r / inp_res  # step 2: DAC
        x_q = torch.round(torch.clamp(x_s, -r, r) / in_step) * in_step
        w_max = w_s.abs().amax(dim=1)  # step 3
        if per_layer_bound:
            w_max = w_max.max().expand_as(w_max)
        y_s = x_q @ w_s.T  # step 4
        bound = out_bound * r * w_max  # step 6: ADC
        out_step = 2 * bound / out_res
        safe_step = torch.where(out_step > 0, out_step, torch.ones_like(out_step))
        y_q = torch.clamp(torch.round(y_s / safe_step) * safe_step, -bound, bound)
        y += torch.where(out_step > 0, y_q, torch.zeros_like(y_q))  # a zero row reads 0
        step_sum += out_step
    assert start == x.shape[-1]
    return y, step_sum


def _w_max(weight: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """max |W[j, slice s]| as [n, N]."""
    return torch.stack([w.abs().amax(dim=1) for w in torch.split(weight, list(sizes), dim=-1)])


def _op(
    x: torch.Tensor,
    weight: torch.Tensor,
    input_range: torch.Tensor,
    sizes: Sequence[int],
    inp_res: float = 254.0,
    out_res: float = 254.0,
    out_bound: float = 14.0,
    out_noise: float = 0.0,
) -> torch.Tensor:
    return torch.ops.afmc.analog_linear(
        x, weight, input_range, list(sizes), inp_res, out_res, out_bound, out_noise
    )


def _layer(
    shape: tuple[int, ...], out_features: int, max_in: int, seed: int, x_scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Seeded random x [*shape], W [N, K] with rows of different scales, r per slice."""
    gen = torch.Generator().manual_seed(seed)
    k = shape[-1]
    sizes = slice_sizes(k, max_in)
    x = torch.randn(*shape, generator=gen) * x_scale
    row_scale = torch.rand(out_features, 1, generator=gen) * 2 + 0.1
    weight = torch.randn(out_features, k, generator=gen) * 0.05 * row_scale
    input_range = torch.rand(len(sizes), generator=gen) * 2 + 0.5
    return x, weight, input_range, sizes


def _run(
    session: ort.InferenceSession, x: torch.Tensor, weight: torch.Tensor, r: torch.Tensor
) -> torch.Tensor:
    feeds = {"X": x.numpy(), "W": weight.numpy(), "R": r.numpy()}
    return torch.from_numpy(session.run(None, feeds)[0])


def _assert_within_adc_step(
    actual: torch.Tensor, expected: torch.Tensor, step_sum: torch.Tensor, exact_share: float
) -> None:
    """|actual - expected| <= one ADC step per slice (per output channel) everywhere, and
    at least `exact_share` of the entries agree to float rounding."""
    diff = (actual.double() - expected.double()).abs()
    slack = 1e-4 * step_sum + 1e-6 * expected.double().abs()
    over = diff > step_sum + slack
    assert not over.any(), f"{int(over.sum())} entries off by more than one ADC step"
    rounding = diff <= slack
    share = rounding.double().mean().item()
    assert share >= exact_share, f"only {share:.4f} of entries agree to float rounding"


def _pre_adc(
    x: torch.Tensor,
    weight: torch.Tensor,
    r: torch.Tensor,
    sizes: Sequence[int],
    inp_res: float = 254.0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per slice: (quantized input, pre-ADC output) in float32, as the op computes them."""
    out = []
    for s, (x_s, w_s) in enumerate(
        zip(torch.split(x, sizes, -1), torch.split(weight, sizes, -1), strict=True)
    ):
        step = 2 * r[s] / inp_res
        x_q = torch.round(x_s.clamp(-r[s], r[s]) / step) * step
        out.append((x_q, x_q @ w_s.T))
    return out


# ------------------------------------------------------------------ slice_sizes


@pytest.mark.parametrize(
    ("in_features", "max_in", "expected"),
    [
        (1000, 512, [500, 500]),
        (1025, 512, [342, 342, 341]),
        (1024, 512, [512, 512]),
        (512, 512, [512]),
        (513, 512, [257, 256]),
        (300, 128, [100, 100, 100]),
        (301, 128, [101, 100, 100]),
        (7, 2, [2, 2, 2, 1]),
        (4096, -1, [4096]),
        (100, 1000, [100]),
        (1, 512, [1]),
    ],
)
def test_slice_sizes_follow_divmod_rule(in_features: int, max_in: int, expected: list[int]):
    """n = ceil(K / max_in) slices of sizes base + (i < extra), (base, extra) = divmod(K, n);
    max_in = -1 (or >= K) gives one slice."""
    assert slice_sizes(in_features, max_in) == expected


@pytest.mark.parametrize("in_features", [1, 2, 511, 512, 513, 1000, 1025, 2047, 4097, 11008])
@pytest.mark.parametrize("max_in", [1, 3, 64, 512])
def test_slice_sizes_invariants(in_features: int, max_in: int):
    """Sizes sum to K, never exceed max_in, differ by at most one, larger ones first, and the
    count is the minimum ceil(K / max_in)."""
    sizes = slice_sizes(in_features, max_in)
    assert sum(sizes) == in_features
    assert len(sizes) == math.ceil(in_features / max_in)
    assert max(sizes) <= max_in
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)


def test_slice_sizes_rejects_empty_layer():
    """K <= 0 is an error, not an empty split."""
    with pytest.raises(ValueError):
        slice_sizes(0, 512)


# ------------------------------------------------------------------ torch op vs reference

SHAPES = {
    "no-split": ((5, 64), 8, -1),
    "equal-1000": ((4, 1000), 12, 512),
    "unequal-1025": ((3, 1025), 10, 512),
    "batched-3d-equal": ((2, 3, 300), 6, 128),
    "unequal-130": ((6, 130), 7, 64),
}
CONFIGS = {
    "afm": (254.0, 254.0, 14.0),
    "7bit": (126.0, 126.0, 10.0),
    "mixed": (254.0, 126.0, 20.0),
    "coarse-adc": (62.0, 30.0, 6.0),
    "fine-adc": (254.0, 1022.0, 3.0),
}


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_torch_op_matches_hardware_reference(shape: str, config: str):
    """The torch op equals the float64 HARDWARE.md reference within one ADC step per slice
    everywhere, and to float rounding on >= 99% of outputs (only float32-vs-float64 rounding
    ties may flip a level). Every case clips some DAC inputs; out_bound 3 also saturates
    ADC outputs (see the next test)."""
    lead, n_out, max_in = SHAPES[shape]
    inp_res, out_res, out_bound = CONFIGS[config]
    x, weight, r, sizes = _layer(
        lead, n_out, max_in, seed=list(SHAPES).index(shape) * 10 + list(CONFIGS).index(config)
    )
    expected, step_sum = _reference(x, weight, r, sizes, inp_res, out_res, out_bound)
    actual = _op(x, weight, r, sizes, inp_res, out_res, out_bound)
    assert actual.shape == (*lead[:-1], n_out) and actual.dtype == torch.float32
    assert any((x_s.abs() > r[s]).any() for s, x_s in enumerate(torch.split(x, sizes, -1)))
    _assert_within_adc_step(actual, expected, step_sum, exact_share=0.99)


def test_torch_op_matches_reference_under_adc_saturation():
    """With a tight ADC bound (out_bound 3) many slice outputs saturate (|pre-ADC y_s| >= b),
    and the op still equals the reference to float rounding everywhere."""
    x, weight, r, sizes = _layer((8, 1000), 12, 512, seed=1)
    bound = 3.0 * r[:, None] * _w_max(weight, sizes)
    saturated = torch.stack(
        [y_s.abs() >= bound[s] for s, (_, y_s) in enumerate(_pre_adc(x, weight, r, sizes))]
    )
    assert 0.1 < saturated.double().mean() < 0.9
    expected, step_sum = _reference(x, weight, r, sizes, 254.0, 254.0, 3.0)
    _assert_within_adc_step(_op(x, weight, r, sizes, 254.0, 254.0, 3.0), expected, step_sum, 1.0)


def test_torch_op_is_not_float_nor_per_layer_bound():
    """Negative checks that the reference comparison can fail: the op is far (more than one
    ADC step) from the float matmul and from the same steps with a per-layer instead of a
    per-row ADC bound."""
    x, weight, r, sizes = _layer((16, 96), 6, 48, seed=2)
    weight[0] *= 20  # one row with a much larger w_max: per-layer bound coarsens the others
    y = _op(x, weight, r, sizes)
    ref, step_sum = _reference(x, weight, r, sizes, **AFM)
    _assert_within_adc_step(y, ref, step_sum, exact_share=1.0)
    far = (y - x @ weight.T).abs() > step_sum
    assert far.any()
    per_layer, _ = _reference(x, weight, r, sizes, **AFM, per_layer_bound=True)
    assert ((y - per_layer).abs() > step_sum).any()


def test_torch_op_all_zero_row_and_zero_input():
    """An all-zero weight row reads exactly 0 (no NaN from a zero ADC bound), and a zero input
    gives exactly 0."""
    x, weight, r, sizes = _layer((4, 100), 5, 64, seed=3)
    weight[2] = 0
    y = _op(x, weight, r, sizes)
    assert torch.isfinite(y).all()
    assert (y[:, 2] == 0).all()
    assert (_op(torch.zeros_like(x), weight, r, sizes) == 0).all()


# ------------------------------------------------------------------ torch op vs ONNX Runtime

ORT_CASES = {
    # name: (x shape, N, max_in, x scale, zero row)
    "no-split": ((9, 70), 11, -1, 1.0, False),
    "equal-split": ((9, 1000), 11, 512, 1.0, False),
    "unequal-split": ((9, 1025), 11, 512, 1.0, False),
    "unequal-small": ((9, 130), 5, 64, 1.0, False),
    "dac-clipping": ((9, 200), 7, 64, 6.0, False),
    "zero-row": ((9, 130), 6, 64, 1.0, True),
    "batched-3d": ((2, 4, 130), 6, 64, 1.0, False),
    "batched-3d-no-split": ((3, 2, 50), 4, -1, 1.0, False),
}
ORT_CONFIGS = {
    "afm": (254.0, 254.0, 14.0),
    "7bit": (126.0, 126.0, 10.0),
    "tight-bound-fine-adc": (254.0, 4096.0, 1.0),
}


@pytest.mark.parametrize("config", list(ORT_CONFIGS), ids=list(ORT_CONFIGS))
@pytest.mark.parametrize("case", list(ORT_CASES), ids=list(ORT_CASES))
def test_onnx_function_matches_torch_op(case: str, config: str):
    """afmc.AnalogLinear (after afmc.SliceInput on X and W when slices are unequal) on
    onnxruntime agrees with the torch op within one ADC step per slice, and to float rounding
    on >= 97% of outputs; both agree with the HARDWARE.md reference the same way. The model
    passes onnx.checker's full check."""
    shape, n_out, max_in, x_scale, zero_row = ORT_CASES[case]
    inp_res, out_res, out_bound = ORT_CONFIGS[config]
    x, weight, r, sizes = _layer(shape, n_out, max_in, seed=len(case) * 7 + 1, x_scale=x_scale)
    if zero_row:
        weight[3] = 0
    attrs = {"inp_res": inp_res, "out_res": out_res, "out_bound": out_bound}
    session = analog_session(analog_linear_model(sizes, n_out, rank=len(shape), **attrs))
    y_ort = _run(session, x, weight, r)
    y_torch = _op(x, weight, r, sizes, inp_res, out_res, out_bound)
    assert y_ort.shape == y_torch.shape
    assert torch.isfinite(y_ort).all()
    expected, step_sum = _reference(x, weight, r, sizes, inp_res, out_res, out_bound)
    _assert_within_adc_step(y_ort, y_torch, step_sum, exact_share=0.97)
    _assert_within_adc_step(y_ort, expected, step_sum, exact_share=0.97)
    if zero_row:
        assert (y_ort[..., 3] == 0).all()
    if x_scale > 1:
        assert (x.abs() > r.max()).float().mean() > 0.5  # most inputs clip the DAC


def test_slice_input_pads_unequal_slices_with_zeros():
    """afmc.SliceInput lays slices [3, 2, 2] of a row out as [3, 3, 3] with zero padding."""
    x = torch.arange(1, 8, dtype=torch.float32).reshape(1, 7)
    node = helper.make_node("SliceInput", ["X"], ["Y"], domain="afmc", slice_sizes=[3, 2, 2])
    graph = helper.make_graph(
        [node],
        "slice",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", 7])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", 9])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("afmc", 1)],
        functions=afmc.ops.function_protos({"SliceInput"}, OPSET),
    )
    onnx.checker.check_model(model, full_check=True)
    y = analog_session(model).run(None, {"X": x.numpy()})[0]
    np.testing.assert_array_equal(y, [[1, 2, 3, 4, 5, 0, 6, 7, 0]])


# ------------------------------------------------------------------ read noise


def _noise_std_expected(
    weight: torch.Tensor,
    r: torch.Tensor,
    sizes: Sequence[int],
    out_noise: float,
    out_res: float,
    out_bound: float,
) -> torch.Tensor:
    """Per output channel: std of (noisy - clean) = sqrt(sum_s sigma_s^2 + step_s^2 / 6) with
    sigma_s = out_noise r_s w_max[s, j] / sqrt(n) (HARDWARE.md step 5); step_s^2 / 6 is the
    variance the two independent ADC roundings add (small: sigma_s >> step_s here)."""
    w_max = _w_max(weight, sizes).double()
    scale = r.double()[:, None] * w_max
    sigma = out_noise * scale / math.sqrt(len(sizes))
    step = 2 * out_bound * scale / out_res
    return torch.sqrt((sigma**2 + step**2 / 6).sum(0))


NOISE_CASES = {
    # name: (K, max_in, out_noise, out_res)
    "unequal-254": (99, 50, 0.5, 254.0),
    "no-split-fine-adc": (64, -1, 0.05, 4096.0),
    "three-slices-254": (150, 50, 0.3, 254.0),
}


@pytest.mark.parametrize("case", list(NOISE_CASES), ids=list(NOISE_CASES))
def test_onnx_read_noise_spread_per_row(case: str):
    """afmc.NoisyAnalogLinear on onnxruntime: per output row, the std of (noisy - clean) over
    4096 inputs is out_noise * sqrt(sum_s (r_s w_max[s, j])^2 / n) within 10% (with the ADC
    rounding's small share), the noise has mean ~0, and two runs differ (fresh noise)."""
    k, max_in, out_noise, out_res = NOISE_CASES[case]
    x, weight, r, sizes = _layer((4096, k), 8, max_in, seed=11, x_scale=0.1)
    attrs = {"inp_res": 254.0, "out_res": out_res, "out_bound": 14.0}
    clean = _run(analog_session(analog_linear_model(sizes, 8, **attrs)), x, weight, r)
    noisy_session = analog_session(
        analog_linear_model(sizes, 8, noisy=True, out_noise=out_noise, **attrs)
    )
    noisy = _run(noisy_session, x, weight, r)
    again = _run(noisy_session, x, weight, r)
    expected = _noise_std_expected(weight, r, sizes, out_noise, out_res, 14.0)
    diff = (noisy - clean).double()
    torch.testing.assert_close(diff.std(0), expected, rtol=0.1, atol=0)
    assert (diff.mean(0).abs() < 0.1 * expected).all()
    assert not torch.equal(noisy, again)
    assert (noisy != again).double().mean() > 0.5


def test_onnx_noisy_with_zero_noise_equals_clean():
    """NoisyAnalogLinear with out_noise = 0 computes exactly what AnalogLinear does."""
    x, weight, r, sizes = _layer((32, 130), 6, 64, seed=12)
    clean = _run(analog_session(analog_linear_model(sizes, 6, **AFM)), x, weight, r)
    noisy = _run(
        analog_session(analog_linear_model(sizes, 6, noisy=True, out_noise=0.0, **AFM)),
        x,
        weight,
        r,
    )
    assert torch.equal(clean, noisy)


@pytest.mark.parametrize("case", list(NOISE_CASES), ids=list(NOISE_CASES))
def test_torch_read_noise_spread_per_row(case: str):
    """The torch op with out_noise > 0: the same per-row spread within 10%, mean ~0, and two
    calls differ."""
    k, max_in, out_noise, out_res = NOISE_CASES[case]
    x, weight, r, sizes = _layer((4096, k), 8, max_in, seed=13, x_scale=0.1)
    torch.manual_seed(0)
    clean = _op(x, weight, r, sizes, 254.0, out_res, 14.0)
    noisy = _op(x, weight, r, sizes, 254.0, out_res, 14.0, out_noise)
    again = _op(x, weight, r, sizes, 254.0, out_res, 14.0, out_noise)
    expected = _noise_std_expected(weight, r, sizes, out_noise, out_res, 14.0)
    diff = (noisy - clean).double()
    torch.testing.assert_close(diff.std(0), expected, rtol=0.1, atol=0)
    assert (diff.mean(0).abs() < 0.1 * expected).all()
    assert (noisy != again).double().mean() > 0.5


def test_read_noise_is_clipped_by_the_adc():
    """Read noise enters before the ADC: even huge noise never leaves [-b, b] per slice."""
    x, weight, r, sizes = _layer((256, 130), 6, 64, seed=14)
    torch.manual_seed(0)
    y = _op(x, weight, r, sizes, out_noise=100.0)
    bound = (14.0 * r[:, None] * _w_max(weight, sizes)).sum(0)
    assert (y.abs() <= bound * (1 + 1e-6)).all()
    assert (y.abs() >= bound * 0.99).any()  # the noise does drive slices into saturation


# ------------------------------------------------------------------ straight-through gradients


def _grads(
    x: torch.Tensor,
    weight: torch.Tensor,
    r: torch.Tensor,
    sizes: Sequence[int],
    upstream: torch.Tensor,
    out_bound: float = 14.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, weight, r = (t.clone().requires_grad_() for t in (x, weight, r))
    y = _op(x, weight, r, sizes, 254.0, 254.0, out_bound)
    y.backward(upstream)
    return x.grad, weight.grad, r.grad


def test_gradients_without_adc_clipping():
    """With no ADC saturation: grad x = (g @ W_s) where |x| < r_s and exactly 0 where the DAC
    clips; grad W[:, slice s] = g^T @ x_q,s (the quantized input); batched 3-D input."""
    x, weight, r, sizes = _layer((3, 5, 130), 6, 64, seed=21, x_scale=1.2)
    upstream = torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(0))
    grad_x, grad_w, _ = _grads(x, weight, r, sizes, upstream)
    pre = _pre_adc(x, weight, r, sizes)
    bound = 14.0 * r[:, None] * _w_max(weight, sizes)
    assert all((y_s.abs() < bound[s]).all() for s, (_, y_s) in enumerate(pre))
    start = 0
    for s, size in enumerate(sizes):
        x_s, w_s = x[..., start : start + size], weight[:, start : start + size]
        inside = x_s.abs() < r[s]
        assert inside.any() and (~inside).any()
        torch.testing.assert_close(grad_x[..., start : start + size], (upstream @ w_s) * inside)
        assert (grad_x[..., start : start + size][~inside] == 0).all()
        assert (grad_x[..., start : start + size][inside] != 0).all()
        x_q = pre[s][0]
        expected_w = upstream.reshape(-1, 6).T @ x_q.reshape(-1, size)
        torch.testing.assert_close(grad_w[:, start : start + size], expected_w)
        assert not torch.allclose(expected_w, upstream.reshape(-1, 6).T @ x_s.reshape(-1, size))
        start += size


def test_gradients_blocked_where_adc_clips():
    """With a tight ADC bound (out_bound 1) the upstream gradient of saturated outputs
    (|pre-ADC y_s| > b) is blocked for x and W of that slice, and passes elsewhere."""
    x, weight, r, sizes = _layer((40, 130), 6, 64, seed=22, x_scale=0.8)
    upstream = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    grad_x, grad_w, _ = _grads(x, weight, r, sizes, upstream, out_bound=1.0)
    bound = 1.0 * r[:, None] * _w_max(weight, sizes)
    start = 0
    for s, (x_q, y_s) in enumerate(_pre_adc(x, weight, r, sizes)):
        size = sizes[s]
        passing = y_s.abs() <= bound[s]
        assert passing.any() and (~passing).any()
        g_s = upstream * passing
        w_s, x_s = weight[:, start : start + size], x[..., start : start + size]
        inside = x_s.abs() < r[s]
        torch.testing.assert_close(grad_x[:, start : start + size], (g_s @ w_s) * inside)
        torch.testing.assert_close(grad_w[:, start : start + size], g_s.T @ x_q)
        start += size


def test_input_range_gradient_hand_computed():
    """d/dr (op's rule): r * (sum of the negative upstream gradients at inputs clipped at +r
    - sum of the positive ones at inputs clipped at -r), per slice, from the gradient w.r.t.
    the quantized input (g @ W). Hand case: W = I, r = 2, x = [5, -5, 0.5, 0.1]."""
    weight = torch.eye(4)
    r = torch.tensor([2.0])
    x = torch.tensor([[5.0, -5.0, 0.5, 0.1]])
    # +r clip with negative grad (-2) counts, -r clip with positive grad (0.5) counts
    _, _, grad_r = _grads(x, weight, r, [4], torch.tensor([[-2.0, 0.5, 1.0, 1.0]]))
    torch.testing.assert_close(grad_r, torch.tensor([2.0 * (-2.0 - 0.5)]))
    # opposite signs at the clipped inputs: nothing counts, inside inputs never count
    _, _, grad_r = _grads(x, weight, r, [4], torch.tensor([[2.0, -0.5, 7.0, -7.0]]))
    torch.testing.assert_close(grad_r, torch.tensor([0.0]))
    # nothing clipped: zero gradient
    _, _, grad_r = _grads(x * 0.1, weight, r, [4], torch.tensor([[-2.0, 0.5, 1.0, 1.0]]))
    torch.testing.assert_close(grad_r, torch.tensor([0.0]))


def test_input_range_gradient_per_slice_random():
    """The rule on random data with three slices of different ranges: each r_s gets only its
    own slice's clipped entries."""
    x, weight, r, sizes = _layer((20, 130), 6, 64, seed=23, x_scale=1.5)
    upstream = torch.randn(20, 6, generator=torch.Generator().manual_seed(2))
    _, _, grad_r = _grads(x, weight, r, sizes, upstream)
    expected = torch.zeros(len(sizes))
    start = 0
    for s, size in enumerate(sizes):
        g_q = upstream @ weight[:, start : start + size]
        x_s = x[:, start : start + size]
        upper, lower = x_s >= r[s], x_s <= -r[s]
        assert upper.any() and lower.any()
        expected[s] = r[s] * (g_q[upper].clamp(max=0).sum() - g_q[lower].clamp(min=0).sum())
        start += size
    torch.testing.assert_close(grad_r, expected)
    assert (grad_r != 0).all()


# ------------------------------------------------------------------ export


class _TwoLayers(torch.nn.Module):
    """Unequal-slice analog layer (K = 40 in [14, 13, 13]), ReLU, unsplit analog layer."""

    def __init__(self, noisy: bool = False) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(5)
        self.w1 = torch.nn.Parameter(torch.randn(24, 40, generator=gen) * 0.2)
        self.r1 = torch.nn.Parameter(torch.tensor([2.0, 2.5, 3.0]))
        self.w2 = torch.nn.Parameter(torch.randn(8, 24, generator=gen) * 0.2)
        self.r2 = torch.nn.Parameter(torch.tensor([1.5]))
        self.noise = 0.04 if noisy else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.ops.afmc.analog_linear(x, self.w1, self.r1, [14, 13, 13], 254.0, 254.0, 14.0, 0.0)
        return torch.ops.afmc.analog_linear(
            torch.relu(h), self.w2, self.r2, [24], 126.0, 126.0, 10.0, self.noise
        )


def test_torch_export_uses_fake_impl():
    """torch.export traces the op through its fake impl (dynamic batch): the graph holds two
    afmc.analog_linear calls and the exported program computes what eager does."""
    model = _TwoLayers().eval()
    x = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(6))
    batch = torch.export.Dim("batch")
    exported = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})
    calls = [
        node
        for node in exported.graph.nodes
        if node.op == "call_function" and node.target == torch.ops.afmc.analog_linear.default
    ]
    assert len(calls) == 2
    assert calls[0].meta["val"].shape[-1] == 24 and calls[1].meta["val"].shape[-1] == 8
    for inputs in (x, x[:1]):
        torch.testing.assert_close(exported.module()(inputs), model(inputs), rtol=0, atol=0)


@pytest.mark.slow
def test_torch_onnx_export_one_afmc_node_per_layer():
    """torch.onnx.export(dynamo=True, custom_translation_table=afmc.ops.TRANSLATIONS) emits one
    afmc.AnalogLinear per layer (plus SliceInput on X and W of the unequal-slice layer), with
    the layer's attributes; with the functions attached the file passes the full check and
    onnxruntime matches eager within one ADC step."""
    model = _TwoLayers().eval()
    x = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(7))
    program = torch.onnx.export(
        model,
        (x,),
        dynamo=True,
        custom_translation_table=afmc.ops.TRANSLATIONS,
        optimize=False,
        verbose=False,
    )
    proto = program.model_proto
    afmc_nodes = [node for node in proto.graph.node if node.domain == "afmc"]
    assert Counter(node.op_type for node in afmc_nodes) == {"AnalogLinear": 2, "SliceInput": 2}
    analog = [node for node in afmc_nodes if node.op_type == "AnalogLinear"]
    attrs = [{a.name: helper.get_attribute_value(a) for a in node.attribute} for node in analog]
    assert attrs[0] == {"inp_res": 254.0, "out_res": 254.0, "out_bound": 14.0}
    assert attrs[1] == {"inp_res": 126.0, "out_res": 126.0, "out_bound": 10.0}
    slice_attrs = [
        helper.get_attribute_value(node.attribute[0])
        for node in afmc_nodes
        if node.op_type == "SliceInput"
    ]
    assert slice_attrs == [[14, 13, 13], [14, 13, 13]]
    opset = next(o.version for o in proto.opset_import if o.domain == "")
    del proto.functions[:]
    proto.functions.extend(afmc.ops.function_protos({"AnalogLinear", "SliceInput"}, opset))
    onnx.checker.check_model(proto, full_check=True)
    session = analog_session(proto)
    y = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        eager = model(x)
    step = 2 * 10.0 * 1.5 * model.w2.detach().abs().amax(1) / 126.0
    assert ((torch.from_numpy(y) - eager).abs() <= step * (1 + 1e-5)).all()


def test_torch_onnx_export_noisy_layer():
    """A layer with out_noise > 0 exports as afmc.NoisyAnalogLinear carrying out_noise."""
    model = _TwoLayers(noisy=True).eval()
    x = torch.randn(2, 40)
    program = torch.onnx.export(
        model,
        (x,),
        dynamo=True,
        custom_translation_table=afmc.ops.TRANSLATIONS,
        optimize=False,
        verbose=False,
    )
    nodes = [node for node in program.model_proto.graph.node if node.domain == "afmc"]
    kinds = Counter(node.op_type for node in nodes)
    assert kinds == {"AnalogLinear": 1, "NoisyAnalogLinear": 1, "SliceInput": 2}
    noisy = next(node for node in nodes if node.op_type == "NoisyAnalogLinear")
    attrs = {a.name: helper.get_attribute_value(a) for a in noisy.attribute}
    assert attrs["out_noise"] == pytest.approx(0.04)

"""afmc analog linear: y = ADC(sum over input slices of DAC(x_s) @ W_s^T) (HARDWARE.md 1-7).

One op, three forms that compute the same numbers:

- torch: ``torch.ops.afmc.analog_linear(x, weight, input_range, slice_sizes,
  inp_res, out_res, out_bound, out_noise)`` with straight-through gradients;
- ONNX: ``afmc.AnalogLinear(X, W, input_range)`` (and ``afmc.NoisyAnalogLinear``
  with read noise), preceded by ``afmc.SliceInput`` on X and W when the input
  slices are of unequal size, each a model-local function of standard ops;
- the translation between them, for torch.onnx's custom_translation_table.

The ONNX functions, and the runtime forms of their bodies, are in
afmc.ops.analog_linear_onnx (no torch there: running a compiled model needs none).

Per slice s with static input range r_s (x_s is the slice of the last dim):
  DAC   x_q = round(clamp(x_s, -r_s, r_s) / (2 r_s / inp_res)) * (2 r_s / inp_res)
  MVM   y_s = x_q @ W_s^T    (+ out_noise * r_s * w_max / sqrt(n) * N(0, 1) when on)
  ADC   b = out_bound * r_s * w_max[s, j],  w_max[s, j] = max |W[j, slice s]|
        y_s = clamp(round(y_s / (2 b / out_res)) * (2 b / out_res), -b, b)
  y = sum_s y_s   (the bias is added digitally, outside the op)

The ONNX body computes the same in integer-level units: with h_i = inp_res / 2
and h_o = out_res / 2, q = round(clip(x h_i / r, -h_i, h_i)) is the DAC level and
z = q @ (W^T h_o / (h_i out_bound w_max)) the ADC level before rounding, so every
weight-only factor folds into a constant when onnxruntime loads the model and
the per-inference cost is a few element-wise ops around the plain MatMul.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from onnxscript import values as onnxscript_values

from afmc.ops import onnx_domain
from afmc.ops.analog_linear_onnx import TINY


def slice_sizes(in_features: int, max_in: int) -> list[int]:
    """Split K inputs into n = ceil(K / max_in) nearly equal slices (max_in -1: one slice)."""
    if in_features <= 0:
        raise ValueError(f"in_features must be positive, got {in_features}")
    if max_in == -1 or max_in >= in_features:
        return [in_features]
    count = -(-in_features // max_in)
    base, extra = divmod(in_features, count)
    return [base + (i < extra) for i in range(count)]


def _slices(tensor: torch.Tensor, sizes: Sequence[int]) -> tuple[torch.Tensor, ...]:
    return torch.split(tensor, list(sizes), dim=-1)


def dac(x_s: torch.Tensor, r: torch.Tensor | float, inp_res: float) -> torch.Tensor:
    """The DAC of one slice at static range r: a new tensor of x_s's levels."""
    in_step = 2 * r / inp_res
    return x_s.clamp(-r, r).div_(in_step).round_().mul_(in_step)


def adc_(y: torch.Tensor, r: torch.Tensor | float, w_max: torch.Tensor, out_res: float,
         out_bound: float) -> torch.Tensor:
    """The ADC of one slice's product y (rows' w_max), in place on y."""
    bound = out_bound * r * w_max
    out_step = 2 * bound / out_res
    return y.div_(out_step).round_().mul_(out_step).clamp_(-bound, bound)


def row_max_abs(w_s: torch.Tensor) -> torch.Tensor:
    """w_max per weight row of a slice (floored at the smallest normal float)."""
    return w_s.abs().amax(dim=1).clamp_min(TINY)


def _slice_forward(
    x_s: torch.Tensor,
    w_s: torch.Tensor,
    r: torch.Tensor,
    count: int,
    inp_res: float,
    out_res: float,
    out_bound: float,
    out_noise: float,
    keep_pre_adc: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One slice: (ADC output, quantized input, pre-ADC output if `keep_pre_adc` else
    None)."""
    r = r.clamp_min(TINY)
    x_q = dac(x_s, r, inp_res)
    y = x_q @ w_s.T
    w_max = row_max_abs(w_s)
    if out_noise > 0:
        y.add_((out_noise * r / math.sqrt(count)) * w_max * torch.randn_like(y))
    pre_adc = y.clone() if keep_pre_adc else None
    return adc_(y, r, w_max, out_res, out_bound), x_q, pre_adc


@torch.library.custom_op("afmc::analog_linear", mutates_args=())
def analog_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    input_range: torch.Tensor,
    slice_sizes: Sequence[int],
    inp_res: float,
    out_res: float,
    out_bound: float,
    out_noise: float,
) -> torch.Tensor:
    """Analog crossbar linear layer without bias; see the module docstring."""
    w_slices = _slices(weight, slice_sizes)
    out = None
    for index, (x_s, w_s) in enumerate(zip(_slices(x, slice_sizes), w_slices, strict=True)):
        y_s, _, _ = _slice_forward(
            x_s, w_s, input_range[index], len(slice_sizes), inp_res, out_res, out_bound,
            out_noise,
        )
        out = y_s if out is None else out.add_(y_s)
    return out


@analog_linear.register_fake
def _analog_linear_fake(x, weight, input_range, slice_sizes, inp_res, out_res, out_bound,
                        out_noise):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _setup_context(ctx, inputs, output) -> None:
    x, weight, input_range, sizes, inp_res, out_res, out_bound, _ = inputs
    ctx.save_for_backward(x, weight, input_range)
    ctx.hyper = (list(sizes), inp_res, out_res, out_bound)


def _backward(ctx, grad_output: torch.Tensor):
    """Straight-through estimator.

    DAC and ADC rounding pass gradients through unchanged; the ADC clamp (applied
    after rounding) and the input clamp block them where they clip (an input
    exactly at +-r passes, as in aihwkit-lightning). The input range receives the AFM /
    aihwkit-lightning rule: r times (sum of the negative upstream gradients of
    inputs clipped at +r, minus the sum of the positive ones clipped at -r).
    """
    x, weight, input_range = ctx.saved_tensors
    sizes, inp_res, out_res, out_bound = ctx.hyper
    grad_x, grad_w = [], []
    grad_r = torch.zeros_like(input_range)
    for index, (x_s, w_s) in enumerate(zip(_slices(x, sizes), _slices(weight, sizes),
                                           strict=True)):
        r = input_range[index]
        _, x_q, y = _slice_forward(x_s, w_s, r, len(sizes), inp_res, out_res, out_bound, 0.0,
                                   keep_pre_adc=True)
        bound = out_bound * r.clamp_min(TINY) * row_max_abs(w_s)
        out_step = 2 * bound / out_res
        g_y = grad_output * ((torch.round(y / out_step) * out_step).abs() <= bound)
        g_clamped = g_y @ w_s
        upper, lower = x_s >= r, x_s <= -r
        grad_x.append(g_clamped * ((x_s < r) & (x_s > -r) | (x_s.abs() == r)))
        grad_w.append(g_y.reshape(-1, g_y.shape[-1]).T @ x_q.reshape(-1, x_q.shape[-1]))
        grad_r[index] = r * (g_clamped[upper].clamp(max=0).sum()
                             - g_clamped[lower].clamp(min=0).sum())
    return torch.cat(grad_x, dim=-1), torch.cat(grad_w, dim=-1), grad_r, None, None, None, \
        None, None


analog_linear.register_autograd(_backward, setup_context=_setup_context)
ANALOG_LINEAR = torch.ops.afmc.analog_linear.default


_AFMC_OPSET = onnxscript_values.Opset(onnx_domain.DOMAIN, onnx_domain.VERSION)


def translate_analog_linear(
    x, weight, input_range, slice_sizes, inp_res, out_res, out_bound, out_noise
):
    """torch.onnx custom translation: afmc::analog_linear -> afmc ONNX nodes."""
    sizes = [int(size) for size in slice_sizes]
    if len(set(sizes)) > 1:
        x = _AFMC_OPSET.SliceInput(x, slice_sizes=sizes)
        weight = _AFMC_OPSET.SliceInput(weight, slice_sizes=sizes)
    attributes = {"inp_res": float(inp_res), "out_res": float(out_res),
                  "out_bound": float(out_bound)}
    if out_noise > 0:
        return _AFMC_OPSET.NoisyAnalogLinear(x, weight, input_range, out_noise=float(out_noise),
                                             **attributes)
    return _AFMC_OPSET.AnalogLinear(x, weight, input_range, **attributes)


TRANSLATIONS = {ANALOG_LINEAR: translate_analog_linear}

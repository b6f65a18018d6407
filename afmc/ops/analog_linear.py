"""afmc analog linear: y = ADC(sum over input slices of DAC(x_s) @ W_s^T) (HARDWARE.md 1-7).

One op, three forms that compute the same numbers:

- torch: ``torch.ops.afmc.analog_linear(x, weight, input_range, slice_sizes,
  inp_res, out_res, out_bound, out_noise)`` with straight-through gradients;
- ONNX: ``afmc.AnalogLinear(X, W, input_range)`` (and ``afmc.NoisyAnalogLinear``
  with read noise), preceded by ``afmc.SliceInput`` on X and W when the input
  slices are of unequal size, each a model-local function of standard ops;
- the translation between them, for torch.onnx's custom_translation_table.

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

import numpy as np
import onnx
import torch
from onnx import FunctionProto, helper
from onnxscript import values as onnxscript_values

from afmc.ops import onnx_domain
from afmc.ops.onnx_domain import attribute_constant, ints_constant, make_function

TINY = torch.finfo(torch.float32).tiny


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


def _slice_forward(
    x_s: torch.Tensor,
    w_s: torch.Tensor,
    r: torch.Tensor,
    count: int,
    inp_res: float,
    out_res: float,
    out_bound: float,
    out_noise: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One slice: returns (ADC output, quantized input, pre-ADC output)."""
    r = r.clamp_min(TINY)
    in_step = 2 * r / inp_res
    x_q = torch.round(x_s.clamp(-r, r) / in_step) * in_step
    y = x_q @ w_s.T
    w_max = w_s.abs().amax(dim=1).clamp_min(TINY)
    if out_noise > 0:
        y = y + (out_noise * r / math.sqrt(count)) * w_max * torch.randn_like(y)
    bound = out_bound * r * w_max
    out_step = 2 * bound / out_res
    return torch.clamp(torch.round(y / out_step) * out_step, -bound, bound), x_q, y


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
    out = torch.zeros(*x.shape[:-1], weight.shape[0], dtype=x.dtype, device=x.device)
    for index, (x_s, w_s) in enumerate(zip(_slices(x, slice_sizes), w_slices, strict=True)):
        y_s, _, _ = _slice_forward(
            x_s, w_s, input_range[index], len(slice_sizes), inp_res, out_res, out_bound,
            out_noise,
        )
        out = out + y_s
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
        _, x_q, y = _slice_forward(x_s, w_s, r, len(sizes), inp_res, out_res, out_bound, 0.0)
        bound = out_bound * r.clamp_min(TINY) * w_s.abs().amax(dim=1).clamp_min(TINY)
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


# ---------------------------------------------------------------- ONNX form


def _analog_linear_body(opset: int, noisy: bool) -> FunctionProto:
    nodes = _common_constants(noisy) + [
        ints_constant("minus_one", [-1]),
        ints_constant("axis0", [0]),
        ints_constant("r_shape", [-1, 1, 1]),
        # Shapes: n slices of k inputs, M rows of X.
        helper.make_node("Shape", ["input_range"], ["n"]),
        helper.make_node("Shape", ["W"], ["k_total"], start=-1),
        helper.make_node("Div", ["k_total", "n"], ["k"]),
        helper.make_node("Shape", ["X"], ["lead"], end=-1),
        # Weight-only constants (folded by the runtime): W as [n, k, N], w_max [n, 1, N].
        helper.make_node("Concat", ["minus_one", "n", "k"], ["w_shape"], axis=0),
        helper.make_node("Reshape", ["W", "w_shape"], ["w3"]),
        helper.make_node("Transpose", ["w3"], ["w_t"], perm=[1, 2, 0]),
        helper.make_node("Abs", ["w_t"], ["w_abs"]),
        helper.make_node("ReduceMax", ["w_abs", "axis1"], ["w_max_raw"], keepdims=1),
        helper.make_node("Max", ["w_max_raw", "tiny"], ["w_max"]),
        helper.make_node("Reshape", ["input_range", "r_shape"], ["r_raw"]),
        helper.make_node("Max", ["r_raw", "tiny"], ["r"]),
        helper.make_node("Div", ["h_in", "r"], ["in_scale"]),
        helper.make_node("Mul", ["out_bound", "w_max"], ["bound_per_r"]),
        # W / w_max first: |W / w_max| <= 1 even for an all-zero row (w_max = tiny), where
        # level_ratio / (out_bound * tiny) overflows to inf and 0 * inf is NaN.
        helper.make_node("Div", ["w_t", "w_max"], ["w_unit"]),
        helper.make_node("Mul", ["w_unit", "w_scale"], ["w_eff"]),
        helper.make_node("Mul", ["r", "bound_per_r"], ["bound"]),
        helper.make_node("Div", ["bound", "h_out"], ["out_step"]),
        # DAC levels of X as [n, M, k].
        helper.make_node("Concat", ["minus_one", "n", "k"], ["x_shape"], axis=0),
        helper.make_node("Reshape", ["X", "x_shape"], ["x3"]),
        helper.make_node("Transpose", ["x3"], ["x_t"], perm=[1, 0, 2]),
        helper.make_node("Mul", ["x_t", "in_scale"], ["x_scaled"]),
        helper.make_node("Clip", ["x_scaled", "neg_h_in", "h_in"], ["x_clipped"]),
        helper.make_node("Round", ["x_clipped"], ["q"]),
        # Crossbar MVM in ADC-level units.
        helper.make_node("MatMul", ["q", "w_eff"], ["z"]),
    ]
    level = "z"
    if noisy:
        nodes += [
            helper.make_node("Cast", ["n"], ["n_float"], to=1),
            helper.make_node("Sqrt", ["n_float"], ["sqrt_n"]),
            helper.make_node("Mul", ["out_noise", "h_out"], ["noise_a"]),
            helper.make_node("Mul", ["out_bound", "sqrt_n"], ["noise_b"]),
            helper.make_node("Div", ["noise_a", "noise_b"], ["noise_std"]),
            helper.make_node("RandomNormalLike", ["z"], ["unit_noise"], mean=0.0, scale=1.0),
            helper.make_node("Mul", ["unit_noise", "noise_std"], ["noise"]),
            helper.make_node("Add", ["z", "noise"], ["z_noisy"]),
        ]
        level = "z_noisy"
    nodes += [
        helper.make_node("Round", [level], ["z_round"]),
        helper.make_node("Clip", ["z_round", "neg_h_out", "h_out"], ["z_q"]),
        helper.make_node("Mul", ["z_q", "out_step"], ["y_slices"]),
        helper.make_node("ReduceSum", ["y_slices", "axis0"], ["y2"], keepdims=0),
        helper.make_node("Concat", ["lead", "minus_one"], ["y_shape"], axis=0),
        helper.make_node("Reshape", ["y2", "y_shape"], ["Y"]),
    ]
    defaults: dict[str, float | list[int]] = {
        "inp_res": 254.0, "out_res": 254.0, "out_bound": 14.0,
    }
    if noisy:
        defaults["out_noise"] = 0.04
    doc = ("Analog crossbar MVM over equal input slices (one per input_range entry): "
           "8-bit DAC, MVM, " + ("read noise, " if noisy else "") + "8-bit ADC, digital sum.")
    return make_function(
        "NoisyAnalogLinear" if noisy else "AnalogLinear",
        ["X", "W", "input_range"], ["Y"], nodes, opset, defaults, doc,
    )


_INPUTS = [
    ("X", "activations [..., K] (K = n * k, equal slices; see SliceInput)"),
    ("W", "crossbar weights [N, K], the programmed conductances in weight units"),
    ("input_range", "static DAC range r per input slice [n]"),
]
_ATTRIBUTES: dict[str, tuple[float | list[int], str]] = {
    "inp_res": (254.0, "DAC steps over [-r, r] (254: 8 bit)"),
    "out_res": (254.0, "ADC steps over [-b, b] (254: 8 bit)"),
    "out_bound": (14.0, "ADC bound b = out_bound * r * max|W row slice|"),
}


def _common_constants(noisy: bool) -> list:
    nodes = [
        attribute_constant("inp_res", "inp_res"),
        attribute_constant("out_res", "out_res"),
        attribute_constant("out_bound", "out_bound"),
        helper.make_node("Constant", [], ["two"], value_float=2.0),
        helper.make_node("Constant", [], ["tiny"], value_float=TINY),
        helper.make_node("Div", ["inp_res", "two"], ["h_in"]),
        helper.make_node("Div", ["out_res", "two"], ["h_out"]),
        helper.make_node("Neg", ["h_in"], ["neg_h_in"]),
        helper.make_node("Neg", ["h_out"], ["neg_h_out"]),
        helper.make_node("Div", ["h_out", "h_in"], ["level_ratio"]),
        helper.make_node("Div", ["level_ratio", "out_bound"], ["w_scale"]),
        ints_constant("axis1", [1]),
    ]
    if noisy:
        nodes.append(attribute_constant("out_noise", "out_noise"))
    return nodes


def _input_scale_per_column(slices: int) -> list:
    """Nodes for in_scale_cols: h_in / r_s for every input column of slice s ([K], or [1]
    with one slice). Weight-only: folded when the session loads the model."""
    nodes = [
        helper.make_node("Max", ["input_range", "tiny"], ["r"]),
        helper.make_node("Div", ["h_in", "r"], ["in_scale"]),
    ]
    if slices == 1:
        return nodes + [helper.make_node("Identity", ["in_scale"], ["in_scale_cols"])]
    return nodes + [
        ints_constant("slice_count", [slices]),
        ints_constant("column", [-1, 1]),
        ints_constant("minus_one", [-1]),
        helper.make_node("Shape", ["W"], ["k_total"], start=-1),
        helper.make_node("Div", ["k_total", "slice_count"], ["k"]),
        helper.make_node("Concat", ["slice_count", "k"], ["scale_grid"], axis=0),
        helper.make_node("Reshape", ["in_scale", "column"], ["in_scale_column"]),
        helper.make_node("Expand", ["in_scale_column", "scale_grid"], ["in_scale_grid"]),
        helper.make_node("Reshape", ["in_scale_grid", "minus_one"], ["in_scale_cols"]),
    ]


def _noise_std_nodes(slices: int) -> list:
    """noise_std = out_noise * h_out / (out_bound * sqrt(slices)): the read-noise std in
    ADC levels of a body with `slices` equal slices."""
    return [
        helper.make_node("Constant", [], ["sqrt_n"], value_float=math.sqrt(slices)),
        helper.make_node("Mul", ["out_noise", "h_out"], ["noise_a"]),
        helper.make_node("Mul", ["out_bound", "sqrt_n"], ["noise_b"]),
        helper.make_node("Div", ["noise_a", "noise_b"], ["noise_std"]),
    ]


def sliced_function(op_type: str, opset: int, slices: int) -> FunctionProto:
    """The body of AnalogLinear / NoisyAnalogLinear specialised to `slices` equal slices.

    Same numbers as the generic body, laid out for speed: the DAC runs once on all
    of X (each column scaled by h_in / r of its slice, then one Clip and one Round),
    the levels and W are split per slice, each slice multiplies by its own 2-D
    constant weight (which onnxruntime prepacks), and the ADC outputs are summed.
    The lowering gives every analog node the overload ``n<slices>`` of its slice count.
    """
    noisy = op_type == "NoisyAnalogLinear"
    nodes = _common_constants(noisy) + _input_scale_per_column(slices)
    if noisy:
        nodes += _noise_std_nodes(slices)
    nodes += [
        # DAC levels of all slices at once.
        helper.make_node("Mul", ["X", "in_scale_cols"], ["x_scaled"]),
        helper.make_node("Clip", ["x_scaled", "neg_h_in", "h_in"], ["x_clipped"]),
        helper.make_node("Round", ["x_clipped"], ["q"]),
    ]
    names = [f"_{i}" for i in range(slices)]
    if slices > 1:
        nodes += [
            helper.make_node("Split", ["q"], [f"q{i}" for i in names], axis=-1,
                             num_outputs=slices),
            helper.make_node("Split", ["W"], [f"w{i}" for i in names], axis=1,
                             num_outputs=slices),
            helper.make_node("Split", ["r"], [f"r{i}" for i in names], axis=0,
                             num_outputs=slices),
        ]
    else:
        nodes += [helper.make_node("Identity", [src], [f"{dst}_0"])
                  for src, dst in (("q", "q"), ("W", "w"), ("r", "r"))]
    outputs = []
    for i in names:
        nodes += [
            # Weight-only constants (folded when the session loads the model).
            helper.make_node("Transpose", [f"w{i}"], [f"w_t{i}"], perm=[1, 0]),
            helper.make_node("Abs", [f"w{i}"], [f"w_abs{i}"]),
            helper.make_node("ReduceMax", [f"w_abs{i}", "axis1"], [f"w_max_raw{i}"],
                             keepdims=0),
            helper.make_node("Max", [f"w_max_raw{i}", "tiny"], [f"w_max{i}"]),
            helper.make_node("Div", [f"w_t{i}", f"w_max{i}"], [f"w_unit{i}"]),
            helper.make_node("Mul", [f"w_unit{i}", "w_scale"], [f"w_eff{i}"]),
            helper.make_node("Mul", [f"r{i}", "out_bound"], [f"bound_per_w{i}"]),
            helper.make_node("Mul", [f"bound_per_w{i}", f"w_max{i}"], [f"bound{i}"]),
            helper.make_node("Div", [f"bound{i}", "h_out"], [f"out_step{i}"]),
            # Crossbar MVM in ADC-level units.
            helper.make_node("MatMul", [f"q{i}", f"w_eff{i}"], [f"z{i}"]),
        ]
        level = f"z{i}"
        if noisy:
            nodes += [
                helper.make_node("RandomNormalLike", [level], [f"unit_noise{i}"], mean=0.0,
                                 scale=1.0),
                helper.make_node("Mul", [f"unit_noise{i}", "noise_std"], [f"noise{i}"]),
                helper.make_node("Add", [level, f"noise{i}"], [f"z_noisy{i}"]),
            ]
            level = f"z_noisy{i}"
        out = "Y" if slices == 1 else f"y{i}"
        nodes += [
            helper.make_node("Round", [level], [f"z_round{i}"]),
            helper.make_node("Clip", [f"z_round{i}", "neg_h_out", "h_out"], [f"z_q{i}"]),
            helper.make_node("Mul", [f"z_q{i}", f"out_step{i}"], [out]),
        ]
        outputs.append(out)
    if slices > 1:
        nodes.append(helper.make_node("Sum", outputs, ["Y"]))
    defaults: dict[str, float | list[int]] = {k: v for k, (v, _) in _ATTRIBUTES.items()}
    if noisy:
        defaults["out_noise"] = 0.04
    function = make_function(op_type, ["X", "W", "input_range"], ["Y"], nodes, opset, defaults,
                             f"{op_type} specialised to {slices} equal input slice(s).")
    function.overload = slice_overload(slices)
    return function


ANALOG_OP_TYPES = ("AnalogLinear", "NoisyAnalogLinear")


def slice_overload(slices: int) -> str:
    """The function overload name of an analog node with `slices` input slices."""
    return f"n{slices}"


def overload_slices(overload: str) -> int:
    """The slice count of a slice_overload name ("n4" -> 4)."""
    return int(overload.removeprefix("n"))


@onnx_domain.register_function(
    "AnalogLinear", _INPUTS, _ATTRIBUTES,
    "Analog crossbar MVM: 8-bit DAC per input slice, MVM, 8-bit ADC per slice, digital sum.",
)
def analog_linear_function(opset: int) -> FunctionProto:
    """ONNX body of afmc.AnalogLinear (deterministic)."""
    return _analog_linear_body(opset, noisy=False)


@onnx_domain.register_function(
    "NoisyAnalogLinear", _INPUTS,
    {**_ATTRIBUTES, "out_noise": (0.04, "read noise std relative to r * w_max / sqrt(n)")},
    "AnalogLinear with fresh Gaussian read noise on every slice output before the ADC.",
)
def noisy_analog_linear_function(opset: int) -> FunctionProto:
    """ONNX body of afmc.NoisyAnalogLinear (fresh read noise on every run)."""
    return _analog_linear_body(opset, noisy=True)


@onnx_domain.register_function(
    "SliceInput", [("X", "tensor [..., K] to lay out as equal slices")],
    {"slice_sizes": ([1], "the unequal slice sizes, summing to K")},
    "Zero-pad unequal input slices to equal ones on the last axis.",
)
def slice_input_function(opset: int) -> FunctionProto:
    """ONNX body of afmc.SliceInput: lay unequal slices out as equal, zero-padded ones.

    Slice i of sizes (attribute slice_sizes) moves to positions [i * k_max, i * k_max
    + size_i) of the last axis; the remaining positions hold 0, which adds nothing to
    a product and leaves max |W| unchanged.
    """
    nodes = [
        attribute_constant("sizes", "slice_sizes", kind="ints"),
        ints_constant("axis0", [0]),
        ints_constant("axis1", [1]),
        ints_constant("minus_one", [-1]),
        ints_constant("pads", [0, 1]),
        helper.make_node("Constant", [], ["zero"], value_int=0),
        helper.make_node("Constant", [], ["one"], value_int=1),
        helper.make_node("ReduceMax", ["sizes"], ["k_max"], keepdims=0),
        helper.make_node("ReduceSum", ["sizes"], ["k_total"], keepdims=0),
        helper.make_node("CumSum", ["sizes", "zero"], ["starts"], exclusive=1),
        helper.make_node("Range", ["zero", "k_max", "one"], ["offsets"]),
        helper.make_node("Unsqueeze", ["starts", "axis1"], ["starts_col"]),
        helper.make_node("Unsqueeze", ["sizes", "axis1"], ["sizes_col"]),
        helper.make_node("Unsqueeze", ["offsets", "axis0"], ["offsets_row"]),
        helper.make_node("Add", ["starts_col", "offsets_row"], ["source"]),
        helper.make_node("Less", ["offsets_row", "sizes_col"], ["valid"]),
        helper.make_node("Where", ["valid", "source", "k_total"], ["index2"]),
        helper.make_node("Reshape", ["index2", "minus_one"], ["index"]),
        helper.make_node("Pad", ["X", "pads", "", "minus_one"], ["x_padded"]),
        helper.make_node("Gather", ["x_padded", "index"], ["Y"], axis=-1),
    ]
    return make_function(
        "SliceInput", ["X"], ["Y"], nodes, opset, {"slice_sizes": [1]},
        "Zero-pad unequal input slices (attribute slice_sizes) to equal ones on the last axis.",
    )


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


ATTRIBUTE_DEFAULTS = {name: value for name, (value, _) in _ATTRIBUTES.items()}
PREPARED_PREFIX = "Prepared"  # PreparedAnalogLinear, PreparedNoisyAnalogLinear
_WEIGHT_ONLY = ("w", "w_t", "w_abs", "w_max_raw", "w_max", "w_unit", "w_eff")


def prepared_function(op_type: str, opset: int, slices: int) -> FunctionProto:
    """The runtime form of sliced_function(op_type, opset, slices): the same body less its
    weight-only part, which comes in as inputs (PreparedAnalogLinear(X, input_range,
    w_eff_0.., w_max_0..)), computed by prepare_weights.

    A chip's programmed weights go into its session in this form, so onnxruntime has
    nothing weight-sized to constant-fold when the session starts (folding the
    weight-only part of every layer holds several copies of the weights at once).
    Runtime only: afmc never writes it to a file.
    """
    body = sliced_function(op_type, opset, slices)
    names = [f"_{i}" for i in range(slices)]
    removed = {f"{stem}{i}" for stem in _WEIGHT_ONLY for i in names}
    given = [f"w_eff{i}" for i in names] + [f"w_max{i}" for i in names]
    nodes = []
    for node in body.node:
        if set(node.output) & removed:
            continue
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        if copy.op_type == "Shape" and list(copy.input) == ["W"]:
            copy.input[0] = "X"  # K, the last axis of X as of W
        nodes.append(copy)
    function = onnx.FunctionProto()
    function.CopyFrom(body)
    function.name = PREPARED_PREFIX + op_type
    del function.input[:]
    function.input.extend(["X", "input_range", *given])
    del function.node[:]
    function.node.extend(nodes)
    return function


def prepared_scale(out_res: float, inp_res: float, out_bound: float) -> np.float32:
    """The factor of w_eff = W_s^T / w_max * (h_out / h_in / out_bound), in float32 as the
    body computes it."""
    f32 = np.float32
    h_in, h_out = f32(inp_res) / f32(2.0), f32(out_res) / f32(2.0)
    return (h_out / h_in) / f32(out_bound)


def prepare_weights(weight: np.ndarray, slices: int, out_res: float, inp_res: float,
                    out_bound: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The weight-only values of sliced_function for [N, K] weights: per slice, w_eff =
    W_s^T / w_max * (h_out / h_in / out_bound) [k, N] and w_max = max(max_j |W_s|, tiny)
    [N], in float32 with the body's operations in the body's order (so the numbers
    are those onnxruntime folds from the body)."""
    f32 = np.float32
    w_scale = prepared_scale(out_res, inp_res, out_bound)
    effective, maxima = [], []
    for part in np.split(np.asarray(weight, dtype=f32), slices, axis=1):
        w_max = np.maximum(np.abs(part).max(axis=1), f32(TINY))
        w_eff = np.ascontiguousarray(part.T) / w_max
        w_eff *= w_scale
        effective.append(w_eff)
        maxima.append(w_max)
    return effective, maxima


FUSED_PREFIX = "Fused"  # FusedAnalogLinear, FusedNoisyAnalogLinear
PRE_SCALED = "s"  # overload suffix of a fused node whose X comes with a pre_scale
KERNEL_DOMAIN = "afmc.kernels"  # afmc/runtime/fused: AnalogDAC, AnalogADC, NoisyAnalogADC


def fused_function(op_type: str, opset: int, slices: int,
                   pre_scaled: bool = False) -> FunctionProto:
    """prepared_function(op_type, opset, slices) on the fused kernels of afmc.runtime.fused:
    the same inputs and numbers, the DAC (Mul, Clip, Round, Split) one AnalogDAC and the
    ADCs with their sum ([read noise,] Round, Clip, Mul per slice, Sum) one AnalogADC
    (NoisyAnalogADC); the MatMuls stay onnxruntime's, on the prepacked 2-D weights, and
    the scales (in_scale_cols, out_step per slice) stay the body's nodes on constants,
    which onnxruntime folds. Runtime only, for sessions that register the kernels.
    With `pre_scaled` (overload suffix PRE_SCALED), a second input pre_scale [K]
    multiplies X first, in the DAC's pass (the Mul by a constant vector, smoothing's,
    that fed X).
    """
    noisy = op_type == "NoisyAnalogLinear"
    names = [f"_{i}" for i in range(slices)]
    nodes = []
    for node in _common_constants(noisy) + _input_scale_per_column(slices):
        if node.op_type == "Shape" and list(node.input) == ["W"]:
            # K from the constant w_eff_0 [k, N] (not from X, whose shape onnxruntime
            # does not know after a kernel's output), so in_scale_cols folds.
            nodes += [helper.make_node("Shape", ["w_eff_0"], ["k_slice"], start=0, end=1),
                      helper.make_node("Mul", ["k_slice", "slice_count"], ["k_total"])]
        else:
            nodes.append(node)
    if noisy:
        nodes += _noise_std_nodes(slices)
    dac_inputs = ["X", "in_scale_cols", "h_in"] + (["pre_scale"] if pre_scaled else [])
    nodes.append(helper.make_node("AnalogDAC", dac_inputs,
                                  [f"q{i}" for i in names], domain=KERNEL_DOMAIN))
    if slices > 1:
        nodes.append(helper.make_node("Split", ["r"], [f"r{i}" for i in names], axis=0,
                                      num_outputs=slices))
    else:
        nodes.append(helper.make_node("Identity", ["r"], ["r_0"]))
    for i in names:
        nodes += [
            helper.make_node("Mul", [f"r{i}", "out_bound"], [f"bound_per_w{i}"]),
            helper.make_node("Mul", [f"bound_per_w{i}", f"w_max{i}"], [f"bound{i}"]),
            helper.make_node("Div", [f"bound{i}", "h_out"], [f"out_step{i}"]),
            helper.make_node("MatMul", [f"q{i}", f"w_eff{i}"], [f"z{i}"]),
        ]
    levels = [f"z{i}" for i in names] + [f"out_step{i}" for i in names]
    nodes.append(helper.make_node("NoisyAnalogADC", ["h_out", "noise_std", *levels], ["Y"],
                                  domain=KERNEL_DOMAIN) if noisy else
                 helper.make_node("AnalogADC", ["h_out", *levels], ["Y"],
                                  domain=KERNEL_DOMAIN))
    defaults: dict[str, float | list[int]] = {k: v for k, (v, _) in _ATTRIBUTES.items()}
    if noisy:
        defaults["out_noise"] = 0.04
    given = [f"w_eff{i}" for i in names] + [f"w_max{i}" for i in names]
    inputs = ["X", "pre_scale"] if pre_scaled else ["X"]
    function = make_function(FUSED_PREFIX + op_type, [*inputs, "input_range", *given], ["Y"],
                             nodes, opset, defaults,
                             f"{op_type} on {slices} equal slice(s), fused kernels.")
    function.opset_import.append(helper.make_opsetid(KERNEL_DOMAIN, 1))
    function.overload = slice_overload(slices) + (PRE_SCALED if pre_scaled else "")
    return function

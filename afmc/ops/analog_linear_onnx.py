"""afmc analog linear, ONNX form: the model-local functions of afmc.AnalogLinear,
afmc.NoisyAnalogLinear and afmc.SliceInput, and the runtime forms of their bodies.

The op and its numbers are defined in afmc.ops.analog_linear (HARDWARE.md 1-7); this
module holds what a compiled file and its chips need without torch:

- ``sliced_function``: the body specialised to n equal input slices (what lowering
  writes into every compiled file);
- ``prepared_function`` / ``prepare_weights``: the body less its weight-only part,
  which a chip computes in numpy from its programmed weights;
- ``fused_function``: the prepared body on afmc's fused kernels (runtime.fused).

Importing it registers the ONNX functions with the domain `afmc` (ops.onnx_domain);
importing it does not import torch, so opening and running a compiled model does not.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import FunctionProto, helper

from afmc.ops import onnx_domain
from afmc.ops.onnx_domain import attribute_constant, ints_constant, make_function

TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32, as torch.finfo gives

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

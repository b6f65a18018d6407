"""insert-analog-linear (FX) and onnx-insert-analog-linear (ONNX): each analog-placed layer
becomes an afmc analog linear op (one per placed layer, its input split into slices of at
most hardware.max_in), a digital-placed one stays as it was; the FP view of the rewritten
graph (the analog ops computed in floating point) is the FP function before, and the analog
op matches the torch op within one ADC step."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import torch
from analog_models import BOUND, RES, adc_steps, onnx_graph, op_types, random_weights, run_onnx
from onnx import helper
from torch import nn

from afmc.capture import capture_module
from afmc.config import load_config
from afmc.ops.analog_linear import ANALOG_LINEAR, analog_linear
from afmc.passes.fx.calibrate import AnalogInputInterpreter
from afmc.passes.fx.insert_analog_linear import InsertAnalogLinear
from afmc.passes.fx.place_layers import PlaceLayers
from afmc.passes.layers import META_KEY
from afmc.passes.onnx.insert_analog_linear import InsertOnnxAnalogLinear
from afmc.passes.onnx.place_layers import PlaceOnnxLayers
from afmc.passes.onnx.static_layers import onnx_layer_records
from afmc.runtime.views import fp_reference
from passes.conftest import assert_equivalent

aten = torch.ops.aten

# ------------------------------------------------------------------ FX: insert-analog-linear


class _ThreeLayers(nn.Module):
    """fc (Linear 20 -> 12, bias), x @ w (a [12, 6] parameter: stored [in, out]), head
    (Linear 6 -> 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(20, 12)
        self.w = nn.Parameter(torch.randn(12, 6) / 12 ** 0.5)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(x)) @ self.w)


def test_insert_analog_linear_replaces_each_analog_layer():
    torch.manual_seed(0)
    module = _ThreeLayers().eval()
    x = torch.randn(4, 20, generator=torch.Generator().manual_seed(1))
    program = capture_module(module, (x,)).graph_module
    config = load_config(None, ["hardware.max_in=16", 'placement.digital=["^head$"]'])
    PlaceLayers(config)(program)
    products = [node.target for node in program.graph.nodes
                if node.target in (aten.linear.default, aten.matmul.default, aten.mm.default)]
    assert len(products) == 3 and ANALOG_LINEAR not in products

    assert InsertAnalogLinear(config)(program).modified

    analog = program.graph.find_nodes(op="call_function", target=ANALOG_LINEAR)
    records = [node.meta[META_KEY] for node in analog]
    assert [(r.name, r.slice_sizes) for r in records] == [("fc", [10, 10]), ("w", [12])]
    (linear,) = program.graph.find_nodes(op="call_function", target=aten.linear.default)
    assert linear.args[1].target == "head.weight", "the digital head stays aten.linear"
    assert not program.graph.find_nodes(op="call_function", target=aten.matmul.default)
    fc, product = analog
    (bias_add,) = fc.users
    assert bias_add.target is aten.add.Tensor and bias_add.args[1].target == "fc.bias"
    assert fc.args[3] == [10, 10] and fc.args[1].target == "fc.weight"
    assert torch.equal(program.get_parameter(fc.args[2].target), torch.ones(2))  # uncalibrated
    # the [in, out] parameter is held as its own [out, in] copy, as the crossbar holds it
    assert records[1].weight != "w"
    assert torch.equal(program.get_parameter(product.args[1].target), module.w.detach().T)

    with torch.no_grad():
        expected = module(x)
        assert_equivalent(AnalogInputInterpreter(program, lambda *_: None).run(x), expected)
        assert float((program(x) - expected).abs().max()) > 1e-4, "the analog op quantizes"


# ------------------------------------------------------------------ ONNX: onnx-insert-analog-linear


def _torch_analog(x: np.ndarray, weight: np.ndarray, sizes: list[int]) -> np.ndarray:
    ranges = torch.ones(len(sizes))
    return analog_linear(
        torch.from_numpy(x), torch.from_numpy(weight), ranges, sizes, RES, RES, BOUND, 0.0
    ).numpy()


def _assert_within_adc_step(actual: np.ndarray, expected: np.ndarray, steps: np.ndarray) -> None:
    diff = np.abs(actual - expected)
    assert (diff <= steps + 1e-5).all(), f"off by {diff.max()} (step {steps.min()})"
    assert np.mean(diff < 1e-5) > 0.95


def test_insert_analog_linear_matches_the_torch_op():
    """MatMul (unequal slices), Gemm (transA, alpha, beta, C) and im2col Conv (stride, pads)."""
    rng = np.random.default_rng(6)
    w_mm, w_gemm = random_weights(rng, 20, 6), random_weights(rng, 5, 7)
    w_conv = random_weights(rng, 4, 3, 3, 3)
    c, b = rng.standard_normal(5).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    model = onnx_graph(
        [
            helper.make_node("MatMul", ["x1", "w_mm"], ["y1"], name="mm"),
            helper.make_node(
                "Gemm",
                ["x2", "w_gemm", "c"],
                ["y2"],
                name="gemm",
                transA=1,
                transB=1,
                alpha=0.5,
                beta=2.0,
            ),
            helper.make_node(
                "Conv",
                ["x3", "w_conv", "b"],
                ["y3"],
                name="conv",
                strides=[2, 2],
                pads=[1, 1, 1, 1],
            ),
        ],
        {"x1": [2, 5, 20], "x2": [7, 4], "x3": [1, 3, 6, 6]},
        ["y1", "y2", "y3"],
        {"w_mm": w_mm, "w_gemm": w_gemm, "c": c, "w_conv": w_conv, "b": b},
    )
    feed = {
        "x1": rng.uniform(-1, 1, (2, 5, 20)),
        "x2": rng.uniform(-1, 1, (7, 4)),
        "x3": rng.uniform(-1, 1, (1, 3, 6, 6)),
    }
    feed = {name: value.astype(np.float32) for name, value in feed.items()}
    expected_fp = run_onnx(model, feed)
    config = load_config(None, ["hardware.max_in=8"])
    PlaceOnnxLayers(config)(model)
    assert InsertOnnxAnalogLinear(config)(model).modified
    ops = op_types(model)
    assert ops.count("AnalogLinear") == 3 and "MatMul" not in ops and "Gemm" not in ops
    assert ops.count("SliceInput") == 4, "MatMul and Conv inputs split unequally"
    im2col = next(node for node in model.graph if node.op_type == "Conv")
    # a one-hot kernel per input channel (group 3): 27 patch values, 27 x 9 kernel entries
    assert im2col.inputs[1].const_value.shape == (27, 1, 3, 3)
    assert im2col.attributes.get_int("group") == 3
    assert {f.name for f in model.functions.values()} == {"AnalogLinear", "SliceInput"}
    records = {record.name: record for record in onnx_layer_records(model)}
    assert records["mm"].slice_sizes == [7, 7, 6] and records["conv"].slice_sizes == [7, 7, 7, 6]
    assert records["gemm"].onnx_weight == "gemm.analog_weight" and records["mm"].tiles == 3

    y1, y2, y3 = run_onnx(model, feed)
    _assert_within_adc_step(
        y1,
        _torch_analog(feed["x1"], w_mm.T.copy(), [7, 7, 6]),
        adc_steps(w_mm.T, np.ones(3), [7, 7, 6]),
    )
    gemm = _torch_analog(feed["x2"].T.copy(), 0.5 * w_gemm, [7]) + 2 * c
    _assert_within_adc_step(y2, gemm, adc_steps(0.5 * w_gemm, np.ones(1), [7]))
    patches = torch.nn.functional.unfold(torch.from_numpy(feed["x3"]), 3, padding=1, stride=2)
    flat = w_conv.reshape(4, 27)
    conv = _torch_analog(patches.transpose(1, 2).numpy().copy(), flat, [7, 7, 7, 6]) + b
    _assert_within_adc_step(
        y3,
        conv.transpose(0, 2, 1).reshape(1, 4, 3, 3),
        adc_steps(flat, np.ones(4), [7, 7, 7, 6])[None, :, None, None],
    )
    fp_view = fp_reference(ir.to_proto(model))
    for got, want in zip(run_onnx(fp_view, feed), expected_fp, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

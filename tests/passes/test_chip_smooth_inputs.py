"""chip-smooth-inputs (FX) and onnx-chip-smooth-inputs (ONNX): each group of crossbar
layers reading one activation is smoothed at the alpha its expected chip error favours, or
left as it is: a digital multiply by 1/s before a smoothed group and W diag(s) on its
crossbars, the FP outputs unchanged to rounding; both levels choose alike."""

from __future__ import annotations

import re

import numpy as np
import onnx_ir as ir
import pytest
import torch
from analog_models import compile_onnx, onnx_graph, run_onnx
from conftest import tiny_model
from onnx import helper
from torch import nn

from afmc.api import compile as afmc_compile
from afmc.capture import capture_causal_lm, capture_module
from afmc.config import load_config
from afmc.data.tokenizer import ByteTokenizer
from afmc.passes.fx.chip_smooth_inputs import ChipSmoothInputs
from afmc.passes.fx.place_layers import PlaceLayers
from afmc.passes.layers import META_KEY, NOTES_KEY
from afmc.passes.onnx.chip_smooth_inputs import ChipSmoothOnnxInputs
from afmc.passes.onnx.insert_analog_linear import InsertOnnxAnalogLinear
from afmc.passes.onnx.place_layers import PlaceOnnxLayers
from afmc.passes.onnx.smoothing import crossbar_weight
from afmc.runtime.chip import load_record
from afmc.runtime.views import fp_reference
from passes.conftest import (
    TwoGroups,
    assert_equivalent,
    assert_smoothed_with_fp_kept,
    smoothing_muls,
    two_groups_batches,
    two_groups_onnx,
)

aten = torch.ops.aten
CONFIG = ["hardware.max_in=16"]


def _chosen(notes: list[dict]) -> dict[str, str]:
    """Group -> "alpha A" or "not smoothed", from the pass's notes."""
    return {note["norm"]: re.search(r"alpha [\d.]+ by|not smoothed", note["reason"])[0]
            for note in notes}


def _flat_layer() -> tuple[nn.Linear, list[torch.Tensor]]:
    """One layer whose inputs and weights are +-1 and +-0.5 in every channel: every alpha
    gives s = 1, so smoothing cannot lower its chip error."""
    generator = torch.Generator().manual_seed(0)
    layer = nn.Linear(8, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(0.5 * torch.sign(torch.randn(4, 8, generator=generator)))
    return layer.eval(), [torch.sign(torch.randn(6, 8, generator=generator)) for _ in range(2)]


# ------------------------------------------------------------------ FX: chip-smooth-inputs


def test_chip_smooth_inputs_smooths_each_group_with_fp_kept():
    torch.manual_seed(0)
    module, batches = TwoGroups().eval(), two_groups_batches()
    program = capture_module(module, (batches[0],)).graph_module
    config = load_config(None, CONFIG)
    PlaceLayers(config)(program)
    assert not program.graph.find_nodes(op="call_function", target=aten.mul.Tensor)
    weights = {name: getattr(module, name).weight.detach().clone() for name in ("q", "k", "o")}

    assert ChipSmoothInputs(config, [(b,) for b in batches])(program).modified

    assert ChipSmoothInputs.preserves_output
    chosen = _chosen(program.meta[NOTES_KEY])
    assert list(chosen) == ["q, k", "o"] and all(c.startswith("alpha") for c in chosen.values())
    muls = program.graph.find_nodes(op="call_function", target=aten.mul.Tensor)
    assert [mul.args[1].target for mul in muls] == ["q.smooth_scale", "o.smooth_scale"]
    readers = {name: {user.args[1].target for user in mul.users}
               for name, mul in zip(("x", "relu"), muls, strict=True)}
    assert readers == {"x": {"q.weight", "k.weight"}, "relu": {"o.weight"}}
    for group, names in (("q", ("q", "k")), ("o", ("o",))):
        scale = 1 / program.get_parameter(f"{group}.smooth_scale").detach()
        for name in names:  # W diag(s) on the crossbar, x / s before it
            torch.testing.assert_close(program.get_parameter(f"{name}.weight"),
                                       weights[name] * scale, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        for batch in batches:
            assert_equivalent(program(batch), module(batch))


def test_chip_smooth_inputs_leaves_a_group_it_cannot_improve():
    layer, batches = _flat_layer()
    program = capture_module(layer, (batches[0],)).graph_module
    config = load_config(None, [])
    PlaceLayers(config)(program)
    before = program.graph.python_code("self").src

    assert not ChipSmoothInputs(config, [(b,) for b in batches])(program).modified

    assert program.graph.python_code("self").src == before
    (note,) = program.meta[NOTES_KEY]
    assert not note["folded"] and note["reason"].startswith("not smoothed")


# ------------------------------------------------------------------ ONNX: onnx-chip-smooth-inputs


def _analog(model: ir.Model, config) -> ir.Model:
    PlaceOnnxLayers(config)(model)
    InsertOnnxAnalogLinear(config)(model)
    return model


def test_onnx_chip_smooth_inputs_smooths_each_group_as_the_fx_pass_with_fp_kept():
    """The same groups and alphas as the FX pass on the same network and data; a Mul by 1/s
    before each group, W diag(s) on its crossbars, the FP view unchanged."""
    torch.manual_seed(0)
    module, batches = TwoGroups().eval(), two_groups_batches()
    config = load_config(None, CONFIG)
    model = _analog(two_groups_onnx(module), config)
    feeds = [{"x": batch.numpy()} for batch in batches]
    fp = [run_onnx(fp_reference(ir.to_proto(model)), feed)[0] for feed in feeds]
    analog = {node.meta[META_KEY].name: node for node in model.graph
              if node.op_type == "AnalogLinear"}
    weights = {name: crossbar_weight(node) for name, node in analog.items()}
    assert not smoothing_muls(model)

    assert ChipSmoothOnnxInputs(config, feeds)(model).modified

    chosen = _chosen(model.meta[NOTES_KEY])
    program = capture_module(module, (batches[0],)).graph_module
    PlaceLayers(config)(program)
    ChipSmoothInputs(config, [(b,) for b in batches])(program)
    assert chosen == _chosen(program.meta[NOTES_KEY]), "one choice core at both levels"
    muls = smoothing_muls(model)
    assert list(muls) == ["x", "a"]
    for group, names in (("x", ("q", "k")), ("a", ("o",))):
        for name in names:
            np.testing.assert_allclose(crossbar_weight(analog[name]).numpy(),
                                       weights[name].numpy() / muls[group], rtol=1e-5)
    for feed, expected in zip(feeds, fp, strict=True):
        got = run_onnx(fp_reference(ir.to_proto(model)), feed)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_onnx_chip_smooth_inputs_leaves_a_group_it_cannot_improve():
    layer, batches = _flat_layer()
    model = onnx_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="layer")],
                       {"x": ["batch", 8]}, ["y"], {"w": layer.weight.detach().numpy().T.copy()})
    config = load_config(None, [])
    _analog(model, config)
    before = [(node.name, node.op_type) for node in model.graph]
    weight = crossbar_weight(next(n for n in model.graph if n.op_type == "AnalogLinear"))

    assert not ChipSmoothOnnxInputs(config, [{"x": b.numpy()} for b in batches])(model).modified

    assert [(node.name, node.op_type) for node in model.graph] == before
    assert torch.equal(crossbar_weight(next(n for n in model.graph
                                            if n.op_type == "AnalogLinear")), weight)
    (note,) = model.meta[NOTES_KEY]
    assert not note["folded"] and note["reason"].startswith("not smoothed")


@pytest.mark.slow
def test_onnx_chip_smoothing_chooses_as_the_torch_path_and_keeps_fp(llama, tmp_path):
    """onnx-chip-smooth-inputs on the exported Llama: the same alpha per group as the FX
    pass chip-smooth-inputs on the same data (one choice core), a Mul by 1/s before each
    smoothed group and W diag(s) on its crossbars, FP outputs unchanged to rounding."""
    torch_out, onnx_out = llama
    root = torch_out.parent
    ids = [np.random.default_rng(i).integers(0, 256, (2, 24)) for i in range(2)]
    config = load_config(None, ["hardware.max_in=40", "calibration.method=max",
                                "outliers.budget=0"])
    afmc_compile(capture_causal_lm(tiny_model("llama")), "aimc", config,
                 calibration=[(torch.from_numpy(i),) for i in ids], output=tmp_path / "torch")
    result = compile_onnx(root / "llama.onnx", "aimc", config,
                           [{"input_ids": i} for i in ids], tmp_path / "onnx",
                           tokenizer=ByteTokenizer())

    def alphas(record: dict) -> dict[str, str]:
        return {note["norm"]: re.search(r"alpha [\d.]+ by|not smoothed", note["reason"])[0]
                for note in record["fold_notes"] if "chip error" in note["reason"]}

    chosen = alphas(result.record)
    assert chosen and chosen == alphas(load_record(tmp_path / "torch"))
    smoothed = [group for group, alpha in chosen.items() if alpha.startswith("alpha")]
    assert smoothed, "the test needs a smoothed group"
    assert_smoothed_with_fp_kept(tmp_path / "onnx", onnx_out, len(smoothed))


"""hardware.weight_slices: bit-sliced weights (CrossSim's balanced BitslicedCore).

Proves: (1) the digits and bits per slice follow CrossSim's rule and recombine to the
B-bit quantized weight; (2) the rewritten analog node (X gathered, ranges repeated, the
overload of n S slices, through SliceInput for unequal slices) computes, on onnxruntime,
exactly what afmc's torch op computes on the sliced layout -- every significance block with
its own w_max, so its own ADC; (3) the programming noise of a recombined weight is the
sum of the slices' noises scaled by their significance (additive: against the formula),
and under pcm a weight whose upper digits are 0 carries the lower slice's noise only;
(4) on afmc-tiny, one slice is the chip before, sliced chips are closer to FP than
unsliced ones, the tile map and the cost count every slice, and afmc eval takes
--weight-slices and --profile; bad slicings are one error naming the field.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import afmc
from afmc import ops
from afmc.config import ConfigError, load_config
from afmc.cost.model import estimate_record
from afmc.ops.analog_linear_onnx import slice_overload, sliced_function
from afmc.runtime.bit_slicing import (
    digit_matrices,
    gather_index,
    program_sliced,
    recombined,
    slice_bits,
    sliced_graph,
    sliced_layout,
    sliced_sizes,
)
from afmc.runtime.noise import NoiseConfig, layer_rng, program_weights

OPSET = 18


@pytest.mark.parametrize(("bits", "slices", "expected"),
                         [(8, 1, 8), (8, 2, 4), (8, 4, 2), (8, 3, 3), (7, 2, 3), (6, 4, 2)])
def test_bits_per_slice_follow_crosssim(bits, slices, expected):
    assert slice_bits(bits, slices) == expected


def test_digits_recombine_to_the_quantized_weight():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 96)).astype(np.float32)
    w[3] = 0.0
    sizes = [64, 32]
    for slices in (2, 4):
        bits = slice_bits(8, slices)
        digits = digit_matrices(w, sizes, slices, 8, bits)
        total = sum(2.0 ** (j * bits) * d.astype(np.float64) for j, d in enumerate(digits))
        for start, stop in ((0, 64), (64, 96)):
            block = w[:, start:stop].astype(np.float64)
            m = np.abs(block).max(axis=1, keepdims=True)
            quantized = np.rint(block / np.where(m > 0, m, 1) * 127) * m / 127
            np.testing.assert_allclose(total[:, start:stop], quantized, atol=1e-6)
        for j, digit in enumerate(digits):  # each digit within its bits, with w's sign
            m = np.abs(w).max()  # loose: digits are integers times m / 127
            assert np.all(np.abs(digit) <= (2 ** bits - 1) * m / 127 + 1e-6) or j == slices - 1
            assert np.all(np.sign(digit) * np.sign(w) >= 0)
    assert not np.any(digits[0][3])  # a zero row stays zero


def test_a_known_weight_splits_into_crosssim_digits():
    """|W| = 100 of 127 over two 4-bit slices: digits 4 (100 mod 16) and 6 (100 // 16)."""
    w = np.array([[1.0, -100 / 127]], dtype=np.float32)
    low, high = digit_matrices(w, [2], 2, 8, 4)
    np.testing.assert_allclose(low[0] * 127, [127 % 16, -4], atol=1e-5)
    np.testing.assert_allclose(high[0] * 127, [127 // 16, -6], atol=1e-5)


def test_layout_gather_and_recombine_agree():
    w = np.arange(2 * 7, dtype=np.float32).reshape(2, 7)
    sizes = [4, 3]
    parts = [w, 10 * w]
    sliced = sliced_layout(parts, sizes)
    assert sliced.shape == (2, 14)
    np.testing.assert_array_equal(sliced[:, :4], w[:, :4])
    np.testing.assert_array_equal(sliced[:, 4:8], 10 * w[:, :4])
    np.testing.assert_array_equal(sliced[:, 8:11], w[:, 4:])
    np.testing.assert_array_equal(recombined(sliced, sizes, 2), 11 * w)
    assert gather_index(sizes, 2).tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 4, 5, 6]
    assert sliced_sizes(sizes, 2) == [4, 4, 3, 3]


def _analog_graph(weight: np.ndarray, ranges: np.ndarray, sizes: list[int]) -> onnx.ModelProto:
    """X -> afmc.AnalogLinear(X, W, r) as the lowering writes it (SliceInput on X and W
    for unequal slices), with its function bodies."""
    nodes, x, w = [], "X", "W"
    if len(set(sizes)) > 1:
        nodes += [helper.make_node("SliceInput", ["X"], ["x_eq"], domain=ops.DOMAIN,
                                   slice_sizes=sizes),
                  helper.make_node("SliceInput", ["W"], ["w_eq"], domain=ops.DOMAIN,
                                   slice_sizes=sizes)]
        x, w = "x_eq", "w_eq"
    node = helper.make_node("AnalogLinear", [x, w, "r"], ["Y"], domain=ops.DOMAIN,
                            name="layer", inp_res=254.0, out_res=254.0, out_bound=9.73)
    node.overload = slice_overload(len(sizes))
    nodes.append(node)
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, weight.shape[1]])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, weight.shape[0]])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(ranges, "r")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid(ops.DOMAIN, 1)])
    model.functions.append(sliced_function("AnalogLinear", OPSET, len(sizes)))
    if len(set(sizes)) > 1:
        model.functions.extend(ops.function_protos({"SliceInput"}, OPSET))
    return model


@pytest.mark.parametrize("sizes", [[48, 48], [40, 24, 32]])
@pytest.mark.parametrize("slices", [2, 4])
def test_sliced_node_computes_the_torch_op_on_the_sliced_layout(sizes, slices):
    rng = np.random.default_rng(1)
    k = sum(sizes)
    weight = rng.standard_normal((24, k)).astype(np.float32) * 0.1
    weight[:, 5] = 0.9  # a heavy column: the upper slices hold it, the lower ones the rest
    ranges = np.linspace(1.5, 2.5, len(sizes)).astype(np.float32)
    x = rng.standard_normal((6, k)).astype(np.float32)
    sliced = program_sliced(weight, sizes, slices, 8, None, program_weights)
    model = sliced_graph(_analog_graph(weight, ranges, sizes), {"W"}, {"W": sizes}, slices)
    for init in model.graph.initializer:
        if init.name == "W":
            init.CopyFrom(numpy_helper.from_array(sliced, "W"))
    onnx.checker.check_model(model)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"X": x})[0]
    expected = ops.analog_linear.analog_linear(
        torch.from_numpy(x[:, gather_index(sizes, slices)]), torch.from_numpy(sliced),
        torch.from_numpy(np.repeat(ranges, slices)), sliced_sizes(sizes, slices),
        254.0, 254.0, 9.73, 0.0).numpy()
    # equal but where float32 sums in another order round an ADC tie the other way: one
    # level of the block's ADC (2 * out_bound * r * w_max / out_res), rarely
    differs = np.abs(got - expected) > 1e-5
    assert differs.mean() < 0.03
    assert np.abs(got - expected).max() <= 2 * 9.73 * ranges.max() * np.abs(sliced).max() / 254
    # each block has its own ADC: not the unsliced op on the recombined (quantized) weights
    whole = ops.analog_linear.analog_linear(
        torch.from_numpy(x), torch.from_numpy(recombined(sliced, sizes, slices)),
        torch.from_numpy(ranges), sizes, 254.0, 254.0, 9.73, 0.0).numpy()
    assert not np.allclose(got, whole, rtol=1e-5, atol=1e-5)


def test_additive_noise_adds_up_by_significance():
    """additive (std s relative to each slice's row max): the noise of a recombined weight
    is N(0, sum_j (2^(j b) s m_j)^2), m_j the row max of digit matrix j."""
    rows, cols = 400, 257
    w = np.full((rows, cols), 37 / 127, dtype=np.float32)  # |W| = 37 = 2 * 16 + 5
    w[:, 0] = 1.0  # row max: digits 15 and 7 (127 = 7 * 16 + 15)
    config = NoiseConfig(model="additive", additive_std=0.05, per_slice=False)
    out = recombined(program_sliced(w, [cols], 2, 8, layer_rng(0, 0),
                                    lambda d, r: program_weights(d, [cols], config, r)),
                     [cols], 2)
    noise = (out[:, 1:].astype(np.float64) - 37 / 127) * 127
    expected = np.sqrt((0.05 * 15) ** 2 + (16 * 0.05 * 7) ** 2)
    assert noise.std() == pytest.approx(expected, rel=0.02)
    assert abs(noise.mean()) < 5 * expected / np.sqrt(noise.size)


def test_pcm_upper_zero_digits_carry_no_noise():
    """pcm zeroes targets below its threshold: a weight whose upper digit is 0 gets only the
    lower slice's noise, scaled by 1, not by the upper slice's significance 16."""
    rows, cols = 300, 201
    w = np.full((rows, cols), 9 / 127, dtype=np.float32)  # |W| = 9 < 16: upper digit 0
    w[:, 1::2] = 120 / 127  # |W| = 120 = 7 * 16 + 8
    w[:, 0] = 1.0
    config = NoiseConfig(model="pcm", per_slice=False)
    noise = (recombined(program_sliced(w, [cols], 2, 8, layer_rng(1, 0),
                                       lambda d, r: program_weights(d, [cols], config, r)),
                        [cols], 2).astype(np.float64) - w) * 127
    small, large = noise[:, 2::2], noise[:, 1::2]
    assert small.std() < large.std() / 5
    unsliced = (program_weights(w, [cols], config, layer_rng(1, 0)).astype(np.float64) - w) * 127
    assert small.std() < unsliced[:, 2::2].std() / 3


def test_config_and_override_errors(tmp_path):
    assert load_config(None, []).hardware.weight_slices == 1
    hardware = load_config(None, ["hardware.weight_slices=2"]).hardware
    assert (hardware.weight_bits, hardware.copies) == (8, 2)
    with pytest.raises(ConfigError, match="weight_bits"):
        load_config(None, ["hardware.weight_slices=2", "hardware.weight_bits=16"])
    with pytest.raises(ConfigError, match="weight_slices"):
        load_config(None, ["hardware.weight_slices=8"])


@pytest.mark.slow
def test_sliced_chips_of_afmc_tiny(compiled_tiny, tmp_path):
    out = compiled_tiny.output
    ids = (np.arange(96, dtype=np.int64).reshape(1, 96) * 7) % 200 + 16
    plain, one = afmc.load(out), afmc.load(out, weight_slices=1)
    np.testing.assert_array_equal(plain.chip(3).run(ids), one.chip(3).run(ids))
    fp = plain.fp_view().run(ids)

    def error(model, seed, reference):
        y = model.chip(seed).run(ids)
        return np.linalg.norm(y - reference) / np.linalg.norm(reference)

    two = afmc.load(out, weight_slices=2)
    assert error(two, None, fp) < 0.1  # noise-free: 8-bit weights, per-slice ADCs
    # what programming noise adds to each noise-free chip: less with two slices (12% less
    # here: only weights below 1/8 of their row max lose the upper slice's noise; SmolLM2's
    # heavy-tailed rows lose much more, docs/cost.md)
    noise_free = {model: model.chip(None).run(ids) for model in (plain, two)}
    assert np.mean([error(two, s, noise_free[two]) for s in range(3)]) < 0.95 * np.mean(
        [error(plain, s, noise_free[plain]) for s in range(3)])
    runtime = two.runtime
    programmed = dict(runtime.programmed(4, runtime.noise))
    layer = runtime.analog[2]
    name, stored = runtime._stored(layer)
    expected = program_sliced(stored, layer["slice_sizes"], 2, 8, layer_rng(4, 2),
                              lambda d, r: program_weights(d, layer["slice_sizes"],
                                                           runtime.noise, r))
    np.testing.assert_array_equal(programmed[name],
                                  recombined(expected, layer["slice_sizes"], 2))
    with pytest.raises(ValueError, match="weight_slices"):
        afmc.load(out, weight_slices=0)
    with pytest.raises(ValueError, match="weight_bits"):
        afmc.load(out, weight_slices=8)

    base = estimate_record(plain.record, "ibm-pcm-64core")
    sliced = estimate_record(two.record, "ibm-pcm-64core")
    assert sliced.tiles == 2 * base.tiles
    for a, b in zip(base.layers, sliced.layers, strict=True):
        assert (b.adc_conversions, b.dac_conversions, b.analog_macs) == (
            2 * a.adc_conversions, 2 * a.dac_conversions, 2 * a.analog_macs)


@pytest.mark.slow
def test_eval_takes_weight_slices_and_profile(compiled_tiny, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from afmc.cli import app

    out = tmp_path / "tiny"
    shutil.copytree(compiled_tiny.output, out)
    runner = CliRunner()
    result = runner.invoke(app, ["eval", str(out), "--text", "stdlib:heldout", "--seeds", "1",
                                 "--max-tokens", "512", "--weight-slices", "2",
                                 "--profile", "ibm-pcm-64core"])
    assert result.exit_code == 0, result.output
    assert "2 bit slices" in result.output and "ibm-pcm-64core" in result.output
    (written,) = (out / "eval").glob("seeds-*.json")
    data = json.loads(written.read_text())
    assert data["settings"]["weight_slices"] == 2
    assert data["cost"]["tiles"] > 0 and data["cost"]["comparison"]["energy_ratio"] > 1
    bad = runner.invoke(app, ["eval", str(out), "--text", "stdlib:heldout",
                              "--weight-slices", "8"])
    assert bad.exit_code == 1
    assert bad.output.startswith("error: ") and "weight_slices" in bad.output
    assert "Traceback" not in bad.output

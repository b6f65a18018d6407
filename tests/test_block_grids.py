"""afmc's MatMulNBits weights (afmc.targets.block_grids): grids per block against their
formulas, exactness on weights that already lie on GGUF's block grids, and the product a
plain onnxruntime computes with them."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from afmc.targets.block_grids import BlockGrids, quantize_blocks


def run_matmul_nbits(grids: BlockGrids, x: np.ndarray, accuracy_level: int = 0) -> np.ndarray:
    """x @ W as a stock onnxruntime's MatMulNBits computes it on `grids`."""
    rows, columns = grids.rows, grids.packed.shape[0]
    names = ["X", "B", "S"] + (["Z"] if grids.zero_points is not None else [])
    arrays = [grids.packed, grids.scales] + (
        [grids.zero_points] if grids.zero_points is not None else [])
    node = helper.make_node("MatMulNBits", names, ["Y"], domain="com.microsoft", K=rows,
                            N=columns, bits=grids.bits, block_size=grids.block,
                            accuracy_level=accuracy_level)
    graph = helper.make_graph(
        [node], "nbits", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, rows])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(array, name) for name, array in zip(names[1:], arrays,
                                                                       strict=True)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"X": x})[0]


def q4_1_weight(rng: np.random.Generator, rows: int, columns: int) -> np.ndarray:
    """A [rows, columns] weight as a Q4_1 GGUF dequantizes: per block of 32 inputs of a
    column, fp16 step d and minimum m, every level 0..15 used (min and max are levels)."""
    blocks = rows // 32
    d = rng.uniform(0.002, 0.02, (columns, blocks)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-0.2, 0.0, (columns, blocks)).astype(np.float16).astype(np.float32)
    levels = rng.integers(0, 16, (columns, blocks, 32))
    levels[..., 0], levels[..., 1] = 0, 15
    return (d[..., None] * levels + m[..., None]).reshape(columns, rows).T


@pytest.mark.parametrize(("bits", "symmetric"), [(4, False), (4, True), (8, True), (8, False)])
def test_error_per_weight_is_at_most_half_a_step(bits, symmetric):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((70, 9)).astype(np.float32)  # K = 70: a short last block
    grids = quantize_blocks(weight, bits, 32, symmetric)
    error = np.abs(grids.dequantized() - weight)
    steps = np.abs(np.repeat(grids.scales.reshape(9, 3), 32, axis=1)[:, :70].T)
    # half a step; a symmetric 4-bit block's far end stops at level +7 of -8..7, so a value
    # there as large as the one mapped to -8 is off by up to one step
    bound = np.where(weight * np.sign(grids.scales.reshape(9, 3).repeat(32, axis=1)[:, :70].T)
                     > 0, 1.0, 0.5) if (bits, symmetric) == (4, True) else 0.5
    assert np.all(error <= steps * bound * (1 + 1e-5) + 1e-7)
    assert error.max() > steps.max() * 0.1  # rounding happened: the test can fail
    x = rng.standard_normal((4, 70)).astype(np.float32)
    np.testing.assert_allclose(run_matmul_nbits(grids, x), x @ grids.dequantized(),
                               rtol=1e-5, atol=1e-5)


def test_q4_1_weights_are_stored_exactly_where_integer_zero_points_reround():
    rng = np.random.default_rng(1)
    weight = q4_1_weight(rng, 96, 12)
    grids = quantize_blocks(weight, 4, 32, symmetric=False)
    np.testing.assert_allclose(grids.dequantized(), weight, rtol=0, atol=1e-6)
    x = rng.standard_normal((5, 96)).astype(np.float32)
    for level in (0, 4):  # float activations, and int8 activations on the fly
        exact = run_matmul_nbits(grids, x, accuracy_level=level)
        assert np.abs(exact - x @ weight).max() < (0.02 if level else 1e-4)
    # the same grid with the zero point rounded to an integer (ONNX Runtime's quantizer)
    rounded = BlockGrids(grids.packed, grids.scales, np.rint(grids.zero_points),
                         4, 32, 96)
    assert np.abs(rounded.dequantized() - weight).max() > 10 * np.abs(
        grids.dequantized() - weight).max() + 1e-4


def test_q8_0_and_q4_0_blocks_are_stored_exactly_by_the_symmetric_grids():
    rng = np.random.default_rng(2)
    d = rng.uniform(0.001, 0.01, (5, 2, 1)).astype(np.float32)
    q8 = rng.integers(-127, 128, (5, 2, 32))
    q8[..., 0] = 127  # Q8_0: d = max|w| / 127
    weight = (d * q8).reshape(5, 64).T
    np.testing.assert_allclose(quantize_blocks(weight, 8, 32, True).dequantized(), weight,
                               rtol=1e-6, atol=0)
    q4 = rng.integers(-8, 8, (5, 2, 32))
    q4[..., 0] = -8  # Q4_0: d = (value of largest magnitude) / -8
    weight = (d * q4).reshape(5, 64).T
    np.testing.assert_allclose(quantize_blocks(weight, 4, 32, True).dequantized(), weight,
                               rtol=1e-6, atol=0)


def test_constant_and_zero_blocks_are_exact():
    weight = np.zeros((64, 3), np.float32)
    weight[32:, 1] = -0.25
    for bits in (4, 8):
        for symmetric in (False, True):
            grids = quantize_blocks(weight, bits, 32, symmetric)
            np.testing.assert_array_equal(grids.dequantized(), weight)

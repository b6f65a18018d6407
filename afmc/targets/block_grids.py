"""Round-to-nearest MatMulNBits weights written by afmc: each block on its own grid.

A chosen MatMul's constant [K, N] weight is stored for ONNX Runtime's MatMulNBits
(domain com.microsoft) at 4 or 8 bit, one grid per block of `block` consecutive input
values of each output column (the last block of a K that is not a multiple of
`block` is padded with its own last value, which no product reads). Rules:

- Asymmetric: the grid runs from the block's minimum to its maximum in 2^bits - 1 equal
  steps, step = (max - min) / (2^bits - 1), and the zero point -min / step is stored as
  a float32 (MatMulNBits takes zero points of the scales' type and computes
  (q - zero_point) * step). Weights that already lie on such a grid are stored exactly,
  to float32 rounding: GGUF's Q4_1 / Q8_1 blocks and the output of any min-max block
  quantizer (a model read from a Q4_1 GGUF keeps its own 4-bit weights; ONNX Runtime's
  quantizer rounds the zero point to an integer and adds 0 to the range, so it
  re-rounds every such block). At 8 bit, where ONNX Runtime's CPU kernel takes only
  uint8 zero points, the zero point is rounded to the nearest integer in [0, 255] and
  the levels are rint(w / step) + zero point.
- Symmetric (no zero points: MatMulNBits' implied zero point 2^(bits-1)): at 4 bit
  the block's value of largest magnitude maps to level -8, step = that value / -8 (the
  convention of GGUF's Q4_0 and of ONNX Runtime's quantizer); at 8 bit step = max|w| /
  127 (GGUF's Q8_0). A Q4_0 or Q8_0 block is stored exactly.
- Levels are round-half-to-even of (w - min) / step (asymmetric) or w / step plus the
  implied zero point (symmetric), clipped to [0, 2^bits - 1]; a block of one repeated
  value has step |value| (1 for zeros) and is exact.
- Packing: [N, blocks, block * bits / 8] bytes; at 4 bit the even input value of each
  pair in the low nibble.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class BlockGrids:
    """A [K, N] weight as MatMulNBits stores it."""

    packed: np.ndarray  # uint8 [N, blocks, block * bits / 8]
    scales: np.ndarray  # float32 [N * blocks]
    zero_points: np.ndarray | None  # [N * blocks]: float32 (4 bit), uint8 (8 bit); None: symmetric
    bits: int
    block: int
    rows: int  # K

    def dequantized(self) -> np.ndarray:
        """The [K, N] float32 weight MatMulNBits computes with."""
        levels = _unpack(self.packed, self.bits)  # [N, blocks, block]
        n, blocks, _ = levels.shape
        scales = self.scales.reshape(n, blocks, 1)
        zero = (np.float32(1 << (self.bits - 1)) if self.zero_points is None
                else self.zero_points.reshape(n, blocks, 1).astype(np.float32))
        values = (levels.astype(np.float32) - zero) * scales
        return values.reshape(n, -1)[:, : self.rows].T


def quantize_blocks(weight: np.ndarray, bits: int, block: int, symmetric: bool) -> BlockGrids:
    """`weight` [K, N] on one grid per block (rules in the module docstring)."""
    rows, columns = weight.shape
    blocks = -(-rows // block)
    transposed = np.pad(np.asarray(weight, np.float32).T, ((0, 0), (0, blocks * block - rows)),
                        mode="edge")
    grouped = transposed.reshape(columns, blocks, block)
    top = (1 << bits) - 1
    if symmetric:
        zero_points = None
        if bits == 4:
            at = np.abs(grouped).argmax(axis=-1)[..., None]
            step = np.take_along_axis(grouped, at, axis=-1)[..., 0] / np.float32(-8)
        else:
            step = np.abs(grouped).max(axis=-1) / np.float32(127)
        step = np.where(step == 0, np.float32(1), step).astype(np.float32)
        levels = np.rint(grouped / step[..., None]) + (1 << (bits - 1))
    else:
        low, high = grouped.min(axis=-1), grouped.max(axis=-1)
        step = (high - low) / np.float32(top)
        flat = np.where(np.abs(low) > 0, np.abs(low), np.float32(1))
        step = np.where(step == 0, flat, step).astype(np.float32)
        if bits == 4:
            levels = np.rint((grouped - low[..., None]) / step[..., None])
            zero_points = (-low / step).astype(np.float32).reshape(-1)
        else:
            zero = np.clip(np.rint(-low / step), 0, top)
            levels = np.rint(grouped / step[..., None]) + zero[..., None]
            zero_points = zero.astype(np.uint8).reshape(-1)
    levels = np.clip(levels, 0, top).astype(np.uint8)
    return BlockGrids(_pack(levels, bits), step.reshape(-1), zero_points, bits, block, rows)


def matmul_nbits(graph: ir.Graph, matmul: ir.Node, grids: BlockGrids, weight_name: str,
                 accuracy_level: int) -> ir.Node:
    """Replace `matmul` (x times its constant weight) by MatMulNBits on `grids`, named
    ``<matmul>_Q<bits>``; its initializers are named after `weight_name`."""
    suffix = f"_Q{grids.bits}"
    inputs = [matmul.inputs[0],
              _initializer(graph, f"{weight_name}{suffix}", grids.packed),
              _initializer(graph, f"{weight_name}{suffix}_scales", grids.scales)]
    if grids.zero_points is not None:
        inputs.append(_initializer(graph, f"{weight_name}{suffix}_zero_points",
                                   grids.zero_points))
    columns = grids.packed.shape[0]
    node = ir.node("MatMulNBits", inputs, domain=MS_DOMAIN, name=f"{matmul.name}{suffix}",
                   attributes={"K": grids.rows, "N": columns, "bits": grids.bits,
                               "block_size": grids.block, "accuracy_level": accuracy_level})
    ir.convenience.replace_nodes_and_values(graph, matmul, [matmul], [node], matmul.outputs,
                                            node.outputs)
    return node


def _pack(levels: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return levels
    return (levels[..., 0::2] | (levels[..., 1::2] << 4)).astype(np.uint8)


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return packed
    levels = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), np.uint8)
    levels[..., 0::2], levels[..., 1::2] = packed & 0x0F, packed >> 4
    return levels


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    if name in graph.initializers:
        return graph.initializers[name]
    tensor = ir.tensor(array, name=name)
    value = ir.val(name, tensor.dtype, tensor.shape, const_value=tensor)
    graph.register_initializer(value)
    return value

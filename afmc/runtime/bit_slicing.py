"""Bit-sliced weights (``hardware.weight_slices``): each weight spread over n device pairs
of different significance, each programmed with its own noise and range, read through
its own ADC and recombined digitally -- CrossSim's ``BitslicedCore`` in its balanced style.

Rules, for a layer [N, K] with input slices S (HARDWARE.md step 1) and n > 1 slices:

- Quantize: per row of each input slice, m = max |w| and the signed integer
  W = rint(w / m * Q), Q = 2^(B-1) - 1 for B = ``hardware.weight_bits`` (CrossSim
  quantizes to the same B bits over the whole layer's max; afmc's crossbar maps each row
  slice's max to g_max, so its integers are per row slice).
- Split |W| least significant digit first into n digits of b bits (:func:`slice_bits`,
  CrossSim's rule: b = B / n when n divides B, else ceil((B - 1) / n)); the last digit
  takes what is left. Digit j keeps the weight's sign: D_j = sign(W) * digit_j * m / Q, so
  sum_j 2^(j b) D_j = W * m / Q, the quantized weight.
- Program: each D_j is programmed as a layer of its own (the noise model with its own
  per-row or per-layer range, each digit matrix from its own random stream), then
  multiplied by its significance 2^(j b). A digit 0 is a weight 0 (under pcm, exactly 0:
  below the zero threshold), so small weights carry no noise of the upper slices.
- Compute: the chip's analog node reads [N, n K] -- per input slice s, the n significance
  blocks 2^(j b) P_j[:, s] side by side -- and its X gathered to match (every input slice
  driven into the rows of each of its n device blocks): each block has its own w_max, so
  its own ADC bound (out_bound * r * w_max of the block) and levels, and the digital sum
  over slices that the node already does is CrossSim's recombination.

n = 1 is the unsliced chip: no quantization, nothing rewritten.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from afmc import ops
from afmc.ops.analog_linear_onnx import ANALOG_OP_TYPES, slice_overload, sliced_function

Programmer = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def slice_bits(weight_bits: int, slices: int) -> int:
    """Bits per slice of signed `weight_bits`-bit weights over `slices` slices (CrossSim's
    balanced rule): weight_bits / slices when it divides, else ceil((weight_bits - 1) /
    slices)."""
    if weight_bits % slices == 0:
        return weight_bits // slices
    return math.ceil((weight_bits - 1) / slices)


def slicing_problem(slices: int, weight_bits: int, out_res: float) -> str | None:
    """Why `slices` slices of `weight_bits`-bit weights do not fit an ADC of `out_res` steps
    (None: they fit): a slice holds at least one bit of the magnitude, and its digit
    levels (2^b - 1 per sign) do not outnumber the ADC's levels per sign (out_res / 2)."""
    if slices == 1:
        return None
    if slices > weight_bits - 1:
        return (f"weight_slices ({slices}) must be at most weight_bits - 1 "
                f"({weight_bits - 1}): each slice holds at least one bit of the magnitude")
    bits = slice_bits(weight_bits, slices)
    if 2 ** bits - 1 > out_res / 2:
        return (f"weight_bits ({weight_bits}) over {slices} slices is {bits} bits per slice, "
                f"{2 ** bits - 1} levels, more than the ADC's {out_res / 2:g} "
                f"(out_res {out_res:g})")
    return None


def hardware_copies(hardware: dict[str, Any]) -> int:
    """Device blocks per weight block of a record's ``hardware`` section: devices_per_weight
    x weight_slices (HardwareConfig.copies)."""
    return int(hardware.get("devices_per_weight", 1)) * int(hardware.get("weight_slices", 1))


def digit_matrices(weight: np.ndarray, sizes: Sequence[int], slices: int, weight_bits: int,
                   bits: int) -> list[np.ndarray]:
    """The n signed digit matrices D_j [N, K] of `weight` (module rules, least significant
    first), float32, in weight units: sum_j 2^(j bits) D_j is the quantized weight."""
    w = np.asarray(weight, dtype=np.float32)
    levels = np.float32(2 ** (weight_bits - 1) - 1)
    integers = np.empty(w.shape, dtype=np.float32)
    steps = np.empty(w.shape, dtype=np.float32)
    bounds = np.cumsum([0, *sizes])
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        block = w[:, start:stop]
        wmax = np.abs(block).max(axis=1, keepdims=True)
        unit = np.where(wmax > 0, wmax, np.float32(1.0))
        integers[:, start:stop] = np.rint(block / unit * levels)
        steps[:, start:stop] = wmax / levels
    sign, rest = np.sign(integers), np.abs(integers)
    base = np.float32(2 ** bits)
    digits = []
    for j in range(slices):
        digit = rest if j == slices - 1 else np.mod(rest, base)
        digits.append(sign * digit * steps)
        rest = (rest - digit) / base
    return digits


def sliced_layout(parts: Sequence[np.ndarray], sizes: Sequence[int]) -> np.ndarray:
    """The [N, n K] weights of the chip's node from the n significance-weighted [N, K]
    parts: per input slice, the n parts' columns of that slice side by side."""
    blocks = []
    bounds = np.cumsum([0, *sizes])
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        blocks.extend(part[:, start:stop] for part in parts)
    return np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=np.float32)


def sliced_sizes(sizes: Sequence[int], slices: int) -> list[int]:
    """The input slices of the chip's node: each slice of `sizes` `slices` times."""
    return [int(size) for size in sizes for _ in range(slices)]


def gather_index(sizes: Sequence[int], slices: int) -> np.ndarray:
    """The columns of X that the chip's node reads, in sliced_layout's order (int64)."""
    bounds = np.cumsum([0, *sizes])
    return np.concatenate([np.tile(np.arange(start, stop), slices)
                           for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]
                          ).astype(np.int64)


def recombined(sliced: np.ndarray, sizes: Sequence[int], slices: int) -> np.ndarray:
    """The [N, K] weights a sliced layout computes: the sum of its significance blocks."""
    out, column = [], 0
    for size in sizes:
        blocks = [sliced[:, column + j * size: column + (j + 1) * size] for j in range(slices)]
        out.append(np.sum(blocks, axis=0, dtype=np.float32))
        column += slices * size
    return np.concatenate(out, axis=1)


def program_sliced(weight: np.ndarray, sizes: Sequence[int], slices: int, weight_bits: int,
                   rng: np.random.Generator | None, program: Programmer) -> np.ndarray:
    """The chip's [N, n K] weights of one layer: each digit matrix programmed by
    `program(D_j, rng_j)` (rng_j the j-th child of `rng`; None: not programmed, the
    noise-free chip), times its significance, in sliced_layout."""
    bits = slice_bits(weight_bits, slices)
    digits = digit_matrices(weight, sizes, slices, weight_bits, bits)
    streams = rng.spawn(slices) if rng is not None else [None] * slices
    parts = [np.float32(2.0 ** (j * bits)) * (digit if stream is None
                                                else program(digit, stream))
             for j, (digit, stream) in enumerate(zip(digits, streams, strict=True))]
    return sliced_layout(parts, sizes)


def sliced_graph(model: onnx.ModelProto, weights: Collection[str],
                 sizes_of: dict[str, Sequence[int]], slices: int) -> onnx.ModelProto:
    """A copy of `model` whose analog nodes reading a weight in `weights` (an initializer,
    directly or through afmc.SliceInput) compute its sliced layout (module rules): X
    gathered by gather_index (before X's SliceInput, whose slice sizes become
    sliced_sizes, as W's do), the input ranges each repeated n times, the overload of
    n S slices, the weight's declared shape [N, n K]."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {init.name: init for init in graph.initializer}
    opset = next(o.version for o in copy.opset_import if o.domain in ("", "ai.onnx"))
    present = {(f.domain, f.name, f.overload) for f in copy.functions}
    nodes = []
    for node in graph.node:
        if not (node.domain == ops.DOMAIN and node.op_type in ANALOG_OP_TYPES):
            nodes.append(node)
            continue
        slicers = [producers.get(name) for name in node.input[:2]]
        if all(s is not None and s.op_type == "SliceInput" and s.domain == ops.DOMAIN
               for s in slicers):
            x_slicer, w_slicer = slicers
            weight, x = w_slicer.input[0], x_slicer.input[0]
        else:
            x_slicer = w_slicer = None
            weight, x = node.input[1], node.input[0]
        if weight not in weights:
            nodes.append(node)
            continue
        sizes = list(sizes_of[weight])
        index, gathered = f"{weight}::bit_slice_index", f"{node.output[0]}::bit_sliced_x"
        graph.initializer.append(numpy_helper.from_array(gather_index(sizes, slices), index))
        gather = helper.make_node("Gather", [x, index], [gathered], axis=-1,
                                  name=f"{node.name}::bit_slice_gather")
        if x_slicer is not None:
            x_slicer.input[0] = gathered
            for slicer in (x_slicer, w_slicer):
                for attribute in slicer.attribute:
                    if attribute.name == "slice_sizes":
                        del attribute.ints[:]
                        attribute.ints.extend(sliced_sizes(sizes, slices))
            position = next(i for i, n in enumerate(nodes) if n is x_slicer)
            nodes.insert(position, gather)
        else:
            node.input[0] = gathered
            nodes.append(gather)
        node.input[2] = _repeated_range(graph, initializers, node.input[2], slices)
        node.overload = slice_overload(slices * len(sizes))
        key = (node.domain, node.op_type, node.overload)
        if key not in present:
            present.add(key)
            copy.functions.append(sliced_function(node.op_type, opset, slices * len(sizes)))
        declared = initializers[weight]
        rows = declared.dims[0]
        del declared.dims[:]
        declared.dims.extend([rows, slices * sum(sizes)])
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return copy


def _repeated_range(graph: onnx.GraphProto, initializers: dict[str, TensorProto], name: str,
                    slices: int) -> str:
    """The name of a new initializer holding each input range of `name` `slices` times."""
    if name not in initializers:
        raise ValueError(f"analog input range {name!r} is not an initializer: cannot slice")
    ranges = numpy_helper.to_array(initializers[name])
    repeated = f"{name}::bit_sliced_{slices}"
    if repeated not in initializers:
        initializers[repeated] = numpy_helper.from_array(
            np.repeat(ranges, slices).astype(ranges.dtype), repeated)
        graph.initializer.append(initializers[repeated])
    return repeated

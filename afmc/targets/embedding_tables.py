"""Store embedding tables at 8 or 4 bit, read by ONNX Runtime's GatherBlockQuantized.

An embedding table is a 2-D float initializer read by Gather(axis=0) (token and learned
position embeddings). Rules for a table quantized to `bits`:

- Scales are symmetric, one per block of `block_size` values along the hidden axis (the
  last block may be shorter): scale = max|block| / 127 at 8 bit, / 7 at 4 bit; values
  are rounded to the nearest step (round half to even) and clipped to [-127, 127] or [-7, 7].
- 8-bit tables are stored as uint8 with zero point 128 (GatherBlockQuantized reads 8-bit
  data as uint8 only); 4-bit tables as signed INT4 without zero points.
- Each Gather of the table becomes GatherBlockQuantized (domain com.microsoft), which
  dequantizes only the gathered rows; the float table is dropped once nothing else
  reads it (a tied LM head kept in floating point still does).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir

MS_DOMAIN = "com.microsoft"
_QMAX = {8: 127, 4: 7}


def embedding_tables(model: ir.Model) -> dict[str, list[ir.Node]]:
    """The Gather(axis=0) nodes of each 2-D float initializer, by initializer name."""
    tables: dict[str, list[ir.Node]] = {}
    for node in model.graph:
        if node.op_type != "Gather" or node.domain != "":
            continue
        data = node.inputs[0]
        axis = node.attributes.get("axis")
        if (
            data is None
            or not data.is_initializer()
            or data.const_value is None
            or data.dtype != ir.DataType.FLOAT
            or len(data.const_value.shape) != 2
            or (axis is not None and axis.as_int() != 0)
        ):
            continue
        tables.setdefault(data.name, []).append(node)
    return tables


def quantize_blocks(table: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-block quantization of a [rows, dim] table: (int8 values, float32 scales)."""
    rows, dim = table.shape
    blocks = -(-dim // block_size)
    padded = np.zeros((rows, blocks * block_size), np.float32)
    padded[:, :dim] = table
    grouped = padded.reshape(rows, blocks, block_size)
    scales = np.abs(grouped).max(axis=-1) / _QMAX[bits]
    safe = np.where(scales == 0, 1.0, scales)
    values = np.clip(np.round(grouped / safe[..., None]), -_QMAX[bits], _QMAX[bits])
    return values.reshape(rows, -1)[:, :dim].astype(np.int8), scales.astype(np.float32)


def quantize_table(
    model: ir.Model, name: str, gathers: list[ir.Node], bits: int, block_size: int
) -> None:
    """Replace the Gathers of table `name` by GatherBlockQuantized on a `bits`-bit copy."""
    graph = model.graph
    table = graph.initializers[name]
    values, scales = quantize_blocks(table.const_value.numpy(), bits, block_size)
    stored = [
        _initializer(graph, f"{name}_q{bits}", _storage(values, bits)),
        _initializer(graph, f"{name}_q{bits}_scales", scales),
    ]
    zero_point = None
    if bits == 8:
        zero_point = _initializer(
            graph, f"{name}_q8_zero_points", np.full(scales.shape, 128, np.uint8)
        )
    for gather in gathers:
        inputs = [stored[0], gather.inputs[1], stored[1]]
        if zero_point is not None:
            inputs.append(zero_point)
        quantized = ir.node(
            "GatherBlockQuantized",
            inputs,
            domain=MS_DOMAIN,
            attributes={
                "gather_axis": 0,
                "quantize_axis": 1,
                "block_size": block_size,
                "bits": bits,
            },
            name=f"{gather.name}_q{bits}",
        )
        ir.convenience.replace_nodes_and_values(
            graph, gather, [gather], [quantized], gather.outputs, quantized.outputs
        )
    if not table.uses():
        graph.initializers.pop(name)
    model.opset_imports[MS_DOMAIN] = 1
    if bits == 4:
        model.ir_version = max(model.ir_version or 0, 10)


def _storage(values: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return (values.astype(np.int16) + 128).astype(np.uint8)
    return values.astype(ml_dtypes.int4)


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    tensor = ir.tensor(array, name=name)
    value = ir.val(name, tensor.dtype, tensor.shape, const_value=tensor)
    graph.register_initializer(value)
    return value

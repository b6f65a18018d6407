"""The int4 target's quantizer: block-wise 4-bit (or 8-bit) weights in MatMulNBits.

ONNX Runtime's MatMulNBits (domain com.microsoft) holds each chosen MatMul's [in, out]
weight packed at 4 or 8 bit. Rules:

- Weights have one grid per block of digital.int4_block_size input values per output
  column, symmetric (digital.int4_symmetric) or asymmetric (a float zero point per
  block, so a block's grid runs from its minimum to its maximum, as GGUF's Q4_1
  stores it), rounded to the nearest level by afmc (algorithm rtn;
  afmc.targets.block_grids: weights already on such a grid, as a model read from a
  Q4_1 GGUF, are stored exactly) or chosen by ONNX Runtime's GPTQ from the calibration
  batches (algorithm gptq; 4-bit layers only, 8-bit layers are always rtn).
- Layers asked for at 8 bit (digital.int4_keep_8bit) get MatMulNBits with bits=8.
- digital.int4_accuracy_level is MatMulNBits' compute type; 4 quantizes the activations to
  int8 per block on the fly and runs an integer kernel.
- Every requested node must come out as ``<name>_Q<bits>`` (a MatMulNBits); one that does
  not is an error. A weight no other node reads is dropped. The model imports the
  com.microsoft opset (GPTQ does not add it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import onnx
import onnx_ir as ir

from afmc.config import ConfigError, DigitalConfig
from afmc.targets.block_grids import MS_DOMAIN, matmul_nbits, quantize_blocks
from afmc.targets.ort_quant import gptq_quantize, quiet

Feeds = Iterable[dict]


def quantize_int4(
    model: ir.Model, bits: dict[str, int], config: DigitalConfig, feeds: Feeds | None
) -> tuple[ir.Model, dict[str, str]]:
    """Quantize each MatMul in `bits` (name -> 4 or 8); return the model and the new names.

    `feeds` (input dicts) are needed by algorithm gptq only.
    """
    gptq = {name for name, width in bits.items() if width == 4} \
        if config.int4_algorithm == "gptq" else set()
    if gptq:
        if feeds is None:
            raise ValueError("digital.int4_algorithm=gptq needs calibration data")
        model = ir.from_proto(_gptq(ir.to_proto(model), gptq, config, feeds))
    _rtn(model, {name: width for name, width in bits.items() if name not in gptq}, config)
    model.opset_imports.setdefault(MS_DOMAIN, 1)
    return model, _quantized_nodes(model, bits)


def _weight_matmuls(model: onnx.ModelProto) -> set[str]:
    initializers = {init.name for init in model.graph.initializer}
    return {
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and node.input[1] in initializers
    }


def _rtn(model: ir.Model, bits: dict[str, int], config: DigitalConfig) -> None:
    """Round each named MatMul's weight to its block grids (afmc.targets.block_grids)."""
    graph = model.graph
    for node in [node for node in graph if node.op_type == "MatMul" and node.name in bits]:
        weight = node.inputs[1]
        grids = quantize_blocks(weight.const_value.numpy(), bits[node.name],
                                config.int4_block_size, config.int4_symmetric)
        matmul_nbits(graph, node, grids, weight.name, config.int4_accuracy_level)
        if not weight.uses():
            graph.initializers.pop(weight.name)


def _gptq(
    model: onnx.ModelProto, chosen: set[str], config: DigitalConfig, feeds: Feeds
) -> onnx.ModelProto:
    block = config.int4_block_size
    scheme = "sym" if config.int4_symmetric else "asym"
    if scheme == "asym":
        _check_zero_point_pairs(model, chosen, block)
    weight_config = {
        name: {"bits": 4, "group_size": block, "scheme": scheme, "algorithm": "GPTQ"}
        if name in chosen
        else "fp32"
        for name in _weight_matmuls(model)
    }

    def dataloader() -> Iterator[tuple[dict, None]]:
        for feed in feeds:
            yield feed, None

    with quiet():
        quantized = gptq_quantize(
            model,
            dataloader(),
            weight_config,
            num_bits=4,
            group_size=block,
            scheme=scheme,
            n_samples=-1,
            accuracy_level=config.int4_accuracy_level,
        )
    return quantized.model


def _check_zero_point_pairs(model: onnx.ModelProto, chosen: set[str], block: int) -> None:
    """ONNX Runtime's GPTQ packs a column's 4-bit zero points two to a byte and fails on
    an odd number of blocks per column: a ConfigError naming the first such layer."""
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.name in chosen and -(-shapes[node.input[1]][0] // block) % 2:
            raise ConfigError(
                f"digital.int4_algorithm=gptq with asymmetric blocks needs an even number of "
                f"blocks of {block} per column (ONNX Runtime's GPTQ packs zero points in "
                f"pairs); MatMul {node.name} has {shapes[node.input[1]][0]} inputs: set "
                f"digital.int4_symmetric=true")


def _quantized_nodes(model: ir.Model, bits: dict[str, int]) -> dict[str, str]:
    nodes = {node.name: node for node in model.graph}
    found = {}
    for name, width in bits.items():
        node = nodes.get(f"{name}_Q{width}")
        if node is None or node.op_type != "MatMulNBits":
            raise RuntimeError(f"ONNX Runtime's quantizer left MatMul {name} in floating point")
        found[name] = node.name
    return found

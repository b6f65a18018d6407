"""The int4 target's quantizer: block-wise 4-bit (or 8-bit) weights in MatMulNBits.

ONNX Runtime's MatMulNBits (domain com.microsoft) holds each chosen MatMul's [in, out]
weight packed at 4 or 8 bit. Rules:

- Weights have one scale per block of digital.int4_block_size input values per output
  column; symmetric (digital.int4_symmetric, no zero points: MatMulNBits' implied zero
  point is the middle of the range) or asymmetric (a 4-bit zero point per block, as
  GGUF's Q4_1 stores a minimum per block), rounded to the nearest step (algorithm rtn)
  or chosen by ONNX Runtime's GPTQ from the calibration batches (algorithm gptq; 4-bit
  layers only, 8-bit layers are always rtn).
- Layers asked for at 8 bit (digital.int4_keep_8bit) get MatMulNBits with bits=8.
- digital.int4_accuracy_level is MatMulNBits' compute type; 4 quantizes the activations to
  int8 per block on the fly and runs an integer kernel.
- Every requested node must come out as ``<name>_Q<bits>`` (a MatMulNBits); one that does
  not is an error. All other MatMuls with a constant weight are excluded by name. The
  model imports the com.microsoft opset (GPTQ does not add it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import onnx

from afmc.config import DigitalConfig
from afmc.targets.ort_quant import MatMulNBitsQuantizer, gptq_quantize, quiet

Feeds = Iterable[dict]
MS_DOMAIN = "com.microsoft"


def quantize_int4(
    model: onnx.ModelProto, bits: dict[str, int], config: DigitalConfig, feeds: Feeds | None
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Quantize each MatMul in `bits` (name -> 4 or 8); return the model and the new names.

    `feeds` (input dicts) are needed by algorithm gptq only.
    """
    for width in (4, 8):
        chosen = {name for name, b in bits.items() if b == width}
        if not chosen:
            continue
        if width == 4 and config.int4_algorithm == "gptq":
            if feeds is None:
                raise ValueError("digital.int4_algorithm=gptq needs calibration data")
            model = _gptq(model, chosen, config, feeds)
        else:
            model = _rtn(model, width, chosen, config)
    if not any(opset.domain == MS_DOMAIN for opset in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    return model, _quantized_nodes(model, bits)


def _weight_matmuls(model: onnx.ModelProto) -> set[str]:
    initializers = {init.name for init in model.graph.initializer}
    return {
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and node.input[1] in initializers
    }


def _rtn(
    model: onnx.ModelProto, bits: int, chosen: set[str], config: DigitalConfig
) -> onnx.ModelProto:
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=config.int4_block_size,
        is_symmetric=config.int4_symmetric,
        accuracy_level=config.int4_accuracy_level,
        nodes_to_exclude=sorted(_weight_matmuls(model) - chosen),
        op_types_to_quantize=("MatMul",),
    )
    with quiet():
        quantizer.process()
    return quantizer.model.model


def _gptq(
    model: onnx.ModelProto, chosen: set[str], config: DigitalConfig, feeds: Feeds
) -> onnx.ModelProto:
    block = config.int4_block_size
    scheme = "sym" if config.int4_symmetric else "asym"
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


def _quantized_nodes(model: onnx.ModelProto, bits: dict[str, int]) -> dict[str, str]:
    nodes = {node.name: node for node in model.graph.node}
    found = {}
    for name, width in bits.items():
        node = nodes.get(f"{name}_Q{width}")
        if node is None or node.op_type != "MatMulNBits":
            raise RuntimeError(f"ONNX Runtime's quantizer left MatMul {name} in floating point")
        found[name] = node.name
    return found

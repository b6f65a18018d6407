"""The int8 target's quantizer: 8-bit weights and static 8-bit activations on chosen MatMuls
and convolutions.

ONNX Runtime's quantize_static quantizes exactly the MatMul and Conv nodes it is given (their
weight is a [in, out] initializer, see weight_layout). Rules:

- Weights: int8, symmetric (scale = max|w| / 127, zero point 0), one scale per output
  channel (column of the [in, out] weight; digital.int8_per_channel) or per layer.
- Activations (each MatMul's input): uint8 with a scale and zero point set once from the
  calibration batches by digital.int8_calibration (MinMax, Percentile, Entropy).
- Format qdq: QuantizeLinear on the input, DequantizeLinear on the int8 weight, the
  MatMul's output left in float; ONNX Runtime fuses the three into MatMulIntegerToFloat
  (an integer GEMM with a float result). A Conv's output is quantized too, so ONNX Runtime
  fuses it into QLinearConv. A Relu or Clip that is a Conv's only reader is fused into it
  (fused_activations), as an integer accelerator applies the activation before it
  re-quantizes: the Conv's output is quantized over the activation's output range (ReLU6:
  [0, 6]), not over the raw sums, which would spend most of the 256 levels on values the
  activation discards. Format qoperator: QLinearMatMul, whose output is
  re-quantized to 8 bit and dequantized for the float ops that follow.
- Every requested node must come out quantized; one that does not is an error.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from afmc.config import DigitalConfig
from afmc.targets.ort_quant import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
    quiet,
)

_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}


def quantize_int8(
    model: onnx.ModelProto, nodes: list[str], reader: CalibrationDataReader, config: DigitalConfig
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Quantize the MatMul and Conv nodes named `nodes`; return the model and each node's
    quantized name."""
    qdq = config.int8_format == "qdq"
    activations = fused_activations(model, nodes)
    extra = {"MatMulConstBOnly": True, "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}}
    if qdq:
        extra["OpTypesToExcludeOutputQuantization"] = ["MatMul"]
    if config.int8_calibration == "percentile":
        extra["CalibPercentile"] = config.int8_percentile
    with tempfile.TemporaryDirectory(prefix="afmc-int8-") as tmp:
        source, target = Path(tmp) / "fp.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(source), save_as_external_data=True)
        with quiet():
            quantize_static(
                str(source),
                str(target),
                reader,
                quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
                op_types_to_quantize=["MatMul", "Conv", *ACTIVATIONS],
                nodes_to_quantize=[*nodes, *activations],
                per_channel=config.int8_per_channel,
                reduce_range=False,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=_METHODS[config.int8_calibration],
                use_external_data_format=True,
                extra_options=extra,
            )
        quantized = onnx.load(str(target))
    return quantized, _quantized_nodes(quantized, nodes, qdq)


ACTIVATIONS = ("Relu", "Clip")


def fused_activations(model: onnx.ModelProto, nodes: list[str]) -> list[str]:
    """The Relu and Clip nodes that are the only reader of a Conv in `nodes`."""
    chosen = set(nodes)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_outputs = {output.name for output in model.graph.output}
    fused = []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.name not in chosen or node.output[0] in graph_outputs:
            continue
        after = readers.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type in ACTIVATIONS and after[0].name:
            fused.append(after[0].name)
    return fused


def _quantized_nodes(model: onnx.ModelProto, names: list[str], qdq: bool) -> dict[str, str]:
    """The node now computing each former MatMul or Conv in `names` (qdq: the node itself,
    reading a DequantizeLinear weight; qoperator: ``<name>_quant``, a QLinearMatMul or
    QLinearConv)."""
    nodes = {node.name: node for node in model.graph.node}
    producers = {output: node.op_type for node in model.graph.node for output in node.output}
    found = {}
    for name in names:
        node = nodes.get(name if qdq else f"{name}_quant")
        if node is None:
            integer = False
        elif qdq:
            integer = (
                node.op_type in ("MatMul", "Conv")
                and producers.get(node.input[1]) == "DequantizeLinear"
            )
        else:
            integer = node.op_type in ("QLinearMatMul", "QLinearConv")
        if not integer:
            raise RuntimeError(f"ONNX Runtime's quantizer left {name} in floating point")
        found[name] = node.name
    return found

"""The digital targets' lowering step: precision per layer, quantization, and the record.

Rules:

- A layer place-layers put on the accelerator ("analog") is quantized: int8 in the int8
  target; int4 in the int4 target, or int8 when its name matches one of
  digital.int4_keep_8bit (re.search). A layer placed "digital" stays floating point,
  exactly as lowered. A convolution (ONNX input) is quantized to int8 by the int8
  target and stays floating point in the int4 target (MatMulNBits holds matrix
  products only), with a FloatConvolutionWarning.
- With digital.quantize_embeddings, every embedding table (embedding_tables) is stored at
  the same precision by the same rule (its name is its initializer's name); otherwise the
  tables stay float.
- A digital.int4_keep_8bit pattern that matches no quantized layer or table of an int4
  compile is an error naming the pattern (the int8 target ignores the option).
- The calibration batches of a causal LM compiled with its KV cache get empty pasts
  (afmc.data.kv_cache), as every run with input_ids only.
- The floating-point lowering is kept as OUT/reference.onnx: the FP view `afmc eval`
  compares against.
- The record: each layer's `precision` ("int8", "int4", "fp") and placement "digital"
  (no layer of a digital target sits on analog tiles, so none is tile-mapped; `rule`
  still names the placement rule that chose the precision), and a "digital" section
  with the reference file, the layer counts per precision, the ONNX node computing each
  quantized layer and the precision of each embedding table.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import onnx_ir as ir

from afmc.config import DigitalConfig
from afmc.data.kv_cache import kv_cache_of_inputs, with_empty_pasts
from afmc.passes.name_rules import NameRules
from afmc.targets import LowerContext
from afmc.targets.embedding_tables import embedding_tables, quantize_table
from afmc.targets.int4 import quantize_int4
from afmc.targets.int8 import quantize_int8
from afmc.targets.ort_quant import CalibrationDataReader
from afmc.targets.weight_layout import layer_convs, layer_matmuls

REFERENCE_FILE = "reference.onnx"
BITS = {"int8": 8, "int4": 4}
DigitalTarget = Literal["int8", "int4"]


class BatchFeeds(CalibrationDataReader):
    """The calibration batches (dicts from input name to array) as ONNX Runtime feeds."""

    def __init__(self, batches: Sequence[dict[str, np.ndarray]]) -> None:
        self.feeds = list(batches)
        self._next = iter(self.feeds)

    def get_next(self) -> dict | None:
        return next(self._next, None)

    def rewind(self) -> None:
        self._next = iter(self.feeds)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.feeds)


class FloatConvolutionWarning(UserWarning):
    """A convolution placed on the accelerator stays floating point in the int4 target."""


def precision_for(
    names: Sequence[str], target: DigitalTarget, config: DigitalConfig
) -> dict[str, str]:
    """The precision of each quantized layer or table name (rules in the module docstring)."""
    if target == "int8":
        return dict.fromkeys(names, "int8")
    rules = NameRules("digital.int4_keep_8bit", config.int4_keep_8bit)
    chosen = {name: "int4" if match is None else "int8"
              for name, match in rules.matches(names).items()}
    rules.check_all_used("quantized layer or embedding table")
    return chosen


def lower_digital(context: LowerContext, target: DigitalTarget) -> ir.Model:
    """Quantize a copy of the FP lowering for `target`; fill the layer records and the record."""
    config = context.config.digital
    model = ir.from_proto(ir.to_proto(context.model))
    tables = list(embedding_tables(model)) if config.quantize_embeddings else []
    accelerated = [layer for layer in context.layers if layer.placement == "analog"]
    convs = layer_convs(model, accelerated)
    if convs and target == "int4":
        warnings.warn(f"int4 keeps {len(convs)} convolution layer(s) in floating point "
                      f"(MatMulNBits holds matrix products only): {', '.join(convs)}",
                      FloatConvolutionWarning, stacklevel=2)
    quantized = [layer for layer in accelerated
                 if layer.name not in convs or target == "int8"]
    chosen = precision_for([layer.name for layer in quantized] + tables, target, config)
    matmuls = layer_matmuls(model, [layer for layer in quantized if layer.name not in convs])
    nodes_of = matmuls | convs
    by_node = {node.name: layer.name for layer in quantized for node in nodes_of[layer.name]}
    cache = kv_cache_of_inputs((value.name, value.shape) for value in model.graph.inputs)
    feeds = BatchFeeds([with_empty_pasts(batch, cache) for batch in context.calibration]) \
        if context.calibration is not None else None
    if target == "int8":
        proto, renamed = quantize_int8(ir.to_proto(model), list(by_node), feeds, config)
        model = ir.from_proto(proto)
    else:
        bits = {node: BITS[chosen[layer]] for node, layer in by_node.items()}
        model, renamed = quantize_int4(model, bits, config, feeds)
    for name, gathers in embedding_tables(model).items():
        if name in tables:
            quantize_table(model, name, gathers, BITS[chosen[name]], config.int4_block_size)
    nodes: dict[str, list[str]] = {}
    for node, new_name in renamed.items():
        nodes.setdefault(by_node[node], []).append(new_name)
    for layer in context.layers:
        layer.precision = chosen.get(layer.name, "fp")
        layer.placement = "digital"
    context.files[REFERENCE_FILE] = context.model
    context.record["digital"] = {
        "reference": REFERENCE_FILE,
        "layers": dict(Counter(layer.precision for layer in context.layers)),
        "nodes": nodes,
        "embeddings": {name: chosen[name] for name in tables},
    }
    return model

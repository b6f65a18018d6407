"""The input signature of a compiled model, read from OUT/model.onnx without its weights.

The graph is read with onnx.load(load_external_data=False): weights in an external
.data file are not read (onnx_ir maps them lazily). The signature is the one the ONNX
front end reads from any ONNX file (data.onnx_signature): the graph
inputs that are not initializers, and the vocabulary when an embedding reads input_ids;
a KV cache's pasts are not among them (they are fed empty, afmc.data.kv_cache).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import onnx
import onnx_ir as ir

from afmc.data.calibration import ModelSignature
from afmc.data.kv_cache import is_cache_name
from afmc.data.onnx_signature import onnx_signature
from afmc.layout import MODEL_FILE


def compiled_signature(out_dir: Path) -> ModelSignature:
    """The inputs OUT/model.onnx takes (rules in the module docstring)."""
    proto = onnx.load(str(out_dir / MODEL_FILE), load_external_data=False)
    signature = onnx_signature(ir.from_proto(proto))
    inputs = tuple(spec for spec in signature.inputs if not is_cache_name(spec.name))
    return replace(signature, inputs=inputs)

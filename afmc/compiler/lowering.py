"""Lowering: torch-level program -> ONNX file with afmc ops.

The program (an FX GraphModule after the passes) is exported again with
torch.export and converted by torch.onnx (dynamo) with afmc's
custom_translation_table, so each afmc torch op becomes one node of the ONNX
domain `afmc`. The afmc function bodies are then attached as model-local
functions, the afmc record goes into the metadata, and the file is written
atomically (compiler.onnx_export.save_model: external data above 1 GiB).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
from torch import fx

from afmc import ops
from afmc.compiler.onnx_export import to_onnx_model
from afmc.ops import onnx_model

METADATA_KEY = "afmc"


def export_program(
    gm: fx.GraphModule,
    example_inputs: tuple,
    dynamic_shapes: Any,
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> ir.Model:
    """Lower the program with the afmc translations and attach the afmc functions."""
    model = to_onnx_model(gm, example_inputs, dynamic_shapes, list(input_names),
                          list(output_names), ops.TRANSLATIONS, optimize=False)
    onnx_model.attach_afmc_functions(model)
    return model


def set_metadata(model: ir.Model, record: dict[str, Any]) -> None:
    """Store the afmc record (configuration, placement, tiles) in the file's metadata."""
    model.metadata_props[METADATA_KEY] = json.dumps(record, sort_keys=True)


def read_metadata(path: Path) -> dict[str, Any]:
    """The afmc record stored in an ONNX file's metadata (without loading weights)."""
    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    raise ValueError(f"{path}: no afmc metadata")

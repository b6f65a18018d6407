"""Lower a captured graph module to an ONNX file (torch.onnx, dynamo exporter).

What works (torch 2.13, onnxscript 0.7): export the unlifted graph module
again with `torch.export.export(graph_module, example_inputs,
dynamic_shapes=dynamic_shapes)` and give the resulting ExportedProgram to
`torch.onnx.export(program, dynamo=True, custom_translation_table=...)`. This
works both for the graph as captured and after passes rewrote it in place (for
example `aten.linear` replaced by a `torch.library.custom_op`, which lowers
through `custom_translation_table`). Passing the graph module directly to
`torch.onnx.export(..., dynamic_shapes=...)` does the same export internally.
The conversion calls the exporter torch.onnx.export calls, with the op registry it
would build, built once per process (`_registry`: torch.onnx.export rebuilds it on
every call); torch is pinned, and tests/test_compile_steps.py compares the result with
torch.onnx.export's.

Points the rest of afmc must know:

- The example inputs and dynamic shapes recorded at capture are needed again:
  keep the CapturedModel (replace its graph_module with
  `dataclasses.replace` when a pass returns a new one) or pass them here with a
  bare GraphModule.
- torch.onnx names dynamic axes after torch's symbols ("s72"); the names of
  the `torch.export.Dim`s in the dynamic-shape spec ("batch", "seq") are put
  back with `ONNXProgram.rename_axes`.
- Custom translations that emit nodes of a non-standard domain (the afmc ops)
  also need their function bodies attached to the model before it is saved;
  `export_onnx` writes the model as torch.onnx made it.
- The file is written in a temporary directory beside `path` and moved into
  place (the weights' `<name>.data` first, then the model), so a reader never
  sees a half-written model. Weights above 1 GiB go to external data.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx_ir as ir
import torch
from torch.onnx._constants import ONNX_DEFAULT_OPSET as OPSET
from torch.onnx._internal.exporter import _core as _onnx_exporter
from torch.onnx._internal.exporter._constants import TORCHLIB_OPSET
from torch.onnx._internal.exporter._registration import ONNXRegistry

from afmc.capture.torch_module import CapturedModel

EXTERNAL_DATA_THRESHOLD_BYTES = 1 << 30


def export_onnx(
    captured_or_graph_module: CapturedModel | torch.fx.GraphModule,
    path: str | os.PathLike,
    custom_translation_table: dict[Callable, Callable] | None = None,
    *,
    example_inputs: tuple | None = None,
    dynamic_shapes: dict[str, Any] | tuple[Any, ...] | list[Any] | None = None,
) -> None:
    """Export a captured model (or a graph module with its example inputs) to `path`.

    For a CapturedModel its example inputs, dynamic shapes and input/output names
    are used; for a bare GraphModule `example_inputs` is required and the
    dynamic shapes are taken from `dynamic_shapes`.
    """
    if isinstance(captured_or_graph_module, CapturedModel):
        captured = captured_or_graph_module
        graph_module = captured.graph_module
        example_inputs = captured.example_inputs
        dynamic_shapes = captured.dynamic_shapes
        input_names, output_names = captured.input_names, captured.output_names
    else:
        if example_inputs is None:
            raise TypeError("export_onnx needs example_inputs for a bare GraphModule")
        graph_module = captured_or_graph_module
        input_names = output_names = None
    model = to_onnx_model(graph_module, example_inputs, dynamic_shapes, input_names,
                          output_names, custom_translation_table)
    save_model(model, Path(path))


def to_onnx_model(
    graph_module: torch.fx.GraphModule,
    example_inputs: tuple,
    dynamic_shapes: dict[str, Any] | tuple[Any, ...] | list[Any] | None,
    input_names: list[str] | None,
    output_names: list[str] | None,
    custom_translation_table: dict[Callable, Callable] | None = None,
    optimize: bool = True,
) -> ir.Model:
    """Re-export `graph_module` and convert it to an in-memory ONNX IR model.

    optimize=False skips onnxscript's optimizer, which merges initializers of equal
    value; afmc's analog lowering needs every layer's weights and ranges kept apart.
    """
    program = torch.export.export(graph_module, example_inputs, dynamic_shapes=dynamic_shapes)
    onnx_program = _onnx_exporter.export(
        program,
        registry=_registry(tuple((custom_translation_table or {}).items())),
        input_names=input_names,
        output_names=output_names,
        optimize=optimize,
        opset_version=OPSET,
        verbose=False,
    )
    onnx_program.rename_axes(_axis_names(onnx_program.model, dynamic_shapes))
    return onnx_program.model


def _axis_names(
    model: ir.Model, dynamic_shapes: dict[str, Any] | tuple[Any, ...] | list[Any] | None
) -> dict[str, str]:
    """Map the ONNX inputs' symbolic axis names to the names of the spec's torch.export.Dims."""
    if dynamic_shapes is None:
        return {}
    specs = list(dynamic_shapes.values() if isinstance(dynamic_shapes, dict) else dynamic_shapes)
    if len(specs) != len(model.graph.inputs):
        return {}
    mapping: dict[str, str] = {}
    for value, spec in zip(model.graph.inputs, specs, strict=True):
        axes = spec.items() if isinstance(spec, dict) else enumerate(spec or ())
        for axis, dim in axes:
            symbol = value.shape[axis] if value.shape is not None else None
            named = isinstance(dim, torch.export.Dim) and isinstance(symbol, ir.SymbolicDim)
            if named and symbol.value:
                mapping.setdefault(symbol.value, dim.__name__)
    return mapping


@functools.cache
def _registry(translations: tuple[tuple[Callable, Callable], ...]) -> ONNXRegistry:
    """The exporter's op registry with `translations` registered, built once per process.

    torch.onnx.export(dynamo=True) builds it again on every call from onnxscript's
    torchlib, re-reading the source of ~500 functions: 1.6 s, most of the lowering of a
    small model. This is the registry it builds (torchlib at the exporter's opset, then
    the custom translations), given to the exporter torch.onnx.export itself calls;
    the exporter only reads it."""
    registry = ONNXRegistry.from_torchlib(opset_version=max(OPSET, TORCHLIB_OPSET))
    for torch_op, onnx_op in translations:
        registry.register_op(torch_op, onnx_op, is_complex=False)
    return registry


def initializer_bytes(model: ir.Model) -> int:
    """The bytes of the model's weights (its initializers), in memory or external."""
    return sum(value.const_value.nbytes for value in model.graph.initializers.values()
               if value.const_value is not None)


def save_model(model: ir.Model, path: Path) -> None:
    """Write `model` to `path` atomically and self-contained.

    Weights above 1 GiB in all go to `<name>.data` beside it; smaller models are written
    inline. Either way a weight the model read from another file's external data (an
    ONNX input exported with its weights beside it) is copied, so the written model
    never points outside its own folder.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    external = (f"{path.name}.data" if initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD_BYTES
                else None)
    if external is None:
        ir.external_data.load_to_model(model)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.tmp-") as tmp:
        staged = Path(tmp) / path.name
        ir.save(model, staged, external_data=external)
        if external:
            os.replace(Path(tmp) / external, path.parent / external)
        os.replace(staged, path)

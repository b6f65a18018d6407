"""Capture a PyTorch module as an FX GraphModule with torch.export.

`capture_module` runs `torch.export.export` (non-strict, torch's default) and
keeps the unlifted module of the ExportedProgram (`ExportedProgram.module()`):
a `torch.fx.GraphModule` whose parameters and buffers are `get_attr` nodes, so
FX passes can rewrite it and it can still be run, calibrated and trained.

Findings (torch 2.13) that the rest of afmc relies on:

- The graph holds only `placeholder`, `get_attr`, `call_function` (ATen ops such
  as `aten.linear.default`, `aten.conv2d.default`) and `output` nodes. It is
  unlifted with `check_guards=False`: the input-shape checks then run as a
  forward pre-hook instead of a `_guards_fn` call_module node in the graph.
- The module is captured in the mode it is in (call `.eval()` first for an
  inference graph: dropout disappears, batch norm uses running statistics).
  torch makes `train()` and `eval()` raise NotImplementedError on the unlifted
  module; gradients still reach its parameters, so hardware-aware training
  optimises `graph_module.parameters()` without toggling the mode.
- The graph module shares its parameter tensors with the original module
  (`fp_module`): a pass that changes a weight in place also changes the
  reference. Passes must install new tensors (or copy the module first).
- A hand-written linear layer, `x @ W.T (+ b)` (Falcon), is rewritten to
  `aten.linear` right after export (`afmc.capture.linear_form`), so it is
  found as a static-weight layer like any `nn.Linear`.
- Mutating the graph in place and calling `recompile()` keeps the pytree
  calling convention and the input checks; the graph module can then be
  exported again with `torch.export.export(graph_module, example_inputs,
  dynamic_shapes=dynamic_shapes)`, which is how it is lowered to ONNX
  (see `afmc.compiler.onnx_export`).
- An export failure surfaces as torch's exception from deep inside the tracer;
  `capture_module` turns it into a one-line `CaptureError` that names the
  submodule (from the traceback frames whose `self` is a submodule) and the
  source line (the innermost frame outside torch, numpy and the stdlib).
"""

from __future__ import annotations

import linecache
import os
import sysconfig
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import torch
from torch import nn
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from afmc.capture.linear_form import linearize_transposed_products
from afmc.data.kv_cache import KVCacheSpec
from afmc.io.user_errors import CaptureError, first_line

_LIBRARY_DIRS = tuple(
    str(Path(p).resolve()) + os.sep
    for p in (
        Path(torch.__file__).parent,
        Path(numpy.__file__).parent,
        sysconfig.get_paths()["stdlib"],
        Path(__file__).parent,
    )
)


@dataclass
class CapturedModel:
    """A traced model and what is needed to run, compare and export it again.

    Attributes:
        graph_module: the unlifted torch.export graph (parameters as get_attr nodes).
        example_inputs: the positional inputs it was traced with.
        dynamic_shapes: the dynamic-shape spec, in the form torch.export accepts.
        input_names: one name per graph input, for the ONNX file.
        output_names: one name per (flattened) graph output, for the ONNX file.
        source: where the model came from (e.g. "torch:MyNet", "hf:/models/llama").
        fp_module: the original module, for reference outputs (shares parameters
            with graph_module); None once a compile has taken its reference outputs
            and released it.
        kv_cache: the KV cache a causal LM takes and returns beside its data inputs and
            first output (afmc.data.kv_cache); its pasts are the last inputs.
    """

    graph_module: torch.fx.GraphModule
    example_inputs: tuple[Any, ...]
    dynamic_shapes: dict[str, Any] | tuple[Any, ...] | list[Any] | None
    input_names: list[str]
    output_names: list[str]
    source: str
    fp_module: nn.Module | None
    kv_cache: KVCacheSpec | None = None

    @property
    def data_inputs(self) -> int:
        """How many leading inputs carry data (all but the cache's pasts)."""
        return len(self.input_names) - (len(self.kv_cache.input_names) if self.kv_cache else 0)


def capture_module(
    module: nn.Module,
    example_inputs: tuple,
    dynamic_shapes: dict[str, Any] | tuple[Any, ...] | list[Any] | None = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
) -> CapturedModel:
    """Trace `module` with torch.export into a CapturedModel.

    Input names default to the forward's argument names, output names to
    "output" (one output) or "output_0", "output_1", ...

    Raises:
        CaptureError: torch.export cannot trace the module.
        ValueError: the number of names does not match the graph's inputs or outputs.
    """
    if not isinstance(example_inputs, tuple):
        raise TypeError(f"example_inputs must be a tuple, got {type(example_inputs).__name__}")
    try:
        program = torch.export.export(module, example_inputs, dynamic_shapes=dynamic_shapes)
    except Exception as exc:
        raise CaptureError(describe_export_failure(module, exc)) from exc
    graph_module = program.module(check_guards=False)
    linearize_transposed_products(graph_module)
    graph_inputs = [node.name for node in graph_module.graph.find_nodes(op="placeholder")]
    (flat_outputs,) = graph_module.graph.find_nodes(op="output")[0].args
    n_outputs = len(flat_outputs) if isinstance(flat_outputs, (tuple, list)) else 1
    if output_names is None:
        output_names = ["output"] if n_outputs == 1 else [f"output_{i}" for i in range(n_outputs)]
    _check_names("input", input_names, len(graph_inputs))
    _check_names("output", output_names, n_outputs)
    return CapturedModel(
        graph_module=graph_module,
        example_inputs=example_inputs,
        dynamic_shapes=dynamic_shapes,
        input_names=list(input_names or graph_inputs),
        output_names=list(output_names),
        source=f"torch:{type(module).__qualname__}",
        fp_module=module,
    )


def _check_names(kind: str, names: list[str] | None, expected: int) -> None:
    if names is not None and len(names) != expected:
        raise ValueError(f"{len(names)} {kind} names given, the graph has {expected} {kind}s")


def describe_export_failure(module: nn.Module, exc: BaseException) -> str:
    """One line naming the submodule, source line and reason of a torch.export failure."""
    names = {id(sub): name for name, sub in module.named_modules()}
    owner: nn.Module | None = None
    location = ""
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        candidate = frame.f_locals.get("self")
        if candidate is not None and id(candidate) in names:
            owner = candidate
        filename = frame.f_code.co_filename
        if not filename.startswith("<") and not str(Path(filename).resolve()).startswith(
            _LIBRARY_DIRS
        ):
            code = linecache.getline(filename, lineno).strip()
            location = f" at {Path(filename).name}:{lineno} `{code}`"
    where = ""
    if owner is not None:
        where = f" in module '{names[id(owner)] or '<root>'}' ({type(owner).__name__})"
    return f"cannot export {type(module).__name__}{where}{location}: {_reason(exc)}"


def _reason(exc: BaseException) -> str:
    text = first_line(exc)
    if isinstance(exc, GuardOnDataDependentSymNode):
        return f"data-dependent control flow on a tensor value ({text})"
    if ".numpy()" in text or "__array__" in text:
        return f"NumPy call on a tensor ({text})"
    return text

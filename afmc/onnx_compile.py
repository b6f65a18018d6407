"""ONNX input: compile an ONNX file for a target with ONNX-level passes.

compile_onnx() loads the file (capture.onnx_model), runs the target's ONNX
passes in order on the onnx_ir model (timing each; for aimc: upgrade the opset,
fold norms, place layers, insert afmc analog ops, calibrate through
onnxruntime), and, given an output directory, writes OUT/model.onnx (afmc
functions and the afmc record in its metadata) and OUT/afmc.json in the same
layout as the torch path, so runtime.open_chip and evaluation read it unchanged.
See docs/onnx-input.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

import afmc.passes  # noqa: F401  (registers the passes)
from afmc import lowering, ops
from afmc.capture.onnx_model import load_onnx_model
from afmc.config import AfmcConfig
from afmc.data.tensors import SUFFIXES as TENSOR_SUFFIXES
from afmc.data.tensors import load_tensor_batches
from afmc.data.text_source import read_text
from afmc.data.tokenizer import Tokenizer
from afmc.output_dir import staged_output
from afmc.passes.fx.fold_common import NOTES_KEY
from afmc.passes.layers import META_KEY, LayerRecord
from afmc.passes.onnx.place_layers import onnx_layer_records
from afmc.passes.registry import get_pass, resolve_passes
from afmc.record import StepTimer, build_record, write_outputs
from afmc.targets import get_target

Progress = Callable[[str], None]
Batch = dict[str, np.ndarray]
OnnxPassSpec = str | ir.passes.PassBase

CALIBRATE_PASS = "onnx-calibrate"


@dataclass
class OnnxCompileResult:
    """What compile_onnx() returns: the compiled model and its record."""

    model: ir.Model
    record: dict[str, Any]
    output: Path | None = None
    tokenizer: Tokenizer | None = field(default=None, repr=False)

    @property
    def layers(self) -> list[LayerRecord]:
        return onnx_layer_records(self.model)


def compile_onnx(
    path: str | os.PathLike,
    target: str = "aimc",
    config: AfmcConfig | None = None,
    calibration_batches: Sequence[Batch] | None = None,
    output: str | os.PathLike | None = None,
    force: bool = False,
    progress: Progress | None = None,
    *,
    passes: Sequence[OnnxPassSpec] | None = None,
    skip: Sequence[str] = (),
    tokenizer: Tokenizer | None = None,
    calibration_source: str | None = None,
) -> OnnxCompileResult:
    """Compile the ONNX file `path` for `target`; write OUT/model.onnx and OUT/afmc.json.

    `calibration_batches`: inputs of the model keyed by graph input name (needed by
    targets that calibrate, aimc). `passes` replaces the target's ONNX pass list
    (Target.onnx_passes) with registered ONNX pass names or your own onnx_ir passes; `skip`
    drops passes by name. `tokenizer` (a language model's) is recorded and saved beside
    the model so `afmc run` / `afmc eval` can read text; `calibration_source` names the
    calibration data in the record (default: "user batches").
    """
    config = config or AfmcConfig()
    chosen = get_target(target)
    steps = _resolve_passes(chosen.name, passes, skip)
    if CALIBRATE_PASS in steps and calibration_batches is None:
        raise ValueError(
            f"compiling an ONNX model for {chosen.name} needs calibration data: "
            "batches of the model's inputs keyed by input name"
        )
    timed = StepTimer(progress)
    timings = timed.timings
    with staged_output(output, force, [path]) as staged:
        model = timed("load", lambda: load_onnx_model(path))
        if any(node.domain == ops.DOMAIN for node in model.graph):
            raise ValueError(
                f"{path}: already compiled by afmc (it holds afmc nodes); compile the "
                "original model"
            )
        for name, spec in steps.items():
            if isinstance(spec, str):
                arguments = {"batches": calibration_batches} if name == CALIBRATE_PASS else {}
                spec = get_pass(name).factory(config, **arguments)
            result = timed(name, lambda step=spec, model=model: step(model))
            model = result.model
            timings[-1]["modified"] = bool(result.modified)
        if calibration_batches is not None and calibration_source is None:
            calibration_source = "user batches"
        record = _record(
            chosen.name, Path(path), model, config, timings, calibration_source, tokenizer
        )
        if calibration_batches and chosen.name != "fp" and config.calibration.held_back > 0:
            from afmc.eval.fidelity import onnx_fidelity

            batches = list(calibration_batches)[:1]
            record["fidelity"] = timed("fidelity", lambda: onnx_fidelity(
                model, record, config.noise, batches))
        lowering.set_metadata(model, {k: v for k, v in record.items() if k != "passes"})
        compiled = OnnxCompileResult(model, record, None, tokenizer)
        if staged is not None:
            timed.progress("write")
            write_outputs(staged, compiled.model, compiled.record, compiled.tokenizer)
            compiled.output = Path(output)
        return compiled


def _resolve_passes(
    target: str, passes: Sequence[OnnxPassSpec] | None, skip: Sequence[str]
) -> dict[str, OnnxPassSpec]:
    """The passes of a compile by step name: `passes` or the target's, less `skip`."""
    chosen = get_target(target)
    if passes is None and chosen.onnx_passes is None:
        raise ValueError(f"target {target!r} does not take ONNX input")
    steps: dict[str, OnnxPassSpec] = {}
    for spec in resolve_passes(chosen.onnx_passes or (), passes, skip, level="onnx"):
        name = spec if isinstance(spec, str) else type(spec).__name__
        if name in steps:
            raise ValueError(f"pass {name!r} is listed twice")
        steps[name] = spec
    return steps


def _record(
    target: str,
    path: Path,
    model: ir.Model,
    config: AfmcConfig,
    timings: list[dict[str, Any]],
    calibration_source: str | None,
    tokenizer: Tokenizer | None,
) -> dict[str, Any]:
    return build_record(
        target=target, source=f"onnx:{path}", inputs=_input_names(model),
        outputs=[value.name for value in model.graph.outputs],
        layers=onnx_layer_records(model), config=config, timings=timings,
        calibration_source=calibration_source, tokenizer=tokenizer,
        fold_notes=model.meta.get(NOTES_KEY, []), dependencies=analog_dependencies(model),
    )


def _input_names(model: ir.Model) -> list[str]:
    return [
        value.name for value in model.graph.inputs if value.name not in model.graph.initializers
    ]


def analog_dependencies(model: ir.Model) -> list[tuple[str, str]]:
    """(producer, consumer) pairs of analog layers, consumers in graph order.

    The rule of mapping.analog_dependencies on the ONNX graph: layer B depends on layer A
    when A's output reaches B's input through digital nodes only.
    """
    reaching: dict[ir.Value, frozenset[str]] = {}
    edges: list[tuple[str, str]] = []
    for node in model.graph:
        sources: set[str] = set()
        for value in node.inputs:
            if value is None:
                continue
            produced = _analog_name(value.producer())
            sources |= {produced} if produced is not None else reaching.get(value, frozenset())
        name = _analog_name(node)
        if name is not None:
            edges.extend((source, name) for source in sorted(sources))
        for output in node.outputs:
            reaching[output] = frozenset(sources)
    return edges


def _analog_name(node: ir.Node | None) -> str | None:
    record = node.meta.get(META_KEY) if node is not None else None
    return record.name if record is not None and record.placement == "analog" else None


def onnx_input_names(path: str | os.PathLike) -> list[str]:
    """The graph input names of an ONNX file (external weights are not read)."""
    return _input_names(load_onnx_model(path))


def calibration_from_file(
    source: str | os.PathLike,
    input_names: Sequence[str],
    config: AfmcConfig,
    tokenizer: Tokenizer | None = None,
) -> list[Batch]:
    """Calibration batches for an ONNX model from a file, as on the torch path.

    A tensor file (.npy for a single input, .npz keyed by input name, .pt;
    data.tensors.load_tensor_batches), or text for a language model with a single
    token-id input, tokenized with `tokenizer` into windows (api.text_batches).
    """
    from afmc.api import text_batches

    if Path(source).suffix in TENSOR_SUFFIXES:
        batches = load_tensor_batches(
            Path(source), list(input_names), config.calibration.batch_size
        )
    elif tokenizer is None:
        raise ValueError(f"{source}: text calibration of an ONNX model needs a tokenizer")
    elif len(input_names) != 1:
        raise ValueError(
            f"{source}: text feeds a model with one token-id input; this one has inputs "
            f"{', '.join(input_names)} (give a .npz keyed by input name)"
        )
    else:
        batches = text_batches(tokenizer, read_text(source), str(source), config.calibration)
    return [
        {name: np.asarray(tensor) for name, tensor in zip(input_names, batch, strict=True)}
        for batch in batches
    ]


def is_onnx_file(model: object) -> bool:
    """Whether a model argument names an ONNX file (by its .onnx suffix)."""
    return isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(".onnx")

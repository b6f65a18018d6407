"""The Python API: afmc.compile() and afmc.load().

compile() captures a model (built-in name, Hugging Face directory, or nn.Module
with example inputs), runs the target's FX passes in order (timing each), lowers
the program to ONNX with afmc ops, and, given an output directory, writes
OUT/model.onnx and OUT/afmc.json atomically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from torch import fx, nn
from torch.fx.passes.infra.pass_base import PassResult

import afmc.passes  # noqa: F401  (registers the passes)
from afmc import lowering
from afmc.capture import CapturedModel, capture_module, capture_pretrained
from afmc.config import AfmcConfig, CalibrationConfig, config_from_dict
from afmc.data.tensors import SUFFIXES as TENSOR_SUFFIXES
from afmc.data.tensors import load_tensor_batches
from afmc.data.text_source import read_text
from afmc.data.tokenizer import (
    ByteTokenizer,
    HFTokenizer,
    Tokenizer,
    load_tokenizer,
    text_feeds,
)
from afmc.eval.perplexity import token_windows
from afmc.layout import TOKENIZER_DIR
from afmc.mapping import analog_dependencies
from afmc.models import BUILTIN_MODELS, model_paths, resolve_model_path
from afmc.onnx_compile import (
    OnnxCompileResult,
    calibration_from_file,
    compile_onnx,
    is_onnx_file,
    onnx_input_names,
)
from afmc.output_dir import staged_output
from afmc.passes.fx.learned_ranges import META_RANGES
from afmc.passes.layers import LayerRecord, layer_records
from afmc.passes.registry import PassSpec, get_pass, resolve_passes
from afmc.passes.verify import VerificationError, check_graph, output_drift
from afmc.record import StepTimer, build_record, write_outputs
from afmc.runtime.chip import Chip, load_record, open_chip
from afmc.targets import LowerContext, Target, get_target
from afmc.train.trained_model import TRAINING_RECORD, read_learned_ranges, trained_config

Progress = Callable[[str], None]


@dataclass
class CompileResult:
    """What compile() returns: the torch-level program, the lowered model, the record."""

    program: fx.GraphModule
    model: ir.Model
    record: dict[str, Any]
    output: Path | None = None
    tokenizer: Tokenizer | None = field(default=None, repr=False)
    files: dict[str, ir.Model] = field(default_factory=dict, repr=False)  # written beside it

    @property
    def layers(self) -> list[LayerRecord]:
        return layer_records(self.program)


def text_batches(tokenizer: Tokenizer, text: str, source: str,
                 calibration: CalibrationConfig) -> list[tuple[torch.Tensor]]:
    """Calibration batches of token windows from `text` (at most calibration.max_tokens)."""
    return split_text(tokenizer, text, source, calibration, held_back=0)[0]


def split_text(tokenizer: Tokenizer, text: str, source: str, calibration: CalibrationConfig,
               held_back: int) -> tuple[list[tuple[torch.Tensor]], list[tuple[torch.Tensor]]]:
    """(calibration batches, held-back batch) of token windows from `text`.

    The calibration windows cover at most calibration.max_tokens; the held-back batch
    has `held_back` windows for the fidelity check: the windows after max_tokens, or,
    when the text ends before, the last calibration windows (one at least stays).
    """
    ids = tokenizer.encode(text)
    if ids.size < 2:
        raise ValueError(f"{source}: calibration text is empty (needs at least 2 tokens)")
    seq_len = min(calibration.seq_len, int(ids.size))
    windows = token_windows(ids, seq_len, calibration.max_tokens + held_back * seq_len)
    count = min(len(windows), max(1, calibration.max_tokens // seq_len))
    if held_back and count == len(windows):
        count = max(1, count - held_back)
    size = calibration.batch_size
    batches = [(torch.from_numpy(windows[i:min(i + size, count)]),)
               for i in range(0, count, size)]
    held = [(torch.from_numpy(windows[count:]),)] if count < len(windows) else []
    return batches, held


def _default_calibration_text(model: str) -> tuple[str, str]:
    if model in BUILTIN_MODELS:
        from afmc.data.corpus import stdlib_text

        return stdlib_text("calibration"), "afmc-tiny calibration text (stdlib training files)"
    raise ValueError(f"{model}: no calibration data; pass --calib FILE (text the model reads)")


def _capture(model: Any, example_inputs: tuple | None) -> tuple[CapturedModel, Path | None]:
    if isinstance(model, CapturedModel):
        return model, None
    if isinstance(model, nn.Module):
        if example_inputs is None:
            raise ValueError("compile(nn.Module) needs example_inputs")
        return capture_module(model, example_inputs), None
    path = resolve_model_path(str(model))
    return capture_pretrained(path), path


def _calibration_batches(model: Any, captured: CapturedModel, tokenizer: Tokenizer | None,
                         calibration: Any, config: AfmcConfig,
                         ) -> tuple[list[tuple], list[tuple], str]:
    """(calibration batches, held-back batches, source): given batches, a tensor file, or
    text (language models; only text has batches held back for the fidelity check)."""
    if calibration is not None and not isinstance(calibration, (str, Path)):
        return list(calibration), [], "user batches"
    if calibration is not None and Path(calibration).suffix in TENSOR_SUFFIXES:
        batches = load_tensor_batches(Path(calibration), list(captured.input_names),
                                      config.calibration.batch_size)
        return batches, [], str(calibration)
    if tokenizer is None:
        raise ValueError("calibration data for a module: input tuples or a .npy/.npz/.pt file")
    if calibration is None:
        text, source = _default_calibration_text(str(model))
    else:
        text, source = read_text(calibration), str(calibration)
    batches, held = split_text(tokenizer, text, source, config.calibration,
                               config.calibration.held_back)
    names = list(captured.input_names)

    def feeds(windows: list[tuple]) -> list[tuple]:
        return [tuple(map(torch.from_numpy, text_feeds(ids.numpy(), names)))
                for (ids,) in windows]

    return feeds(batches), feeds(held), source


def compile(  # noqa: A001  (the verb users expect: afmc.compile)
    model: Any,
    target: str = "aimc",
    config: AfmcConfig | None = None,
    *,
    calibration: Any = None,
    example_inputs: tuple | None = None,
    output: Path | None = None,
    force: bool = False,
    passes: list[PassSpec] | None = None,
    skip: list[str] | tuple[str, ...] = (),
    verify: bool = False,
    save_intermediate: bool = False,
    tokenizer: str | Path | None = None,
    progress: Progress | None = None,
    recalibrate: bool = False,
) -> CompileResult | OnnxCompileResult:
    """Compile `model` for `target`; write OUT/model.onnx and OUT/afmc.json if `output`.

    `model`: a built-in name (afmc-tiny), a Hugging Face causal-LM directory, an
    nn.Module (with `example_inputs`) or a CapturedModel. `calibration`: a text
    file (language models; default for afmc-tiny: its calibration text) or an
    iterable of input tuples. `passes` replaces the target's FX pass list (names, or
    your own pass objects: callables taking and returning a GraphModule / PassResult),
    `skip` drops passes by name. After every pass the graph is checked
    (passes.verify.check_graph); with `verify`, the output drift to the FP model is
    measured per pass and a pass that must preserve the output but does not is an
    error naming it. `save_intermediate` saves the program after each pass as
    OUT/intermediate/NN-name.pt2 (torch.export.load; import afmc first).

    A model trained by `afmc train` (its directory holds learned input ranges) compiles
    for aimc with those ranges and the target's trained pass list, and with the trained
    configuration when `config` is None; `recalibrate` calibrates it as any other model.

    An ONNX file (`*.onnx`) goes through the ONNX passes instead (onnx_compile);
    `tokenizer` (a directory, or "bytes") tokenizes text calibration for it.
    """
    config = config or _trained_or_default_config(model)
    if is_onnx_file(model):
        if verify or save_intermediate:
            raise ValueError("--verify and --save-intermediate apply to the torch path, "
                             "not to ONNX input")
        return _compile_onnx_file(Path(model), target, config, calibration, tokenizer,
                                  output, force, passes, skip, progress)
    chosen = get_target(target)
    timed = StepTimer(progress)
    timings = timed.timings
    with staged_output(output, force, model_paths(model)) as staged:
        captured, model_dir = timed("capture", lambda: _capture(model, example_inputs))
        lm_tokenizer = load_tokenizer(model_dir) if model_dir is not None else None
        learned = None if recalibrate else read_learned_ranges(model_dir)
        default_passes = chosen.fx_passes
        if learned is not None and chosen.trained_fx_passes is not None:
            default_passes = chosen.trained_fx_passes
            captured.graph_module.meta[META_RANGES] = learned
        steps = resolve_passes(default_passes, passes, skip)
        batches, held, calibration_source = None, [], None
        uses_data = any(isinstance(step, str) and get_pass(step).uses_calibration
                        for step in steps)
        checks = chosen.name != "fp" and config.calibration.held_back > 0 and (
            calibration is not None or str(model) in BUILTIN_MODELS)
        if checks or (chosen.calibrates(config) and (uses_data or chosen.post_lower)):
            batches, held, calibration_source = _calibration_batches(
                model, captured, lm_tokenizer, calibration, config)
        program = captured.graph_module
        reference = _reference_output(captured) if verify else None
        for index, spec in enumerate(steps, 1):
            name = spec if isinstance(spec, str) else type(spec).__name__
            if isinstance(spec, str):
                arguments = {"batches": batches} if get_pass(spec).uses_calibration else {}
                spec = get_pass(spec).factory(config, **arguments)
            outcome = timed(name, lambda spec=spec, program=program: spec(program))
            program = outcome.graph_module if isinstance(outcome, PassResult) else outcome
            timings[-1]["modified"] = bool(getattr(outcome, "modified", True))
            check_graph(program, name)
            if reference is not None:
                drift = output_drift(program, captured.example_inputs, reference)
                timings[-1]["output_drift"] = drift
                if getattr(spec, "preserves_output", False) and drift > PRESERVE_TOLERANCE:
                    raise VerificationError(f"pass {name} must not change the output but "
                                            f"moved it by {drift:.2e} (relative L2)")
            if save_intermediate and staged is not None:
                _save_intermediate(program, captured, staged, index, name)
        lowered = timed("lower", lambda: lowering.export_program(
            program, captured.example_inputs, captured.dynamic_shapes, captured.input_names,
            captured.output_names))
        context = LowerContext(lowered, config, layer_records(program), batches, captured)
        if chosen.post_lower is not None:
            lowered = timed(f"lower-{chosen.name}", lambda: chosen.post_lower(context))
        record = _record(chosen.name, captured, program, lowered, config, timings,
                         calibration_source, lm_tokenizer)
        record.update(context.record)
        if checks:
            record["fidelity"] = timed("fidelity", lambda: _fidelity(
                chosen, captured, program, lowered, config, held or batches[:1], bool(held)))
        lowering.set_metadata(lowered, {k: v for k, v in record.items() if k != "passes"})
        result = CompileResult(program, lowered, record, None, lm_tokenizer, context.files)
        if staged is not None:
            timed.progress("write")
            write_outputs(staged, result.model, result.record, result.tokenizer, result.files)
            result.output = Path(output)
        return result


PRESERVE_TOLERANCE = 1e-5


def _trained_or_default_config(model: Any) -> AfmcConfig:
    """The configuration a model directory was trained with (afmc train), else the defaults."""
    if isinstance(model, (str, Path)) and Path(model).is_dir():
        trained = trained_config(Path(model))
        if trained is not None:
            return config_from_dict(trained, str(Path(model) / TRAINING_RECORD))
    return AfmcConfig()


def _fidelity(target: Target, captured: CapturedModel, program: fx.GraphModule,
              lowered: ir.Model, config: AfmcConfig, batches: list[tuple],
              held_back: bool) -> dict[str, Any]:
    """The compile's fidelity check (afmc.eval.fidelity) on the held-back batches."""
    from afmc.eval.fidelity import check_fidelity, onnx_outputs, program_checks, torch_outputs

    fp = torch_outputs(captured.fp_module)
    if target.post_lower is None:  # the analog torch program computes what the file does
        chip, worst = program_checks(program, config.noise, batches[0])
        return check_fidelity(fp, torch_outputs(program), batches, held_back, chip=chip,
                              worst_layers=worst)
    return check_fidelity(fp, onnx_outputs(lowered, captured.input_names), batches, held_back)


def _onnx_tokenizer(model: Path, tokenizer: str | Path | None) -> Tokenizer | None:
    """The tokenizer for text calibration of an ONNX model: as given, or its folder's."""
    if tokenizer == "bytes":
        return ByteTokenizer()
    if tokenizer is not None:
        return load_tokenizer(Path(tokenizer))
    try:
        return load_tokenizer(model.parent)
    except ValueError:
        return None


def _compile_onnx_file(model: Path, target: str, config: AfmcConfig, calibration: Any,
                       tokenizer: str | Path | None, output: Path | None, force: bool,
                       passes: list | None, skip: list[str] | tuple[str, ...],
                       progress: Progress | None) -> OnnxCompileResult:
    tok = _onnx_tokenizer(model, tokenizer)
    batches, source = None, None
    if calibration is not None:
        names = onnx_input_names(model)
        if isinstance(calibration, (str, Path)):
            batches = calibration_from_file(calibration, names, config, tok)
            source = str(calibration)
        else:
            batches = [batch if isinstance(batch, dict) else
                       {name: np.asarray(t) for name, t in zip(names, batch, strict=True)}
                       for batch in calibration]
            source = "user batches"
    return compile_onnx(model, target, config, batches, output, force, progress,
                        passes=passes, skip=skip, tokenizer=tok, calibration_source=source)


def _reference_output(captured: CapturedModel) -> torch.Tensor:
    with torch.no_grad():
        output = captured.graph_module(*captured.example_inputs)
    return output[0] if isinstance(output, (tuple, list)) else output


def _save_intermediate(program: fx.GraphModule, captured: CapturedModel, staged: Path,
                       index: int, name: str) -> None:
    folder = staged / "intermediate"
    folder.mkdir(exist_ok=True)
    exported = torch.export.export(program, captured.example_inputs,
                                   dynamic_shapes=captured.dynamic_shapes)
    torch.export.save(exported, folder / f"{index:02d}-{name}.pt2")


def _onnx_names(program: fx.GraphModule, lowered: ir.Model) -> None:
    """Fill each analog record with the ONNX initializer names of its weight and ranges."""
    by_range = {}
    for node in lowering.analog_nodes(lowered):
        weight = lowering.source_initializer(node.inputs[1])
        by_range[node.inputs[2].name] = weight.name
    for record in layer_records(program):
        if record.placement == "analog" and record.input_range:
            record.onnx_input_range = record.input_range
            record.onnx_weight = by_range.get(record.input_range, "")
            if not record.onnx_weight:
                raise RuntimeError(f"lowering lost the analog layer {record.name}")


def _record(target: str, captured: CapturedModel, program: fx.GraphModule, lowered: ir.Model,
            config: AfmcConfig, timings: list[dict], calibration_source: str | None,
            tokenizer: Tokenizer | None) -> dict[str, Any]:
    _onnx_names(program, lowered)
    return build_record(
        target=target, source=captured.source, inputs=list(captured.input_names),
        outputs=list(captured.output_names), layers=layer_records(program), config=config,
        timings=timings, calibration_source=calibration_source, tokenizer=tokenizer,
        fold_notes=program.meta.get("afmc_fold_notes", []),
        dependencies=analog_dependencies(program),
    )


def load_tokenizer_for(out_dir: Path) -> Tokenizer:
    """The tokenizer a compiled language model was compiled with."""
    kind = load_record(out_dir).get("tokenizer")
    if kind == "bytes":
        return ByteTokenizer()
    if kind == TOKENIZER_DIR:
        from transformers import AutoTokenizer

        return HFTokenizer(AutoTokenizer.from_pretrained(out_dir / TOKENIZER_DIR,
                                                         local_files_only=True))
    raise ValueError(f"{out_dir}: compiled model has no tokenizer (not a language model)")


def load(out_dir: str | Path, seed: int | None = 0, **options: Any) -> Chip:
    """Open a compiled model (OUT of afmc compile) as chip `seed`; see runtime.chip.open_chip."""
    return open_chip(Path(out_dir), seed, **options)

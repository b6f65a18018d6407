"""The Python API: afmc.compile() and afmc.load().

compile() is the one compile pipeline: any model (built-in name, Hugging Face
directory, GGUF or ONNX file, nn.Module) through its front end (afmc.frontends),
calibration data checked against the model's inputs (afmc.data.calibration), the
target's passes in order (timing each), lowering to ONNX with afmc ops, the
target's post-lowering step, and, given an output directory, OUT/model.onnx and
OUT/afmc.json written atomically. load() opens a compiled model as a chip.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir
from torch import fx

import afmc.passes  # noqa: F401  (registers the passes)
from afmc import lowering
from afmc.config import AfmcConfig, config_from_dict
from afmc.data.calibration import (
    CalibrationData,
    SyntheticCalibrationWarning,
    input_ranges,
    load_calibration,
    synthetic_calibration,
)
from afmc.data.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer
from afmc.frontends import Frontend, is_onnx_file, open_frontend
from afmc.models import BUILTIN_CALIBRATION, model_paths
from afmc.output_dir import staged_output
from afmc.passes.layers import LayerRecord
from afmc.passes.registry import PassSpec, get_pass, resolve_passes
from afmc.quiet import libraries_quiet
from afmc.record import StepTimer, build_record, write_outputs
from afmc.runtime.compiled import CompiledModel, load  # noqa: F401  (afmc.api.load)
from afmc.targets import LowerContext, Target, get_target
from afmc.train.trained_model import TRAINING_RECORD, trained_config

Progress = Callable[[str], None]


class NoAcceleratedLayersWarning(UserWarning):
    """A compile for an accelerator target put no layer on the accelerator."""


@dataclass
class CompileResult:
    """What compile() returns: the lowered model, its record and layers, and for the
    torch front end the program after the passes."""

    model: ir.Model
    record: dict[str, Any]
    layers: list[LayerRecord]
    program: fx.GraphModule | None = None
    output: Path | None = None
    tokenizer: Tokenizer | None = field(default=None, repr=False)
    files: dict[str, ir.Model] = field(default_factory=dict, repr=False)  # written beside it


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
    tokenizer: str | Path | Tokenizer | None = None,
    progress: Progress | bool | None = True,
    recalibrate: bool = False,
    verbose: bool = False,
) -> CompileResult:
    """Compile `model` for `target`; write OUT/model.onnx and OUT/afmc.json if `output`.

    One pipeline for every front end and target: open the front end (frontends), read
    the calibration data against the model's input signature (data.calibration), run the
    passes in order (timing each), lower to ONNX, run the target's post-lowering step,
    build the record, check fidelity, and publish OUT atomically.

    `model`: a built-in name (afmc-tiny), a Hugging Face directory, a GGUF file, an ONNX
    file (`*.onnx`), an nn.Module (with `example_inputs`; its batch axis is dynamic) or
    a CapturedModel. `calibration`: a text file or stdlib:SPLIT (text models; default
    for a built-in model: its own text), a tensor file (.npy/.npz/.pt), or an iterable
    of input batches (tuples in input order, or dicts by input name); without it,
    targets that calibrate use synthetic inputs drawn from the input signature, with a
    SyntheticCalibrationWarning. `tokenizer` (a directory, "bytes" or a Tokenizer)
    replaces the model's for text. `passes` replaces the target's pass list (registered
    names of the front end's level, or your own pass objects), `skip` drops passes by
    name. After every FX pass the graph is checked (passes.verify.check_graph); with
    `verify` (torch front end), the output drift to the FP model is measured per pass
    and a pass that must preserve the output but does not is an error naming it.
    `save_intermediate` saves the program after each pass as
    OUT/intermediate/NN-name.pt2 (torch.export.load; import afmc first).

    `output` may not be, hold or lie inside the model, calibration or tokenizer files it
    reads (output_dir.check_output, before any work).

    A model trained by `afmc train` (its directory, or an ONNX file's folder, holds
    learned input ranges) compiles for aimc with those ranges and the target's trained
    pass list, and with the trained configuration when `config` is None; `recalibrate`
    calibrates it as any other model.

    `progress`: True (default) shows the current step on stderr (a spinner in a terminal,
    lines with the elapsed time elsewhere, after the first 5 s), a callable receives each
    step's name, False or None is silent. The libraries' own messages (transformers'
    logs, torch.onnx notices, FutureWarnings) are hidden during the call, as on the
    command line, unless `verbose`.
    """
    with libraries_quiet(verbose), _announcer(progress) as announce:
        return _compile(model, target, config, calibration=calibration,
                        example_inputs=example_inputs, output=output, force=force,
                        passes=passes, skip=skip, verify=verify,
                        save_intermediate=save_intermediate, tokenizer=tokenizer,
                        progress=announce, recalibrate=recalibrate)


@contextlib.contextmanager
def _announcer(progress: Progress | bool | None) -> Iterator[Progress | None]:
    """The step callback of `compile`'s `progress` argument (see there)."""
    if callable(progress):
        yield progress
    elif progress:
        from afmc.screen import Screen

        with Screen().status("compiling") as status:
            yield lambda step: status.update(f"compiling: {step}")
    else:
        yield None


def _compile(model: Any, target: str, config: AfmcConfig | None, *, calibration: Any,
             example_inputs: tuple | None, output: Path | None, force: bool,
             passes: list[PassSpec] | None, skip: list[str] | tuple[str, ...], verify: bool,
             save_intermediate: bool, tokenizer: str | Path | Tokenizer | None,
             progress: Progress | None, recalibrate: bool) -> CompileResult:
    config = config or _trained_or_default_config(model)
    chosen = get_target(target)
    timed = StepTimer(progress)
    read = [*model_paths(model), *(Path(path) for path in (calibration, tokenizer)
                                   if isinstance(path, (str, Path)))]
    with staged_output(output, force, read) as staged:
        frontend = timed("load" if is_onnx_file(model) else "capture",
                         lambda: open_frontend(model, example_inputs,
                                               tokenizer=resolve_tokenizer(tokenizer),
                                               recalibrate=recalibrate, verify=verify,
                                               save_intermediate=save_intermediate))
        steps = pass_steps(frontend, chosen, passes, skip)
        data = _calibration(frontend, chosen, config, steps, model, calibration)
        checks_fidelity = data is not None and not data.synthetic and _checks_fidelity(chosen,
                                                                                      config)
        if checks_fidelity:
            timed("fp-reference", lambda: frontend.hold_reference(data))
        else:
            frontend.hold_reference(None)
        for spec in steps:
            name = spec if isinstance(spec, str) else type(spec).__name__
            outcome = timed(name, lambda spec=spec: frontend.run_pass(spec, config, data, staged))
            timed.timings[-1].update(outcome)
        lowered = timed("lower", frontend.lower)
        layers = frontend.layers()
        _warn_if_nothing_accelerated(frontend, chosen, layers)
        context = LowerContext(lowered, config, layers, data.batches if data else None)
        if chosen.post_lower is not None:
            lowered = timed(f"lower-{chosen.name}", lambda: chosen.post_lower(context))
        record = build_record(target=chosen.name, runtime=chosen.runtime,
                              source=frontend.source, layers=layers, config=config,
                              timings=timed.timings,
                              calibration_source=data.source if data else None,
                              tokenizer=frontend.tokenizer(),
                              max_positions=frontend.signature.max_positions,
                              **frontend.record_fields())
        record.update(context.record)
        if data is not None and not data.synthetic:
            record["calibration_inputs"] = input_ranges(data.batches)
        if checks_fidelity:
            record["fidelity"] = timed("fidelity", lambda: frontend.fidelity(
                chosen, lowered, record, config, data))
        lowering.set_metadata(lowered, {k: v for k, v in record.items() if k != "passes"})
        result = CompileResult(lowered, record, layers, frontend.program, None,
                               frontend.tokenizer(), context.files)
        if staged is not None:
            timed.progress("write")
            write_outputs(staged, result.model, result.record, result.tokenizer, result.files)
            result.output = Path(output)
        return result


def resolve_tokenizer(tokenizer: str | Path | Tokenizer | None) -> Tokenizer | None:
    """The tokenizer `tokenizer` names: a directory, "bytes", or one given as it is."""
    if tokenizer is None or not isinstance(tokenizer, (str, Path)):
        return tokenizer
    return ByteTokenizer() if str(tokenizer) == "bytes" else load_tokenizer(Path(tokenizer))


def pass_steps(frontend: Frontend, target: Target, passes: list[PassSpec] | None,
               skip: list[str] | tuple[str, ...]) -> list[PassSpec]:
    """The passes a compile runs: the front end's list for the target, or `passes`, less
    `skip`; a pass listed twice is an error."""
    steps = resolve_passes(frontend.default_passes(target), passes, skip, level=frontend.level)
    names = [spec if isinstance(spec, str) else type(spec).__name__ for spec in steps]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"pass {twice[0]!r} is listed twice")
    return steps


def _checks_fidelity(target: Target, config: AfmcConfig) -> bool:
    return target.name != "fp" and config.calibration.held_back > 0


def _calibration(frontend: Frontend, target: Target, config: AfmcConfig,
                 steps: list[PassSpec], model: Any, given: Any) -> CalibrationData | None:
    """The compile's calibration data: the given data, a built-in model's own text, or
    (when the target needs data and none is given) synthetic inputs, with a warning."""
    uses_data = any(isinstance(step, str) and get_pass(step).uses_calibration
                    for step in steps)
    needs = target.calibrates(config) and (uses_data or target.post_lower is not None)
    if given is None and isinstance(model, str) and model in BUILTIN_CALIBRATION:
        given = BUILTIN_CALIBRATION[model]
    if given is None:
        if not needs:
            return None
        data = synthetic_calibration(frontend.signature, config.calibration)
        warnings.warn(f"{frontend.name}: no calibration data; input "
                      "ranges come from synthetic inputs drawn from the input signature "
                      "(pass --calib FILE for real ranges)", SyntheticCalibrationWarning,
                      stacklevel=3)
        return data
    if not needs and not _checks_fidelity(target, config):
        return None

    def text_tokenizer() -> Tokenizer:
        found = frontend.tokenizer()
        if found is None:
            raise ValueError(f"{given}: text calibration needs a tokenizer and "
                             f"{frontend.name} has none (pass --tokenizer "
                             "DIR, or tensors: .npy/.npz/.pt)")
        return found

    held_back = config.calibration.held_back if _checks_fidelity(target, config) else 0
    return load_calibration(given, frontend.signature, config.calibration, text_tokenizer,
                            held_back)


def _warn_if_nothing_accelerated(frontend: Frontend, target: Target,
                                 layers: list[LayerRecord]) -> None:
    if target.name == "fp" or any(layer.placement == "analog" for layer in layers):
        return
    found = (f"all {len(layers)} static-weight layers are placed digital" if layers
             else "it has no MatMul, Gemm or Conv with a constant weight")
    warnings.warn(f"{frontend.name}: no layer runs on the {target.name} "
                  f"target: {found}; the output computes as the FP model",
                  NoAcceleratedLayersWarning, stacklevel=3)


def training_folder(model: Any) -> Path | None:
    """The folder where `afmc train` leaves its outputs beside `model`: a model directory
    itself, an ONNX file's folder; None for any other model argument."""
    if is_onnx_file(model):
        return Path(model).parent
    if isinstance(model, (str, Path)) and Path(model).is_dir():
        return Path(model)
    return None


def _trained_or_default_config(model: Any) -> AfmcConfig:
    """The configuration `model` was trained with (afmc train), else the defaults."""
    folder = training_folder(model)
    trained = trained_config(folder)
    if trained is None:
        return AfmcConfig()
    return config_from_dict(trained, str(folder / TRAINING_RECORD))

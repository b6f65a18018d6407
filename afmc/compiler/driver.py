"""The compile driver: one model through the named steps, for every front end and target.

Rule: a compile is the steps of STEPS, in order, each a function of the compile's state
(CompileState), none of which depends on the front end or target beyond what
compiler.frontends.base.Frontend and targets.Target say:

  capture       open the front end: a torch program (built-in name, Hugging Face
                directory, GGUF, nn.Module) or an ONNX graph (*.onnx); the pass list
  data          calibration data read against the model's input signature, and the FP
                outputs the fidelity check compares with, taken before any pass
  passes        the pass list in order, each timed under its name (a pass that
                reports progress, calibrate, shows its batches: "calibrate: batch 3/8")
  lower         the graph as ONNX with the afmc ops (the layer records read from it)
  target-lower  the target's post-lowering step (int8/int4 quantization), and the record
  fidelity      the lowered model against FP on held-back calibration data
  write         OUT/model.onnx, OUT/afmc.json and the tokenizer, published atomically

`to_step` stops after the named step: OUT then holds OUT/afmc.json (the steps run, their
times, "to_step", the target and configuration) and the model as that step left it in
OUT/intermediate/STEP.pt2 (torch.export.load; a torch program before lowering) or
STEP.onnx; with `save_intermediate` the graph after every pass is saved beside it as
NN-PASS.pt2/.onnx. A graph saved before lowering has its layer records beside it
(STEP.json, compiler.checkpoint).

`from_step` "lower" resumes the compile that `to_step` "passes" stopped in OUT: capture
and data run again (seconds: they hold nothing a later step needs but the front end
and the FP outputs), the passes are not run but their graph is read back from
OUT/intermediate/passes.* with its records, and the steps from lower on run as in an
uninterrupted compile, whose OUT replaces the stopped one. The stopped compile must be
of the same model, target and configuration. A compile resumes only there: the passes
are the steps that take long (minutes on a real LLM), the ones after them seconds.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir
from torch import fx

import afmc.passes  # noqa: F401  (registers the passes)
from afmc.compiler import lowering
from afmc.compiler.fidelity import fidelity_batches, lowered_fidelity
from afmc.compiler.frontends import Frontend, is_onnx_file, open_frontend
from afmc.compiler.onnx_export import save_model
from afmc.compiler.record import StepTimer, build_record, write_outputs, write_record
from afmc.config import AfmcConfig
from afmc.data.calibration import (
    CalibrationData,
    SyntheticCalibrationWarning,
    input_ranges,
    load_calibration,
    synthetic_calibration,
)
from afmc.data.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer
from afmc.io.layout import RECORD_FILE
from afmc.io.output_dir import staged_output
from afmc.models import BUILTIN_CALIBRATION, model_paths
from afmc.passes.layers import LayerRecord
from afmc.passes.registry import PassSpec, get_pass, pass_name, resolve_passes
from afmc.targets import LowerContext, Target

STEPS = ("capture", "data", "passes", "lower", "target-lower", "fidelity", "write")
RESUMES_AT = "lower"  # the one step a compile resumes at (module docstring)
INTERMEDIATE_DIR = "intermediate"
RERUN_ON_RESUME = ("capture", "load", "fp-reference")  # timings of the re-run steps

Progress = Callable[[str], None]


class NoAcceleratedLayersWarning(UserWarning):
    """A compile for an accelerator target put no layer on the accelerator."""


@dataclass
class CompileResult:
    """What compile() returns: the lowered model, its record and layers, and for the
    torch front end the program after the passes (model None when stopped before lower)."""

    model: ir.Model | None
    record: dict[str, Any]
    layers: list[LayerRecord]
    program: fx.GraphModule | None = None
    output: Path | None = None
    tokenizer: Tokenizer | None = field(default=None, repr=False)
    files: dict[str, ir.Model] = field(default_factory=dict, repr=False)  # written beside it


@dataclass
class CompileRequest:
    """The arguments of one compile (afmc.api.compile documents each)."""

    model: Any
    target: Target
    config: AfmcConfig
    calibration: Any = None
    example_inputs: tuple | None = None
    output: Path | None = None
    force: bool = False
    passes: list[PassSpec] | None = None
    skip: list[str] | tuple[str, ...] = ()
    verify: bool = False
    save_intermediate: bool = False
    tokenizer: str | Path | Tokenizer | None = None
    recalibrate: bool = False
    to_step: str = "write"
    from_step: str | None = None


@dataclass
class CompileState:
    """What the steps have made so far."""

    request: CompileRequest
    timed: StepTimer
    staged: Path | None
    frontend: Frontend | None = None
    pass_list: list[PassSpec] = field(default_factory=list)
    data: CalibrationData | None = None
    checks_fidelity: bool = False
    lowered: ir.Model | None = None
    layers: list[LayerRecord] = field(default_factory=list)
    context: LowerContext | None = None
    record: dict[str, Any] = field(default_factory=dict)
    result: CompileResult | None = None
    stopped: dict[str, Any] | None = None  # the record of the compile resumed (from_step)


def check_step(step: str) -> str:
    """`step` if it names a compile step, else a ValueError listing them."""
    if step not in STEPS:
        raise ValueError(f"unknown compile step {step!r}; the steps: {', '.join(STEPS)}")
    return step


def run_compile(request: CompileRequest, progress: Progress | None) -> CompileResult:
    """Run the steps of `request` up to its `to_step` (module docstring)."""
    check_step(request.to_step)
    stopped = _stopped_record(request) if request.from_step is not None else None
    timed = StepTimer(progress)
    read = [*model_paths(request.model), *(Path(path) for path in (
        request.calibration, request.tokenizer) if isinstance(path, (str, Path)))]
    with staged_output(request.output, request.force or stopped is not None, read) as staged:
        state = CompileState(request, timed, staged, stopped=stopped)
        for step in STEPS[:STEPS.index(request.to_step) + 1]:
            STEP_FUNCTIONS[step](state)
        if request.to_step != "write":
            return _stopped(state)
        return state.result


def capture(state: CompileState) -> None:
    """Open the model's front end and resolve its pass list."""
    request = state.request
    state.frontend = state.timed(
        "load" if is_onnx_file(request.model) else "capture",
        lambda: open_frontend(request.model, request.example_inputs,
                              tokenizer=resolve_tokenizer(request.tokenizer),
                              recalibrate=request.recalibrate, verify=request.verify))
    state.pass_list = pass_steps(state.frontend, request.target, request.passes, request.skip)


def data(state: CompileState) -> None:
    """The calibration data, and the FP reference the fidelity check needs (before the
    passes replace the weights)."""
    request, frontend = state.request, state.frontend
    state.data = _calibration(frontend, request.target, request.config, state.pass_list,
                              request.model, request.calibration)
    state.checks_fidelity = (state.data is not None and not state.data.synthetic
                             and _checks_fidelity(request.target, request.config))
    if state.checks_fidelity:
        batches, _ = fidelity_batches(state.data)
        state.timed("fp-reference", lambda: frontend.hold_reference(batches))
    else:
        frontend.hold_reference(None)


def passes(state: CompileState) -> None:
    """The passes in order, each timed under its name (its outcome in its timing); on a
    resumed compile, the graph they left, read back (module docstring)."""
    frontend, config = state.frontend, state.request.config
    if state.stopped is not None:
        _read_back_passes(state)
        return
    batches = len(state.data.batches) if state.data is not None else 0
    for number, spec in enumerate(state.pass_list, start=1):
        name = pass_name(spec)

        def progress(done: int, name: str = name) -> None:
            state.timed.progress(f"{name}: batch {done}/{batches}")

        outcome = state.timed(name, lambda spec=spec, progress=progress: frontend.run_pass(
            spec, config, state.data, progress))
        state.timed.timings[-1].update(outcome)
        if state.request.save_intermediate and state.staged is not None:
            frontend.save(_intermediate_folder(state) / f"{number:02d}-{name}")


def lower(state: CompileState) -> None:
    """The graph as ONNX with the afmc ops, and its layer records."""
    state.lowered = state.timed("lower", state.frontend.lower)
    state.layers = state.frontend.layers()
    _warn_if_nothing_accelerated(state.frontend, state.request.target, state.layers)


def target_lower(state: CompileState) -> None:
    """The target's post-lowering step, then the record of the lowered model."""
    request, frontend = state.request, state.frontend
    target, data_ = request.target, state.data
    state.context = LowerContext(state.lowered, request.config, state.layers,
                                 data_.batches if data_ else None)
    if target.post_lower is not None:
        state.lowered = state.timed(f"lower-{target.name}",
                                    lambda: target.post_lower(state.context))
    state.record = build_record(target=target.name, runtime=target.runtime,
                                source=frontend.source, layers=state.layers,
                                config=request.config, timings=state.timed.timings,
                                calibration_source=data_.source if data_ else None,
                                tokenizer=frontend.tokenizer(),
                                max_positions=frontend.signature.max_positions,
                                **frontend.record_fields())
    state.record.update(state.context.record)
    if data_ is not None and not data_.synthetic:
        state.record["calibration_inputs"] = input_ranges(data_.batches)


def fidelity(state: CompileState) -> None:
    """The lowered model against FP on held-back data (when the compile checks it)."""
    if state.checks_fidelity:
        batches, held = fidelity_batches(state.data)
        state.record["fidelity"] = state.timed("fidelity", lambda: lowered_fidelity(
            state.lowered, state.record, state.request.config.noise, batches,
            state.frontend.fp_outputs, held))


def write(state: CompileState) -> None:
    """The record into the model's metadata; OUT written when there is one."""
    lowering.set_metadata(state.lowered, {k: v for k, v in state.record.items()
                                          if k != "passes"})
    frontend = state.frontend
    state.result = CompileResult(state.lowered, state.record, state.layers, frontend.program,
                                 None, frontend.tokenizer(), state.context.files)
    if state.staged is not None:
        state.timed.progress("write")
        write_outputs(state.staged, state.lowered, state.record, state.result.tokenizer,
                      state.result.files)
        state.result.output = Path(state.request.output)


STEP_FUNCTIONS: dict[str, Callable[[CompileState], None]] = {
    "capture": capture, "data": data, "passes": passes, "lower": lower,
    "target-lower": target_lower, "fidelity": fidelity, "write": write}


def _stopped(state: CompileState) -> CompileResult:
    """The result of a compile stopped after `to_step`: OUT/afmc.json and the model as
    that step left it in OUT/intermediate/ (module docstring)."""
    request = state.request
    step = request.to_step
    record = {**state.record, "to_step": step, "passes": state.timed.timings}
    if not state.record:
        record.update(source=state.frontend.source, target=request.target.name,
                      config=request.config.model_dump(mode="json"))
    result = CompileResult(state.lowered, record, state.layers, state.frontend.program,
                           None, state.frontend.tokenizer())
    if state.staged is not None:
        stem = _intermediate_folder(state) / step
        if state.lowered is not None:
            save_model(state.lowered, stem.with_suffix(".onnx"))
        else:
            state.frontend.save(stem)
        write_record(state.staged, record)
        result.output = Path(state.request.output)
    return result


def _stopped_record(request: CompileRequest) -> dict[str, Any]:
    """The record of the compile `request.from_step` resumes, read before any work; a
    ValueError unless OUT holds a compile stopped after its passes."""
    step = check_step(request.from_step)
    if step != RESUMES_AT:
        raise ValueError(f"--from-step {step}: a compile resumes at {RESUMES_AT}, from what "
                         f"--to-step passes leaves in OUT/{INTERMEDIATE_DIR}/ (the passes "
                         "take long; the steps after them take seconds)")
    if STEPS.index(request.to_step) < STEPS.index(step):
        raise ValueError(f"--to-step {request.to_step} comes before --from-step {step}")
    if request.output is None:
        raise ValueError(f"--from-step {step} needs the output (-o OUT) of a compile stopped "
                         "by --to-step passes")
    path = Path(request.output) / RECORD_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        record = {}
    if record.get("to_step") != "passes":
        raise ValueError(f"--from-step {step}: {path} is not the record of a compile stopped "
                         "by --to-step passes")
    if record.get("target") != request.target.name or \
            record.get("config") != request.config.model_dump(mode="json"):
        raise ValueError(f"--from-step {step}: {request.output} was stopped compiling for "
                         f"target {record.get('target')} with another configuration; give "
                         "the same target, --config and --set")
    return record


def _read_back_passes(state: CompileState) -> None:
    """The graph a stopped compile's passes left, in place of the captured one, and their
    timings (module docstring)."""
    frontend, stopped = state.frontend, state.stopped
    if stopped["source"] != frontend.source:
        raise ValueError(f"--from-step {RESUMES_AT}: {state.request.output} was stopped "
                         f"compiling {stopped['source']}, not {frontend.source}")
    state.timed.timings.extend(timing for timing in stopped["passes"]
                               if timing["name"] not in RERUN_ON_RESUME)
    stem = Path(state.request.output) / INTERMEDIATE_DIR / "passes"
    state.timed("read-back", lambda: frontend.restore(stem))


def _intermediate_folder(state: CompileState) -> Path:
    folder = state.staged / INTERMEDIATE_DIR
    folder.mkdir(exist_ok=True)
    return folder


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
    names = [pass_name(spec) for spec in steps]
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
        data_ = synthetic_calibration(frontend.signature, config.calibration)
        warnings.warn(f"{frontend.name}: no calibration data; input "
                      "ranges come from synthetic inputs drawn from the input signature "
                      "(pass --calib FILE for real ranges)", SyntheticCalibrationWarning,
                      stacklevel=5)
        return data_
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
                  NoAcceleratedLayersWarning, stacklevel=5)


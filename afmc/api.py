"""The Python API: afmc.compile() and afmc.load().

compile() is the one compile pipeline (afmc.compiler.driver): any model (built-in name,
Hugging Face directory, GGUF or ONNX file, nn.Module) through its front end, calibration
data checked against the model's inputs, the target's passes in order (timing each),
lowering to ONNX with afmc ops, the target's post-lowering step, the fidelity check and,
given an output directory, OUT/model.onnx and OUT/afmc.json written atomically. load()
opens a compiled model as a chip.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from afmc.compiler.driver import (  # noqa: F401  (the API's names)
    STEPS,
    CompileRequest,
    CompileResult,
    NoAcceleratedLayersWarning,
    Progress,
    run_compile,
)
from afmc.compiler.frontends import is_onnx_file
from afmc.compiler.trained_model import TRAINING_RECORD, trained_config
from afmc.config import AfmcConfig, config_from_dict
from afmc.console.quiet import libraries_quiet
from afmc.data.tokenizer import Tokenizer
from afmc.passes.registry import PassSpec
from afmc.runtime.compiled import CompiledModel, load  # noqa: F401  (afmc.api.load)
from afmc.targets import get_target


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
    to_step: str = "write",
    from_step: str | None = None,
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
    `save_intermediate` saves the graph after each pass as OUT/intermediate/NN-name.pt2
    (torch front end; torch.export.load, import afmc first) or NN-name.onnx (ONNX input).
    `to_step` (one of STEPS) stops after that step of the driver (afmc.compiler.driver):
    OUT holds afmc.json and the model as the step left it, in OUT/intermediate/.
    `from_step` "lower" finishes, in the same `output`, a compile that `to_step`
    "passes" stopped (same model, target and configuration), without running its passes
    again.

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
    config = config or _trained_or_default_config(model)
    request = CompileRequest(
        model, get_target(target), config, calibration=calibration,
        example_inputs=example_inputs, output=output, force=force, passes=passes, skip=skip,
        verify=verify, save_intermediate=save_intermediate, tokenizer=tokenizer,
        recalibrate=recalibrate, to_step=to_step, from_step=from_step)
    with libraries_quiet(verbose), _announcer(progress) as announce:
        return run_compile(request, announce)


@contextlib.contextmanager
def _announcer(progress: Progress | bool | None) -> Iterator[Progress | None]:
    """The step callback of `compile`'s `progress` argument (see there)."""
    if callable(progress):
        yield progress
    elif progress:
        from afmc.console.screen import Screen

        with Screen().status("compiling") as status:
            yield lambda step: status.update(f"compiling: {step}")
    else:
        yield None


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

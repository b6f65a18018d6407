"""The afmc command line: compile, run, eval, generate, lm-eval, passes, targets.

Errors a user can cause (missing model, corrupt config, unknown target, empty
calibration file, existing output, an output over the input) print one line on
stderr and exit 1, and leave no output directory behind; so do SIGINT (exit 130)
and SIGTERM (exit 143) during a compile.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from afmc.data.text_source import read_text
from afmc.eval.spread import json_number, spread_label, std_text

if TYPE_CHECKING:
    from afmc.runtime.compiled import CompiledModel
    from afmc.runtime.noise import NoiseConfig, NoiseModel

app = typer.Typer(no_args_is_help=True,
                  help="afmc: compile neural networks for analog in-memory computing.")
passes_app = typer.Typer(help="Inspect the registered passes.", no_args_is_help=True)
app.add_typer(passes_app, name="passes")
console = Console(stderr=True)
out = Console()

@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Print a user error as one line `error: ...` and exit 1, and every InputWarning as
    one line `warning: ...` (afmc.user_errors); other errors keep their traceback."""
    from afmc.interrupts import Terminated
    from afmc.user_errors import InputWarning, is_user_error, user_message

    show = warnings.showwarning

    def show_input_warning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InputWarning):
            typer.echo(f"warning: {message}", err=True)
        else:
            show(message, category, filename, lineno, file, line)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", InputWarning)
            warnings.showwarning = show_input_warning
            yield
    except Exception as error:
        if not is_user_error(error):
            raise
        typer.echo(f"error: {user_message(error)}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        raise typer.Exit(130) from None
    except Terminated as stop:
        typer.echo("error: terminated", err=True)
        raise typer.Exit(stop.code) from None


@contextlib.contextmanager
def _afmc_warnings() -> Iterator[None]:
    """Print each named afmc warning (its class is defined in afmc) as `warning: ...`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        if warning.category.__module__.startswith("afmc."):
            typer.echo(f"warning: {warning.message}", err=True)


def _print_version(value: bool) -> None:
    if value:
        from afmc import __version__

        out.print(f"afmc {__version__}")
        raise typer.Exit()


@app.callback()
def _quiet_libraries(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print afmc's version and exit.")] = False,
) -> None:
    """Keep library progress bars and deprecation chatter out of afmc's output (every
    command); --version prints the version instead."""
    from afmc.quiet import quiet_libraries

    quiet_libraries()


@app.command()
def compile(  # noqa: A001
    model: Annotated[str, typer.Argument(
        help="afmc-tiny, a Hugging Face model directory, or an ONNX file (*.onnx)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory")],
    target: Annotated[str, typer.Option(help="aimc, int8, int4 or fp")] = "aimc",
    config: Annotated[Path | None, typer.Option(help="YAML/JSON configuration file")] = None,
    calib: Annotated[str | None, typer.Option(
        help="Calibration data: a text file (language models; default for afmc-tiny: its "
             "calibration text) or tensors (.npy, .npz keyed by input name, .pt)")] = None,
    tokenizer: Annotated[str | None, typer.Option(
        help="Tokenizer directory (or 'bytes') for text calibration (replaces the model's)"
    )] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a field: section.field=value (repeatable)")] = None,
    digital: Annotated[list[str] | None, typer.Option(
        help="Keep layers matching this regex digital (repeatable)")] = None,
    digital_lm_head: Annotated[bool, typer.Option(
        help="Keep the LM head digital (placement.lm_head=digital)")] = False,
    force: Annotated[bool, typer.Option(help="Overwrite OUTPUT")] = False,
    passes: Annotated[str | None, typer.Option(
        help="Comma-separated FX passes to run instead of the target's")] = None,
    skip: Annotated[list[str] | None, typer.Option(help="Skip this pass (repeatable)")] = None,
    verify: Annotated[bool, typer.Option(
        help="Measure the output drift to the FP model after every pass")] = False,
    save_intermediate: Annotated[bool, typer.Option(
        help="Save the program after each pass to OUTPUT/intermediate/*.pt2")] = False,
    recalibrate: Annotated[bool, typer.Option(
        help="A model trained by afmc train: calibrate its input ranges instead of using "
             "the learned ones")] = False,
) -> None:
    """Compile MODEL for a target: writes OUTPUT/model.onnx and OUTPUT/afmc.json."""
    with _user_errors():
        from afmc.config import load_config
        from afmc.output_dir import check_output

        if config is not None:  # the model, calibration and tokenizer: afmc.compile checks
            check_output(output, [config])
        overrides = list(set_ or [])
        if digital:
            overrides.append(f"placement.digital={json.dumps(list(digital))}")
        if digital_lm_head:
            overrides.append("placement.lm_head=digital")
        from afmc.train.trained_model import trained_config

        trained = trained_config(model) if config is None and Path(model).is_dir() else None
        cfg = load_config(config, overrides, base=trained)
        from afmc.api import compile as compile_model

        with _afmc_warnings(), console.status("compiling") as status:
            result = compile_model(
                model, target, cfg, calibration=calib, output=output, force=force,
                passes=[name.strip() for name in passes.split(",") if name.strip()]
                if passes is not None else None,
                skip=list(skip or []), verify=verify, save_intermediate=save_intermediate,
                tokenizer=tokenizer, progress=lambda step: status.update(f"compiling: {step}"),
                recalibrate=recalibrate,
            )
        _print_compile_summary(result.record, output)


def _print_fidelity(fidelity: dict) -> None:
    parts = []
    for key, label in (("noise_free", "no programming noise"), ("chip_0", "chip 0")):
        if key in fidelity:
            scores = fidelity[key]
            ppl = f"perplexity {scores['perplexity']:.4g}, " if "perplexity" in scores else ""
            parts.append(f"{label}: {ppl}relative error {scores['relative_error']:.3g}")
    fp = f"FP perplexity {fidelity['fp_perplexity']:.4g}; " if "fp_perplexity" in fidelity else ""
    out.print(f"fidelity on {fidelity['data']}: {fp}{'; '.join(parts)}")


def _print_compile_summary(record: dict, output: Path) -> None:
    summary = record["summary"]
    if "fidelity" in record:
        _print_fidelity(record["fidelity"])
    table = Table(title=f"afmc compile -> {output}", show_edge=False)
    verified = any("output_drift" in step for step in record["passes"])
    for column in ("step", "seconds") + (("output drift vs FP",) if verified else ()):
        table.add_column(column)
    for step in record["passes"]:
        drift = step.get("output_drift")
        table.add_row(step["name"], f"{step['seconds']:.2f}",
                      *((f"{drift:.2e}" if drift is not None else "",) if verified else ()))
    out.print(table)
    if "digital" in record:
        counts = ", ".join(f"{n} {kind}" for kind, n in record["digital"]["layers"].items())
        out.print(f"target {record['target']}: layers {counts or 'none'}; FP reference "
                  f"{output / record['digital']['reference']}")
        return
    out.print(f"target {record['target']}: {summary['analog_layers']} analog layers, "
              f"{summary['digital_layers']} digital, {summary['tiles']} tiles "
              f"({summary['tile_strategy']}, utilization {summary['tile_utilization']:.1%}) "
              f"({record['config']['hardware']['tile_rows']}x"
              f"{record['config']['hardware']['tile_cols']}), "
              f"{summary['analog_weights']:,} analog weights")


def _progress() -> Progress:
    return Progress("[progress.description]{task.description}", BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True)


@contextlib.contextmanager
def _bar_from_first_report(description: str) -> Iterator[Callable[[int, int], None]]:
    """A progress callback (done, total) whose bar appears at the first report, after the
    checks, so that an error prints alone."""
    bar = _progress()
    task = bar.add_task(description, total=None)

    def progress(done: int, total: int) -> None:
        bar.start()
        bar.update(task, completed=done, total=total)

    try:
        yield progress
    finally:
        if bar.live.is_started:
            bar.stop()


@app.command()
def run(
    compiled: Annotated[Path, typer.Argument(help="Output directory of afmc compile")],
    text: Annotated[str | None, typer.Option(
        help="Text file (or stdlib:heldout); language models and encoders")] = None,
    inputs: Annotated[Path | None, typer.Option(
        help="Tensors for any model: .npy, .npz keyed by input name, or .pt")] = None,
    seed: Annotated[int, typer.Option(help="Chip instance (programming-noise seed)")] = 0,
    read_noise: Annotated[float, typer.Option(help="Per-inference read noise (0: off)")] = 0.0,
    max_tokens: Annotated[int, typer.Option(help="Tokens of the text to run")] = 256,
    top_k: Annotated[int, typer.Option(help="Predictions to show")] = 5,
) -> None:
    """Run one chip instance: next-token predictions for --text, or for --inputs every
    output with its error to the FP view."""
    with _user_errors():
        _check_options(max_tokens=max_tokens, top_k=top_k, read_noise=read_noise)
        model = _open_compiled(compiled)
        if _tensor_source(model, text, inputs) is not None:
            _run_tensors(model, inputs, seed, read_noise)
            return
        tokenizer = model.tokenizer()
        ids = tokenizer.encode(read_text(text))[:_within_context(model, max_tokens,
                                                                 "--max-tokens")]
        if ids.size == 0:
            raise ValueError(f"{text}: no tokens")
        if _is_encoder(model):
            _run_encoder(model, ids, seed, read_noise)
            return
        chip = model.chip(seed, read_noise=read_noise)
        logits = chip.run(ids[None, :])[0].astype(np.float64)
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        nll = -log_probs[:-1][np.arange(ids.size - 1), ids[1:]]
        out.print(f"{_chip_label(model, seed)}: {ids.size} tokens, logits {list(logits.shape)}, "
                  f"mean {logits.mean():.4f}, std {logits.std():.4f}")
        if nll.size:
            out.print(f"next-token accuracy {np.mean(log_probs[:-1].argmax(-1) == ids[1:]):.3f}, "
                      f"perplexity {np.exp(nll.mean()):.3f}")
        best = np.argsort(log_probs[-1])[::-1][:top_k]
        table = Table(title="next token after the text", show_edge=False)
        table.add_column("token")
        table.add_column("probability")
        for token in best:
            probability = np.exp(log_probs[-1, token])
            table.add_row(repr(tokenizer.decode([int(token)])), f"{probability:.3f}")
        out.print(table)


@app.command()
def train(
    model: Annotated[str, typer.Argument(
        help="The FP model to adapt: afmc-tiny, a Hugging Face directory or a GGUF file")],
    data: Annotated[str, typer.Option(
        help="Training data: afmc synth output, a text file, or stdlib:train")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory (CKPT)")],
    config: Annotated[Path | None, typer.Option(help="YAML/JSON configuration file")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a field: section.field=value, e.g. training.steps=200")] = None,
    steps: Annotated[int | None, typer.Option(help="training.steps")] = None,
    lora_rank: Annotated[int | None, typer.Option(help="training.lora_rank (0: full)")] = None,
    digital: Annotated[list[str] | None, typer.Option(
        help="Keep layers matching this regex digital (repeatable)")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda")] = "cpu",
    resume: Annotated[bool, typer.Option(
        help="Continue from the newest checkpoint in OUTPUT")] = False,
    force: Annotated[bool, typer.Option(help="Start over in an existing OUTPUT")] = False,
    max_minutes: Annotated[float | None, typer.Option(
        help="Time budget: stop after the step that ends past it and write the result")] = None,
) -> None:
    """Hardware-aware training by distillation; OUTPUT compiles with `afmc compile OUTPUT`.

    Runs under torchrun as it is (DistributedDataParallel; gloo on CPU, nccl on CUDA).
    """
    with _user_errors():
        import os

        from afmc.train.options import check_train_options

        check_train_options(data=data, steps=steps, lora_rank=lora_rank,
                            max_minutes=max_minutes, device=device)
        from afmc.config import load_config

        overrides = list(set_ or [])
        if steps is not None:
            overrides.append(f"training.steps={steps}")
        if lora_rank is not None:
            overrides.append(f"training.lora_rank={lora_rank}")
        if digital:
            overrides.append(f"placement.digital={json.dumps(list(digital))}")
        cfg = load_config(config, overrides)
        from afmc.train.trainer import train as train_model

        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"--device {device}: no CUDA device is available")
        lead = int(os.environ.get("RANK", "0")) == 0
        with _progress() as bar:
            task = bar.add_task("training", total=cfg.training.steps)

            def report(step: int, total: int, loss: float, rate: float) -> None:
                bar.update(task, completed=step,
                           description=f"training  loss {loss:.4f}  {rate:,.0f} tok/s")

            result = train_model(model, data, output, cfg, resume=resume, force=force,
                                 device=device, progress=report if lead else None,
                                 max_seconds=None if max_minutes is None else max_minutes * 60)
        if lead:
            final = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
            out.print(f"trained {result.steps} steps ({result.tokens:,} tokens this run, "
                      f"{result.seconds:.1f} s), final loss {final} -> {output}")


@app.command("eval")
def eval_(
    compiled: Annotated[Path, typer.Argument(help="Output directory of afmc compile")],
    text: Annotated[str | None, typer.Option(
        help="Text file (or stdlib:heldout); language models and encoders")] = None,
    inputs: Annotated[Path | None, typer.Option(
        help="Tensors for any model: .npy, .npz keyed by input name, or .pt")] = None,
    labels: Annotated[Path | None, typer.Option(
        help="With --inputs: class ids (.npy, one per sample) for the top-1 accuracy")] = None,
    seeds: Annotated[int, typer.Option(help="Chip instances (seeds 0..N-1)")] = 5,
    max_tokens: Annotated[int, typer.Option(help="Tokens of the text to score")] = 16384,
    seq_len: Annotated[int, typer.Option(help="Window length")] = 256,
    read_noise: Annotated[float, typer.Option(help="Per-inference read noise (0: off)")] = 0.0,
    drift: Annotated[str | None, typer.Option(
        help="Times after programming to read every chip at, e.g. 0,3600,1d,1y "
             "(pcm-drift; results in OUTPUT/eval/drift.json)")] = None,
    noise: Annotated[str | None, typer.Option(
        help="Programming-noise model: pcm, pcm-drift, additive or none "
             "(default: the compiled one; pcm-drift with --drift)")] = None,
    gdc: Annotated[bool | None, typer.Option(
        "--gdc/--no-gdc", help="pcm-drift: global drift compensation (default: on)")] = None,
    jobs: Annotated[int, typer.Option(
        help="Chip instances evaluated at once, each in its own process")] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here")] = None,
    task: Annotated[Path | None, typer.Option(
        help="JSONL task {prompt, answer} per line: accuracy of voting over samples")] = None,
    samples: Annotated[int, typer.Option(help="With --task: samples per problem")] = 8,
    vote: Annotated[str, typer.Option(help="With --task: how samples vote")] = "majority",
    temperature: Annotated[float, typer.Option(
        help="With --task: sampling temperature (0: greedy)")] = 1.0,
    sensitivity: Annotated[bool, typer.Option(
        help="Each analog layer alone on chip --seed, ranked, and the cumulative curve "
             "(results in OUTPUT/eval/sensitivity.json)")] = False,
    seed: Annotated[int, typer.Option(help="--sensitivity: the chip instance")] = 0,
    budget: Annotated[str | None, typer.Option(
        help="--sensitivity: allowed perplexity increase over FP (relative error for "
             "--inputs), e.g. 1%; suggests the layers to keep digital")] = None,
    rules: Annotated[Path | None, typer.Option(
        help="--budget: write the keep-digital configuration here "
             "(default OUTPUT/eval/keep-digital.yaml)")] = None,
) -> None:
    """Scores per chip instance and mean +- sample std over seeds, next to the FP view: perplexity
    for --text, for --inputs the error of every output (and accuracy with --labels), or
    for --task the accuracy of a majority vote over n = 1, 2, 4, ... samples (written to
    OUT/eval/test_time_compute.json). With --drift, every chip at every time (resumable:
    finished chips are kept in OUTPUT/eval/drift.jsonl). With --sensitivity, every analog
    layer alone, ranked (OUT/eval/sensitivity.json)."""
    with _user_errors():
        from afmc.eval.drift import eval_noise, parse_times
        from afmc.eval.json_out import check_json_path, write_json

        modes = [flag for flag, given in (("--task", task is not None), ("--drift", bool(drift)),
                                          ("--sensitivity", sensitivity)) if given]
        if len(modes) > 1:
            raise ValueError(f"{' and '.join(modes)} are separate evaluations: give one")
        if task is not None:
            from afmc.eval.test_time_compute import accuracy_table, eval_task

            if text is not None or inputs is not None:
                raise ValueError("give either --task or --text/--inputs, not both")
            _check_options(seeds=seeds, read_noise=read_noise)
            with _bar_from_first_report("problems") as progress:
                result = eval_task(_open_compiled(compiled), task, samples=samples, vote=vote,
                                   seeds=seeds, temperature=temperature,
                                   read_noise=read_noise, progress=progress)
            out.print(accuracy_table(result))
            return
        _check_options(seeds=seeds, max_tokens=max_tokens, seq_len=seq_len,
                       read_noise=read_noise, jobs=jobs)
        jobs = _within_cores(jobs)
        times = parse_times(drift) if drift is not None else None
        if json_out is not None:
            check_json_path(json_out)
        fraction = _sensitivity_options(sensitivity, seed, budget, rules)
        model = _open_compiled(compiled)
        noise_config = eval_noise(model, _noise_model(noise), gdc, times is not None)
        if sensitivity:
            _eval_sensitivity(model, text, inputs, seed, fraction, rules, noise_config,
                              read_noise, max_tokens, seq_len, json_out)
            return
        if times is not None:
            _eval_drift(model, text, inputs, seeds, times, noise_config, read_noise, jobs,
                        max_tokens, seq_len, json_out)
            return
        if _tensor_source(model, text, inputs) is not None:
            _eval_tensors(model, inputs, labels, seeds, read_noise, json_out, noise_config)
            return
        if labels is not None:
            raise ValueError("--labels goes with --inputs (tensors), not with --text")
        from afmc.eval.evaluate import evaluate

        ids = model.tokenizer().encode(read_text(text))
        seq_len = _within_context(model, seq_len, "--seq-len")
        if _is_encoder(model):
            _eval_encoder(model, ids, seeds, seq_len, max_tokens, read_noise, json_out,
                          noise_config)
            return
        with _progress() as bar:
            bar_task = bar.add_task("fp", total=None)

            def on_result(name: str, value: float) -> None:
                out.print(f"{name:>30}: perplexity {value:.4f}")

            def progress(done: int, total: int) -> None:
                bar.update(bar_task, completed=done, total=total)

            report = evaluate(model, ids, list(range(seeds)), seq_len=seq_len,
                              max_tokens=max_tokens, read_noise=read_noise, noise=noise_config,
                              jobs=jobs, on_result=on_result, progress=progress)
        if report.digital:
            out.print(f"FP perplexity {report.fp:.4f}; {report.digital} {report.mean:.4f} "
                      f"({report.mean / report.fp - 1:+.2%}), {report.tokens} tokens")
            out.print(_one_run_note(report.digital))
        else:
            out.print(f"FP perplexity {report.fp:.4f}; analog over {seeds} chip(s): "
                      f"{report.mean:.4f} +- {std_text(report.std)} "
                      f"({spread_label(len(report.chips))}; {report.tokens} tokens)")
        if json_out:
            write_json(json_out, {"tokens": report.tokens, "fp": report.fp,
                                  "noise_free": report.noise_free, "chips": report.chips,
                                  "mean": report.mean, "std": json_number(report.std)})


@app.command()
def generate(
    compiled: Annotated[Path, typer.Argument(help="Output directory of afmc compile")],
    prompt: Annotated[str, typer.Option(help="The text to continue")],
    seed: Annotated[int, typer.Option(help="Chip instance (programming-noise seed)")] = 0,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most")] = 32,
    temperature: Annotated[float, typer.Option(
        help="Sampling temperature (0: greedy)")] = 0.0,
    top_k: Annotated[int, typer.Option(help="Sample from the k most likely (0: off)")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (1: off)")] = 1.0,
    sample_seed: Annotated[int, typer.Option(help="Sampling seed")] = 0,
    read_noise: Annotated[float, typer.Option(help="Per-inference read noise (0: off)")] = 0.0,
    fp: Annotated[bool, typer.Option(help="Generate with the FP view instead of a chip")] = False,
) -> None:
    """Continue --prompt with a compiled language model (KV-cache decoding): prints the
    generated text; the same seeds give the same text."""
    with _user_errors():
        _check_options(max_new_tokens=max_new_tokens, read_noise=read_noise)
        from afmc.runtime.generation import GenerationOptions, check_language_model
        from afmc.runtime.generation import generate as generate_tokens

        model = _open_compiled(compiled)
        check_language_model(model.record)
        tokenizer = model.tokenizer()
        options = GenerationOptions(max_new_tokens, temperature, top_k, top_p, sample_seed,
                                    getattr(getattr(tokenizer, "tokenizer", None),
                                            "eos_token_id", None))
        options.check()
        ids = tokenizer.encode(prompt)
        chip = model.fp_view() if fp else model.chip(seed, read_noise=read_noise)
        started = time.perf_counter()  # tokens/s of decoding, without the chip's start
        result = generate_tokens(chip, model.record, ids, options)
        seconds = time.perf_counter() - started
        out.print(tokenizer.decode(result.tokens), markup=False, highlight=False)
        which = "FP view" if fp else _chip_label(model, seed)
        console.print(f"{which}: {len(result.tokens)} new tokens "
                      f"({'eos' if result.stopped_at_eos else 'max-new-tokens'}), "
                      f"{len(result.tokens) / seconds:.1f} tokens/s", highlight=False)


@app.command("lm-eval", add_help_option=False,
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def lm_eval_command(ctx: typer.Context) -> None:
    """lm-evaluation-harness with the model type "afmc" registered: every argument is
    lm-eval's, e.g. --model afmc --model_args path=OUT,seed=0 --tasks NAME (docs/lm-eval.md)."""
    with _user_errors():
        import sys
        from importlib.util import find_spec

        if find_spec("lm_eval") is None:
            raise ValueError("afmc lm-eval needs lm-eval 0.4: pip install 'afmc[lm-eval]'")
        from lm_eval.__main__ import cli_evaluate

        import afmc.eval.lm_eval_model  # noqa: F401  (registers the model type "afmc")

        argv, sys.argv = sys.argv, ["lm-eval", *ctx.args]
        try:
            cli_evaluate()
        finally:
            sys.argv = argv


_MINIMUM = {"seeds": 1, "max_tokens": 1, "seq_len": 2, "top_k": 1, "max_new_tokens": 1,
            "jobs": 1}


def _check_options(**options: float) -> None:
    """A ValueError naming the first option out of range: --seeds, --max-tokens,
    --max-new-tokens, --top-k and --jobs at least 1, --seq-len at least 2, --read-noise a finite
    number >= 0."""
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if name == "read_noise":
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{flag} must be a finite number >= 0, got {value}")
        elif value < _MINIMUM[name]:
            raise ValueError(f"{flag} must be at least {_MINIMUM[name]}, got {value}")


def _open_compiled(compiled: Path) -> CompiledModel:
    """The compiled output OUT, opened once for the whole command."""
    from afmc.runtime.compiled import CompiledModel

    return CompiledModel(compiled)


def _chip_label(model: CompiledModel, seed: int) -> str:
    """How run and generate name what they ran: the chip, or the one noiseless model."""
    return f"chip seed {seed}" if model.varies_by_seed else f"{model.target} model (no noise)"


def _number_text(value: float, spec: str) -> str:
    """`value` formatted by `spec`; "n/a" for NaN (the sample std of one chip)."""
    return "n/a" if math.isnan(value) else format(value, spec)


def _one_run_note(target: str) -> str:
    """eval's note for a target whose chips do not vary by seed."""
    return f"{target} target: one run, no programming noise (--seeds ignored)"


def _tensor_source(model: CompiledModel, text: str | None, inputs: Path | None) -> Path | None:
    """The --inputs file, or None for --text; exactly one of the two, and --text only for a
    model compiled with a tokenizer."""
    if text is not None and inputs is not None:
        raise ValueError("give either --text or --inputs, not both")
    if text is None and inputs is None:
        raise ValueError("give --text FILE (language models, encoders) or --inputs FILE "
                         "(tensors keyed by input name)")
    if text is not None and not model.has_tokenizer:
        raise ValueError(f"{model.out_dir}: compiled model has no tokenizer; give --inputs FILE "
                         "(tensors keyed by input name)")
    return inputs


def _run_tensors(model: CompiledModel, inputs: Path, seed: int, read_noise: float) -> None:
    """afmc run --inputs: every output of chip `seed`, its statistics and error to FP."""
    from afmc.eval.tensor_eval import TOP1_SHOWN, run_tensors

    report = run_tensors(model, inputs, seed, read_noise=read_noise)
    out.print(f"{_chip_label(model, seed)}: {report.samples} samples from {inputs}")
    table = Table(title="outputs vs the FP view", show_edge=False)
    for column in ("output", "shape", "mean", "std", "relative error", "SQNR (dB)", "cosine",
                   "top-1 agreement"):
        table.add_column(column)
    for output in report.outputs:
        table.add_row(output.name, str(output.shape), f"{output.mean:.4g}", f"{output.std:.4g}",
                      f"{output.error.relative_error:.4g}", f"{output.error.sqnr_db:.2f}",
                      f"{output.error.cosine:.4f}", _number_text(output.error.agreement, ".4f"))
    out.print(table)
    for output in report.outputs:
        if output.top1 is not None:
            out.print(f"{output.name}: top-1 class of the first {len(output.top1)} sample(s) "
                      f"{output.top1} (FP {output.fp_top1})"
                      + (f", of {report.samples}" if report.samples > TOP1_SHOWN else ""))


def _eval_tensors(model: CompiledModel, inputs: Path, labels: Path | None, seeds: int,
                  read_noise: float, json_out: Path | None, noise: NoiseConfig) -> None:
    """afmc eval --inputs: error of every output per chip, mean +- sample std, and
    accuracy."""
    from afmc.eval.json_out import write_json
    from afmc.eval.tensor_eval import METRICS, evaluate_tensors

    with _bar_from_first_report("chips") as progress:
        report = evaluate_tensors(model, inputs, list(range(seeds)), labels_file=labels,
                                  read_noise=read_noise, noise=noise, progress=progress)
    accuracy = report.fp_accuracy is not None
    over = "" if report.digital else f"; {spread_label(len(report.chips))}"
    table = Table(title=f"outputs vs the FP view on {report.samples} samples (noise-free: "
                        f"the stored weights, no programming noise{over})", show_edge=False)
    for column in ("chip", "output", "relative error", "SQNR (dB)", "cosine",
                   "top-1 agreement") + (("accuracy",) if accuracy else ()):
        table.add_column(column)
    rows = ([("noise-free", report.noise_free)] if report.noise_free else []) + [
        (report.digital or f"seed {seed}", scores) for seed, scores in report.chips.items()]
    for label, scores in rows:
        for name, error in scores.errors.items():
            table.add_row(label, name, f"{error.relative_error:.4g}", f"{error.sqnr_db:.2f}",
                          f"{error.cosine:.4f}", _number_text(error.agreement, ".4f"),
                          *((f"{scores.accuracy:.4f}",) if accuracy else ()))
    if not report.digital:
        spread = report.accuracy_spread()
        for index, label in enumerate(("mean", "sample std")):
            for name in report.outputs:
                cells = [report.spread(name, metric)[index] for metric in METRICS]
                table.add_row(label, name, _number_text(cells[0], ".4g"),
                              _number_text(cells[1], ".2f"), _number_text(cells[2], ".4f"),
                              _number_text(cells[3], ".4f"),
                              *((_number_text(spread[index], ".4f"),) if spread else ()))
    out.print(table)
    if accuracy:
        out.print(f"FP accuracy {report.fp_accuracy:.4f}")
    if report.digital:
        out.print(_one_run_note(report.digital))
    if json_out:
        write_json(json_out, report.to_json())


def _lm_windows(model: CompiledModel, text: str, seq_len: int, max_tokens: int,
                option: str) -> np.ndarray:
    """The token windows of --text for `option` on a language model; a ValueError for an
    encoder, which `option` scores by its outputs (--inputs)."""
    from afmc.data.tokenizer import token_windows

    if _is_encoder(model):
        raise ValueError(f"{option} on an encoder: give --inputs FILE (the error of its "
                         "outputs against the FP view is the metric)")
    ids = model.tokenizer().encode(read_text(text))
    return token_windows(ids, min(_within_context(model, seq_len, "--seq-len"), len(ids)),
                         max_tokens)


def _within_cores(jobs: int) -> int:
    """--jobs, or the machine's core count when it has fewer, with a note: more processes
    than cores only share them."""
    cores = os.cpu_count() or 1
    if jobs <= cores:
        return jobs
    out.print(f"note: --jobs {jobs} cut to {cores}, the cores of this machine")
    return cores


def _noise_model(name: str | None) -> NoiseModel | None:
    """--noise as a NoiseModel name (None: not given); ValueError for an unknown one."""
    from typing import get_args

    from afmc.runtime.noise import NoiseModel

    known = get_args(NoiseModel)
    if name is not None and name not in known:
        raise ValueError(f"--noise {name!r}: unknown noise model (known: {', '.join(known)})")
    return name


def _time_label(seconds: float) -> str:
    """A drift time as people say it: 0 s, 1 h, 1 d, 1 y (else seconds)."""
    for unit, size in (("y", 31536000.0), ("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _eval_drift(model: CompiledModel, text: str | None, inputs: Path | None, seeds: int,
                times: list[float], noise: NoiseConfig, read_noise: float, jobs: int,
                max_tokens: int, seq_len: int, json_out: Path | None) -> None:
    """afmc eval --drift: every chip at every time, mean +- sample std per time, as a table and
    as OUTPUT/eval/drift.json (points kept in drift.jsonl as they finish)."""
    from afmc.data.model_inputs import load_inputs
    from afmc.eval.drift import DRIFT_FILE, DRIFT_LOG, evaluate_drift
    from afmc.eval.evaluate import chip_perplexity
    from afmc.eval.json_out import write_json
    from afmc.eval.sweep import OutputErrorScorer, PerplexityScorer
    from afmc.layout import EVAL_DIR

    if _tensor_source(model, text, inputs) is not None:
        scorer = OutputErrorScorer.against_fp(model, load_inputs(inputs, model.signature()))
        fp = None
    else:
        windows = _lm_windows(model, text, seq_len, max_tokens, "--drift")
        scorer = PerplexityScorer(windows)
        fp = chip_perplexity(model.fp_view(), windows, scorer.batch_size)
        out.print(f"FP perplexity {fp:.4f} ({windows.size} tokens)")
    results = model.out_dir / EVAL_DIR
    results.mkdir(exist_ok=True)
    with _progress() as bar:
        task = bar.add_task(f"{seeds} chips x {len(times)} times", total=seeds * len(times))
        report = evaluate_drift(model, scorer, fp, list(range(seeds)), times, noise,
                                read_noise=read_noise, jobs=jobs, log=results / DRIFT_LOG,
                                on_point=lambda *_: bar.advance(task))
    metric = scorer.metric.replace("_", " ")
    table = Table(title=f"{metric} over time after programming ({noise.model}, "
                        f"drift compensation {'on' if noise.drift_compensation else 'off'}; "
                        f"{spread_label(len(report.seeds))})",
                  show_edge=False)
    for column in ("time", "mean", "sample std",
                   *(f"seed {seed}" for seed in report.seeds[:8])):
        table.add_column(column)
    for row in report.summary():
        table.add_row(_time_label(row["time_s"]), f"{row['mean']:.4f}", std_text(row["std"]),
                      *(f"{value:.4f}" for value in report.at(row["time_s"])[:8]))
    out.print(table)
    write_json(results / DRIFT_FILE, report.to_json())
    if json_out:
        write_json(json_out, report.to_json())
    out.print(f"-> {results / DRIFT_FILE}")


def _sensitivity_options(sensitivity: bool, seed: int, budget: str | None,
                         rules: Path | None) -> float | None:
    """--budget as a fraction (None: not given); ValueError for a bad --seed or --budget,
    or for --budget/--rules without --sensitivity (--rules without --budget)."""
    from afmc.eval.sensitivity import parse_budget

    if not sensitivity:
        if budget is not None or rules is not None:
            raise ValueError("--budget and --rules go with --sensitivity")
        return None
    if seed < 0:
        raise ValueError(f"--seed must be at least 0, got {seed}")
    if rules is not None and budget is None:
        raise ValueError("--rules needs --budget (the keep-digital suggestion)")
    if rules is not None and not rules.parent.is_dir():
        raise ValueError(f"--rules {rules}: directory does not exist")
    return None if budget is None else parse_budget(budget)


def _eval_sensitivity(model: CompiledModel, text: str | None, inputs: Path | None, seed: int,
                      budget: float | None, rules: Path | None, noise: NoiseConfig,
                      read_noise: float, max_tokens: int, seq_len: int,
                      json_out: Path | None) -> None:
    """afmc eval --sensitivity: the ranking table, the cumulative curve, OUTPUT/eval/
    sensitivity.json and, with --budget, the keep-digital configuration."""
    from afmc.data.model_inputs import load_inputs
    from afmc.eval import sensitivity as sens
    from afmc.eval.json_out import write_json
    from afmc.layout import EVAL_DIR

    sens.check_sensitivity(model)
    if _tensor_source(model, text, inputs) is not None:
        scorer: sens.Scorer = sens.OutputsScorer(model, load_inputs(inputs, model.signature()))
    else:
        windows = _lm_windows(model, text, seq_len, max_tokens, "--sensitivity")
        scorer = sens.LogitsScorer(model.fp_view(), windows)
        out.print(f"FP perplexity {scorer.fp:.4f} ({windows.size} tokens)")
    with _bar_from_first_report("layer chips") as progress:
        report = sens.measure_sensitivity(model, scorer, seed, noise=noise,
                                          read_noise=read_noise, progress=progress)
    if budget is not None:
        sens.suggest(report, budget)
    out.print(sens.ranking_table(report))
    lm = report.fp is not None
    out.print(f"all analog: {report.metric.replace('_', ' ')} {report.all_analog:.4f}"
              + (f" (FP {report.fp:.4f}, {report.all_analog / report.fp - 1:+.2%})" if lm
                 else ""))
    results = model.out_dir / EVAL_DIR
    results.mkdir(exist_ok=True)
    if budget is not None:
        path = rules or results / sens.RULES_FILE
        sens.write_rules(path, model.record, report.keep_digital)
        out.print(f"budget {budget:.2%}: {len(report.layers) - len(report.keep_digital)} "
                  f"layer(s) analog, {len(report.keep_digital)} kept digital -> {path}")
    write_json(results / sens.SENSITIVITY_FILE, report.to_json())
    if json_out:
        write_json(json_out, report.to_json())
    out.print(f"-> {results / sens.SENSITIVITY_FILE}")


def _within_context(model: CompiledModel, length: int, option: str) -> int:
    """`length`, or the model's context (record max_positions) when it is shorter: a
    sequence option is cut to what the model reads, with a note."""
    limit = model.max_positions
    if limit is None or length <= limit:
        return length
    out.print(f"note: {option} {length} cut to {limit}, the model's context "
              "(max_position_embeddings)")
    return limit


def _is_encoder(model: CompiledModel) -> bool:
    from afmc.eval.embedding import is_encoder

    return is_encoder(model.record)


def _run_encoder(model: CompiledModel, ids: np.ndarray, seed: int, read_noise: float) -> None:
    """afmc run on an encoder: the text's embedding on chip `seed`, and its error to FP."""
    from afmc.eval.embedding import embedding_error, embeddings

    chip = model.chip(seed, read_noise=read_noise)
    got = embeddings(chip, ids[None, :])
    error = embedding_error(got, embeddings(model.fp_view(), ids[None, :]))
    out.print(f"{_chip_label(model, seed)}: {ids.size} tokens, embedding {list(got.shape)}, norm "
              f"{np.linalg.norm(got):.4f}; vs FP: relative error {error.relative_error:.4f}, "
              f"cosine {error.cosine:.4f}")


def _eval_encoder(model: CompiledModel, ids: np.ndarray, seeds: int, seq_len: int, max_tokens: int,
                  read_noise: float, json_out: Path | None, noise: NoiseConfig) -> None:
    """afmc eval on an encoder: relative error of the mean-pooled embeddings to the FP view."""
    from afmc.data.tokenizer import token_windows
    from afmc.eval.embedding import evaluate_encoder

    windows = token_windows(ids, min(seq_len, len(ids)), max_tokens)
    report = evaluate_encoder(model, windows, list(range(seeds)), read_noise=read_noise,
                              noise=noise)
    for seed, error in report.chips.items():
        out.print(f"{report.digital or f'seed {seed}':>10}: embedding relative error "
                  f"{error.relative_error:.4f}, cosine {error.cosine:.4f}")
    out.print(f"embedding relative error vs FP over {report.windows} windows: "
              f"{report.mean:.4f} +- {std_text(report.std)} "
              f"({spread_label(len(report.chips))})")
    if json_out:
        from afmc.eval.json_out import write_json

        write_json(json_out, {"windows": report.windows, "digital": report.digital,
                              "chips": {seed: vars(error) for seed, error in report.chips.items()},
                              "mean": report.mean, "std": json_number(report.std)})


@app.command()
def synth(
    model: Annotated[str, typer.Argument(
        help="The teacher: afmc-tiny, a Hugging Face directory or a GGUF file")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory (DATA)")],
    tokens: Annotated[int, typer.Option(help="Tokens to generate (rounded up to sequences)")],
    seq_len: Annotated[int, typer.Option(help="Tokens per sequence")] = 256,
    temperature: Annotated[float, typer.Option(help="Sampling temperature")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sample from the k most likely (0: off)")] = 50,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (1: off)")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed")] = 0,
    shard_sequences: Annotated[int, typer.Option(help="Sequences per shard file")] = 64,
    batch_size: Annotated[int, typer.Option(help="Sequences generated at once")] = 8,
    force: Annotated[bool, typer.Option(help="Start over in an existing DATA")] = False,
) -> None:
    """Sample training text from MODEL itself; rerun the same command to resume."""
    with _user_errors():
        from afmc.train.synth_options import check_synth_options

        check_synth_options(tokens, seq_len, shard_sequences, batch_size, temperature, top_k,
                            top_p)
        from afmc.train.synth import synthesize

        with _bar_from_first_report("tokens") as progress:
            result = synthesize(
                model, output, tokens, seq_len=seq_len, shard_sequences=shard_sequences,
                batch_size=batch_size, temperature=temperature, top_k=top_k, top_p=top_p,
                seed=seed, force=force, progress=progress)
        kept = f" ({result.kept_shards} kept from an earlier run)" if result.kept_shards else ""
        shards = f"{result.shards} shard" + ("s" if result.shards > 1 else "")
        out.print(f"{result.sequences} sequences of {result.seq_len} tokens in {shards}{kept} "
                  f"-> {output}")


@app.command()
def report(
    compiled: Annotated[Path, typer.Argument(help="Output directory of afmc compile")],
    svg: Annotated[Path | None, typer.Option(
        help="Write the tile map picture here (default OUTPUT/tile_map.svg)")] = None,
    strategy: Annotated[str | None, typer.Option(
        help="Tile strategy to show: one-per-tile, packed or diagonal "
             "(default: the compiled one)")] = None,
    html: Annotated[Path | None, typer.Option(
        help="Write the report page here (default OUTPUT/report.html)")] = None,
) -> None:
    """Layers, tiles and utilization of a compiled model; draws its tile map as SVG and
    writes one self-contained HTML page with the evaluation results of OUTPUT/eval."""
    with _user_errors():
        from afmc.mapping import STRATEGIES
        from afmc.report import report as print_report

        if strategy is not None and strategy not in STRATEGIES:
            raise ValueError(f"--strategy {strategy!r}: unknown tile strategy (known: "
                             f"{', '.join(STRATEGIES)})")
        for option, path in (("--svg", svg), ("--html", html)):
            if path is None:
                continue
            if path.is_dir():
                raise IsADirectoryError(f"{option} {path}: is a directory")
            existing = next(parent for parent in path.absolute().parents if parent.exists())
            if not existing.is_dir():
                raise NotADirectoryError(f"{option} {path}: {existing} is not a directory")
        print_report(compiled, svg=svg, strategy=strategy, console=out, html=html)


@passes_app.command("list")
def passes_list() -> None:
    """Name, level and purpose of every registered pass."""
    from afmc.passes import PASSES

    table = Table(show_edge=False)
    for column in ("pass", "level", "what it does"):
        table.add_column(column)
    for info in PASSES.values():
        table.add_row(info.name, info.level, info.summary)
    out.print(table)


@app.command()
def targets() -> None:
    """The compile targets."""
    from afmc.targets import TARGETS

    for target in TARGETS.values():
        out.print(f"{target.name:6} {target.description}")

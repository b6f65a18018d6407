"""The afmc command line: compile, run, train, eval, generate, lm-eval, synth, report, cost,
passes, targets, config.

Errors a user can cause (missing model, corrupt config, unknown target, empty
calibration file, existing output, an output over the input) print one line on
stderr and exit 1, and leave no output directory behind; so do SIGINT (exit 130)
and SIGTERM (exit 143) during a compile.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from afmc.cli.examples import add_examples
from afmc.cli.info import config_app, passes_app, targets
from afmc.console.screen import Screen
from afmc.cost.command import cost
from afmc.eval.options import check_options
from afmc.io.error_lines import afmc_warnings, user_errors

app = typer.Typer(no_args_is_help=True,
                  help="afmc: compile neural networks for analog in-memory computing.")
screen = Screen()


def _print_version(value: bool) -> None:
    if value:
        from afmc import __version__

        screen.out.print(f"afmc {__version__}")
        raise typer.Exit()


@app.callback()
def _output_options(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print afmc's version and exit.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress and no notes on stderr (results, warnings and "
        "errors still print)")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Also show the libraries' own messages (transformers, "
        "torch, onnxruntime logs and warnings) that afmc hides")] = False,
) -> None:
    """Keep library progress bars and deprecation chatter out of afmc's output (every
    command) unless --verbose; --quiet keeps progress and notes off stderr; --version
    prints the version instead."""
    if quiet and verbose:
        typer.echo("error: --quiet and --verbose exclude each other", err=True)
        raise typer.Exit(2)
    screen.err.quiet = quiet
    screen.verbose = verbose
    if not verbose:
        from afmc.console.quiet import quiet_libraries

        quiet_libraries()


@app.command()
def compile(  # noqa: A001
    model: Annotated[str, typer.Argument(
        help="afmc-tiny, a Hugging Face model directory, or an ONNX file (*.onnx)")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Output directory (required unless --dry-run)")] = None,
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
        "--digital-lm-head",
        help="Keep the LM head digital (placement.lm_head=digital)")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUTPUT")] = False,
    passes: Annotated[str | None, typer.Option(
        help="Comma-separated FX passes to run instead of the target's")] = None,
    skip: Annotated[list[str] | None, typer.Option(help="Skip this pass (repeatable)")] = None,
    verify: Annotated[bool, typer.Option(
        "--verify",
        help="Measure the output drift to the FP model after every pass")] = False,
    save_intermediate: Annotated[bool, typer.Option(
        "--save-intermediate",
        help="Save the graph after each pass to OUTPUT/intermediate/ (.pt2 or .onnx)")] = False,
    to_step: Annotated[str, typer.Option(
        "--to-step", help="Stop after this step (capture, data, passes, lower, "
                          "target-lower, fidelity); OUTPUT/intermediate/ holds the model "
                          "as it left it")] = "write",
    from_step: Annotated[str | None, typer.Option(
        "--from-step", help="lower: finish the compile that --to-step passes stopped in "
                            "OUTPUT, without running its passes again")] = None,
    recalibrate: Annotated[bool, typer.Option(
        "--recalibrate",
        help="A model trained by afmc train: calibrate its input ranges instead of using "
             "the learned ones")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the plan (passes, placement per layer, tiles); write "
                          "nothing")] = False,
) -> None:
    """Compile MODEL for a target: writes OUTPUT/model.onnx and OUTPUT/afmc.json."""
    with user_errors():
        from afmc.config import load_config
        from afmc.io.output_dir import check_output

        if output is None and not dry_run:
            raise ValueError("missing option --output / -o (only --dry-run goes without)")
        if config is not None and output is not None:  # the model, calibration, tokenizer:
            check_output(output, [config])  # afmc.compile checks
        overrides = list(set_ or [])
        if digital:
            overrides.append(f"placement.digital={json.dumps(list(digital))}")
        if digital_lm_head:
            overrides.append("placement.lm_head=digital")
        from afmc.api import training_folder
        from afmc.compiler.trained_model import trained_config

        trained = trained_config(training_folder(model)) if config is None else None
        cfg = load_config(config, overrides, base=trained)
        steps = [name.strip() for name in passes.split(",") if name.strip()] \
            if passes is not None else None
        if dry_run:
            from afmc.cli.compile_plan import plan_compile, print_plan

            with afmc_warnings(), screen.status("planning"):
                plan = plan_compile(model, target, cfg, passes=steps, skip=list(skip or []),
                                    tokenizer=tokenizer, recalibrate=recalibrate)
            return print_plan(plan, screen.out)
        from afmc.api import compile as compile_model

        with afmc_warnings(), screen.status("compiling") as status:
            result = compile_model(
                model, target, cfg, calibration=calib, output=output, force=force,
                passes=steps, skip=list(skip or []), verify=verify,
                save_intermediate=save_intermediate, to_step=to_step, from_step=from_step,
                tokenizer=tokenizer, progress=lambda step: status.update(f"compiling: {step}"),
                recalibrate=recalibrate, verbose=screen.verbose,
            )
        from afmc.cli.compile_summary import print_compile_summary

        print_compile_summary(result.record, output, screen.out)


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
    with user_errors():
        check_options(max_tokens=max_tokens, top_k=top_k, read_noise=read_noise)
        from afmc.eval.run_chip import run_chip
        from afmc.runtime.compiled import CompiledModel

        run_chip(CompiledModel(compiled), text, inputs, seed, read_noise, max_tokens, top_k,
                 screen)


@app.command()
def train(
    model: Annotated[str, typer.Argument(
        help="The FP model to adapt: afmc-tiny, a Hugging Face directory or a GGUF file")],
    data: Annotated[str | None, typer.Option(
        help="Training data: afmc synth output, a text file, or stdlib:train; for an ONNX "
        "model, its inputs (.npy, .npz keyed by input name, or .pt)")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Output directory (CKPT)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML/JSON configuration file")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a field: section.field=value, e.g. training.steps=200")] = None,
    steps: Annotated[int | None, typer.Option(help="training.steps")] = None,
    lora_rank: Annotated[int | None, typer.Option(help="training.lora_rank (0: full)")] = None,
    digital: Annotated[list[str] | None, typer.Option(
        help="Keep layers matching this regex digital (repeatable)")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda")] = "cpu",
    resume: Annotated[bool, typer.Option(
        "--resume",
        help="Continue from the newest checkpoint in OUTPUT")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Start over in an existing OUTPUT")] = False,
    max_minutes: Annotated[float | None, typer.Option(
        help="Time budget: stop after the step that ends past it and write the result")] = None,
    estimate: Annotated[bool, typer.Option(
        "--estimate", help="Print the memory one process needs, by term, and exit")] = False,
    processes: Annotated[int, typer.Option(
        help="--estimate: processes the run will have (torchrun --nproc-per-node)")] = 1,
) -> None:
    """Hardware-aware training by distillation; OUTPUT compiles with `afmc compile OUTPUT`.

    Runs under torchrun as it is (DistributedDataParallel, or FSDP2 with --set
    training.engine=fsdp; gloo on CPU, nccl on CUDA).
    """
    with user_errors():
        import os

        from afmc.config import load_config
        from afmc.train.options import check_train_options

        if estimate:
            from afmc.train.memory import estimate_model_memory

            cfg = load_config(config, [*(set_ or []), *([f"training.lora_rank={lora_rank}"]
                                                         if lora_rank is not None else [])])
            if processes < 1:
                raise ValueError(f"--processes must be at least 1, got {processes}")
            for line in estimate_model_memory(model, cfg, processes).lines():
                screen.out.print(line, highlight=False)
            return
        if data is None or output is None:
            raise ValueError(f"missing option {'--data' if data is None else '--output'} "
                             "(or --estimate)")
        check_train_options(model=model, data=data, steps=steps, lora_rank=lora_rank,
                            max_minutes=max_minutes, device=device)

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
        with screen.progress() as bar:
            task = bar.add_task("training", total=cfg.training.steps)

            unit = "samples/s" if model.lower().endswith(".onnx") else "tok/s"

            def report(step: int, total: int, loss: float, rate: float) -> None:
                bar.update(task, completed=step,
                           description=f"training  loss {loss:.4f}  {rate:,.0f} {unit}")

            result = train_model(model, data, output, cfg, resume=resume, force=force,
                                 device=device, progress=report if lead else None,
                                 max_seconds=None if max_minutes is None else max_minutes * 60)
        if lead:
            final = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
            screen.out.print(f"trained {result.steps} steps ({result.seen:,} {result.unit} this "
                             f"run, {result.seconds:.1f} s), final loss {final} -> {output}")


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
             "(a drifting --noise; results in OUTPUT/eval/drift-*.json)")] = None,
    noise: Annotated[str | None, typer.Option(
        help="Programming-noise model: pcm, pcm-drift, reram-wan2022, reram-cmo, additive "
             "or none (default: the compiled one; pcm-drift with --drift)")] = None,
    gdc: Annotated[bool | None, typer.Option(
        "--gdc/--no-gdc", help="Drift compensation of a drifting model (default: on)")] = None,
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
        "--sensitivity",
        help="Each analog layer alone on chip --seed, ranked, and the cumulative curve "
             "(results in OUTPUT/eval/sensitivity-*.json)")] = False,
    seed: Annotated[int, typer.Option(help="--sensitivity: the chip instance")] = 0,
    budget: Annotated[str | None, typer.Option(
        help="--sensitivity: allowed perplexity increase over FP (relative error for "
             "--inputs), e.g. 1%; suggests the layers to keep digital")] = None,
    rules: Annotated[Path | None, typer.Option(
        help="--budget: write the keep-digital configuration here "
             "(default OUTPUT/eval/keep-digital.yaml)")] = None,
    weight_slices: Annotated[int | None, typer.Option(
        help="Bit slices per weight of the chips, instead of the compiled "
             "hardware.weight_slices (docs/evaluation.md)")] = None,
    devices_per_weight: Annotated[int | None, typer.Option(
        help="Device pairs per weight of the chips, instead of the compiled "
             "hardware.devices_per_weight")] = None,
    profile: Annotated[str | None, typer.Option(
        help="Hardware profile (afmc cost): print and store the chips' energy, latency and "
             "area per token beside the scores")] = None,
) -> None:
    """Scores per chip instance and mean +- sample std over seeds, next to the FP view: perplexity
    for --text, for --inputs the error of every output (and accuracy with --labels), or
    for --task the accuracy of a majority vote over n = 1, 2, 4, ... samples. With --drift,
    every chip at every time (resumable: finished chips are kept in OUTPUT/eval/drift.jsonl).
    With --sensitivity, every analog layer alone, ranked (resumable, from
    OUTPUT/eval/sensitivity.jsonl). Every mode writes its result to
    OUTPUT/eval/KIND-SETTINGS-HASH.json, beside the results of other settings."""
    with user_errors():
        from afmc.eval.command import run_eval
        from afmc.eval.request import EvalRequest

        run_eval(EvalRequest(
            compiled, text=text, inputs=inputs, labels=labels, seeds=seeds,
            max_tokens=max_tokens, seq_len=seq_len, read_noise=read_noise, drift=drift,
            noise=noise, gdc=gdc, jobs=jobs, json_out=json_out, task=task, samples=samples,
            vote=vote, temperature=temperature, sensitivity=sensitivity, seed=seed,
            budget=budget, rules=rules, weight_slices=weight_slices,
            devices_per_weight=devices_per_weight, profile=profile), screen)


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
    fp: Annotated[bool, typer.Option(
        "--fp", help="Generate with the FP view instead of a chip")] = False,
) -> None:
    """Continue --prompt with a compiled language model (KV-cache decoding): prints the
    generated text; the same seeds give the same text."""
    with user_errors():
        check_options(max_new_tokens=max_new_tokens, read_noise=read_noise)
        from afmc.eval.run_chip import generate_text
        from afmc.runtime.compiled import CompiledModel
        from afmc.runtime.generation import GenerationOptions

        generate_text(CompiledModel(compiled), prompt,
                      GenerationOptions(max_new_tokens, temperature, top_k, top_p, sample_seed),
                      None if fp else seed, read_noise, screen)


@app.command("lm-eval", add_help_option=False,
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def lm_eval_command(ctx: typer.Context) -> None:
    """lm-evaluation-harness with the model type "afmc" registered: every argument is
    lm-eval's, e.g. --model afmc --model_args path=OUT,seed=0 --tasks NAME (docs/lm-eval.md)."""
    with user_errors():
        from afmc.eval.lm_eval_run import run_lm_eval

        run_lm_eval(ctx.args)


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
    force: Annotated[bool, typer.Option("--force", help="Start over in an existing DATA")] = False,
) -> None:
    """Sample training text from MODEL itself; rerun the same command to resume."""
    with user_errors():
        from afmc.train.synth_options import check_synth_options

        check_synth_options(tokens, seq_len, shard_sequences, batch_size, temperature, top_k,
                            top_p)
        from afmc.train.synth import synthesize

        with screen.bar_from_first_report("tokens") as progress:
            result = synthesize(
                model, output, tokens, seq_len=seq_len, shard_sequences=shard_sequences,
                batch_size=batch_size, temperature=temperature, top_k=top_k, top_p=top_p,
                seed=seed, force=force, progress=progress)
        kept = f" ({result.kept_shards} kept from an earlier run)" if result.kept_shards else ""
        shards = f"{result.shards} shard" + ("s" if result.shards > 1 else "")
        screen.out.print(f"{result.sequences} sequences of {result.seq_len} tokens in "
                         f"{shards}{kept} -> {output}")


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
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the tables' data as JSON instead of tables")] = False,
) -> None:
    """Layers, tiles and utilization of a compiled model; draws its tile map as SVG and
    writes one self-contained HTML page with the evaluation results of OUTPUT/eval."""
    with user_errors():
        from afmc.report import check_report_options
        from afmc.report import report as print_report

        check_report_options(strategy, svg, html)
        print_report(compiled, svg=svg, strategy=strategy, console=screen.out, html=html,
                     json_out=json_out)


app.command()(cost)
app.command()(targets)
app.add_typer(passes_app, name="passes")
app.add_typer(config_app, name="config")
add_examples(app)

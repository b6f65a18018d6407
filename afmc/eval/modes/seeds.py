"""afmc eval --text: the perplexity of a language model per chip instance, or an
encoder's embedding error, mean +- sample std over the chips, next to the FP view."""

from __future__ import annotations

import numpy as np

from afmc.console.screen import Screen
from afmc.data.text_source import read_text
from afmc.data.tokenizer import token_windows
from afmc.eval.embedding import evaluate_encoder, is_encoder
from afmc.eval.evaluate import evaluate
from afmc.eval.options import within_context
from afmc.eval.request import EvalPlan
from afmc.eval.results import write_result
from afmc.eval.spread import json_number, spread_label, std_text


def one_run_note(target: str) -> str:
    """eval's note for a target whose chips do not vary by seed."""
    return f"{target} target (digital): one run, its chips do not vary (--seeds ignored)"


def run(plan: EvalPlan, screen: Screen) -> None:
    """Score every chip on --text (module docstring); print, and write the result."""
    request, model = plan.request, plan.model
    if request.labels is not None:
        raise ValueError("--labels goes with --inputs (tensors), not with --text")
    ids = model.tokenizer().encode(read_text(request.text))
    seq_len = within_context(model, request.seq_len, "--seq-len", screen.out)
    if is_encoder(model.record):
        _encoder(plan, ids, seq_len, screen)
        return
    with screen.progress() as bar:
        current = [bar.add_task("fp windows", total=None)]  # then the chips' task

        def on_result(name: str, value: float) -> None:
            screen.out.print(f"{name:>30}: perplexity {value:.4f}")
            if name == "fp":
                current[0] = bar.add_task("chips", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(current[0], completed=done, total=total)

        report = evaluate(model, ids, request.chip_seeds(), seq_len=seq_len,
                          max_tokens=request.max_tokens, read_noise=request.read_noise,
                          noise=plan.noise, jobs=plan.jobs, on_result=on_result,
                          progress=progress)
    if report.digital:
        screen.out.print(f"FP perplexity {report.fp:.4f}; {report.digital} {report.mean:.4f} "
                         f"({report.mean / report.fp - 1:+.2%}), {report.tokens} tokens")
        screen.out.print(one_run_note(report.digital))
    else:
        screen.out.print(f"FP perplexity {report.fp:.4f}; analog ({plan.noise_label()}) over "
                         f"{request.seeds} chip(s): "
                         f"{report.mean:.4f} +- {std_text(report.std)} "
                         f"({spread_label(len(report.chips))}; {report.tokens} tokens)")
    _write(plan, "seeds", {"tokens": report.tokens, "fp": report.fp,
                           "noise_free": report.noise_free, "chips": report.chips,
                           "mean": report.mean, "std": json_number(report.std),
                           "digital": report.digital}, seq_len, screen)


def _encoder(plan: EvalPlan, ids: np.ndarray, seq_len: int, screen: Screen) -> None:
    """An encoder: relative error of the mean-pooled embeddings to the FP view."""
    request = plan.request
    windows = token_windows(ids, min(seq_len, len(ids)), request.max_tokens)
    report = evaluate_encoder(plan.model, windows, request.chip_seeds(),
                              read_noise=request.read_noise, noise=plan.noise)
    for seed, error in report.chips.items():
        screen.out.print(f"{report.digital or f'seed {seed}':>10}: embedding relative error "
                         f"{error.relative_error:.4f}, cosine {error.cosine:.4f}")
    screen.out.print(f"embedding relative error vs FP over {report.windows} windows: "
                     f"{report.mean:.4f} +- {std_text(report.std)} "
                     f"({spread_label(len(report.chips))})")
    _write(plan, "embedding", {"windows": report.windows, "digital": report.digital,
                               "chips": {seed: vars(error) for seed, error in report.chips.items()},
                               "mean": report.mean, "std": json_number(report.std)},
           seq_len, screen)


def _write(plan: EvalPlan, kind: str, result: dict, seq_len: int, screen: Screen) -> None:
    """The result file of `kind` (and its --json copy), keyed by the noise model, the
    chips and the windows."""
    chips = plan.request.seeds if plan.model.varies_by_seed else 1
    settings = plan.settings(seeds=chips, max_tokens=plan.request.max_tokens, seq_len=seq_len)
    path = write_result(plan.model.out_dir, kind, [plan.noise_label(), f"n{chips}"],
                        settings, plan.with_cost(result), copy=plan.request.json_out)
    screen.out.print(f"-> {path}", soft_wrap=True)

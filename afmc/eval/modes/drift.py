"""afmc eval --drift: every chip at every time after programming, mean +- sample std per
time, as a table and a result file (the points kept in OUT/eval/drift.jsonl as they
finish, afmc.eval.drift)."""

from __future__ import annotations

from rich.table import Table

from afmc.console.screen import Screen
from afmc.data.model_inputs import load_inputs
from afmc.eval.drift import DRIFT_LOG, DriftReport, evaluate_drift
from afmc.eval.modes.windows import lm_windows
from afmc.eval.options import tensor_source
from afmc.eval.perplexity import PerplexityScorer
from afmc.eval.request import EvalPlan
from afmc.eval.results import write_result
from afmc.eval.scoring import Scorer
from afmc.eval.spread import spread_label, std_text
from afmc.eval.tensor_eval import OutputErrorScorer
from afmc.io.layout import EVAL_DIR


def time_label(seconds: float) -> str:
    """A drift time as people say it: 0 s, 1 h, 1 d, 1 y (else seconds)."""
    for unit, size in (("y", 31536000.0), ("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def run(plan: EvalPlan, screen: Screen) -> None:
    """Read every chip at every --drift time (module docstring); print, write the result."""
    request, model, times = plan.request, plan.model, plan.times or []
    scorer: Scorer
    if tensor_source(model, request.text, request.inputs) is not None:
        scorer = OutputErrorScorer.against_fp(model, load_inputs(request.inputs,
                                                                 model.signature()))
    else:
        windows = lm_windows(plan, "--drift", screen)
        scorer = PerplexityScorer.against_fp(model, windows)
        screen.out.print(f"FP perplexity {scorer.fp:.4f} ({windows.size} tokens)")
    folder = model.out_dir / EVAL_DIR
    folder.mkdir(exist_ok=True)
    seeds = request.chip_seeds()
    with screen.progress() as bar:
        task = bar.add_task(f"{len(seeds)} chips x {len(times)} times",
                            total=len(seeds) * len(times))
        report = evaluate_drift(model, scorer, seeds, times, plan.noise,
                                read_noise=request.read_noise, jobs=plan.jobs,
                                log=folder / DRIFT_LOG, on_point=lambda *_: bar.advance(task))
    screen.out.print(_table(report))
    noise = plan.noise
    settings = plan.settings(seeds=len(seeds), times_s=times, max_tokens=request.max_tokens,
                             seq_len=request.seq_len)
    settings["noise"].pop("drift_time_s", None)
    path = write_result(model.out_dir, "drift",
                        [noise.model, "gdc" if noise.drift_compensation else "no_gdc",
                         f"n{len(seeds)}"], settings, plan.with_cost(report.to_json()),
                        copy=request.json_out)
    screen.out.print(f"-> {path}", soft_wrap=True)


def _table(report: DriftReport) -> Table:
    """A row per time: mean, sample std and the first 8 chips."""
    noise = report.noise
    metric = report.metric.replace("_", " ")
    table = Table(title=f"{metric} over time after programming ({noise.model}, "
                        f"drift compensation {'on' if noise.drift_compensation else 'off'}; "
                        f"{spread_label(len(report.seeds))})",
                  caption=f"time 0: the chips as programmed, before any drift; their "
                          f"programming noise is {noise.model}'s own, so it differs from a "
                          "plain afmc eval of another noise model",
                  show_edge=False)
    for column in ("time", "mean", "sample std",
                   *(f"seed {seed}" for seed in report.seeds[:8])):
        table.add_column(column)
    for row in report.summary():
        table.add_row(time_label(row["time_s"]), f"{row['mean']:.4f}", std_text(row["std"]),
                      *(f"{value:.4f}" for value in report.at(row["time_s"])[:8]))
    return table

"""afmc eval --inputs: the error of every output per chip against the FP view, mean +-
sample std over the chips, and with --labels the accuracy."""

from __future__ import annotations

from rich.table import Table

from afmc.console.screen import Screen
from afmc.eval.modes.seeds import one_run_note
from afmc.eval.request import EvalPlan
from afmc.eval.results import write_result
from afmc.eval.spread import number_text, spread_label
from afmc.eval.tensor_eval import METRICS, TensorEvalReport, evaluate_tensors


def run(plan: EvalPlan, screen: Screen) -> None:
    """Score every chip on --inputs (module docstring); print, and write the result."""
    request, model = plan.request, plan.model
    with screen.bar_from_first_report("chips") as progress:
        report = evaluate_tensors(model, request.inputs, request.chip_seeds(),
                                  labels_file=request.labels, read_noise=request.read_noise,
                                  noise=plan.noise, progress=progress)
    screen.out.print(_table(report, plan.noise_label()))
    if report.fp_accuracy is not None:
        screen.out.print(f"FP accuracy {report.fp_accuracy:.4f}")
    if report.digital:
        screen.out.print(one_run_note(report.digital))
    chips = request.seeds if model.varies_by_seed else 1
    labels = None if request.labels is None else str(request.labels)
    path = write_result(model.out_dir, "inputs", [plan.noise_label(), f"n{chips}"],
                        plan.settings(seeds=chips, labels=labels),
                        plan.with_cost(report.to_json()),
                        copy=request.json_out)
    screen.out.print(f"-> {path}", soft_wrap=True)


def _table(report: TensorEvalReport, noise: str) -> Table:
    """A row per chip and output, then the mean and sample std over the chips; the title
    names what ran: the digital target, or the analog noise model."""
    accuracy = report.fp_accuracy is not None
    if report.digital:
        title = f"{report.digital} (digital) outputs vs the FP view on {report.samples} samples"
    else:
        title = (f"analog ({noise}) outputs vs the FP view on {report.samples} samples "
                 f"(noise-free: the stored weights, no programming noise; "
                 f"{spread_label(len(report.chips))})")
    table = Table(title=title, show_edge=False)
    for column in ("chip", "output", "relative error", "SQNR (dB)", "cosine",
                   "top-1 agreement") + (("accuracy",) if accuracy else ()):
        table.add_column(column)
    rows = ([("noise-free", report.noise_free)] if report.noise_free else []) + [
        (report.digital or f"seed {seed}", scores) for seed, scores in report.chips.items()]
    for label, scores in rows:
        for name, error in scores.errors.items():
            table.add_row(label, name, f"{error.relative_error:.4g}", f"{error.sqnr_db:.2f}",
                          f"{error.cosine:.4f}", number_text(error.agreement, ".4f"),
                          *((f"{scores.accuracy:.4f}",) if accuracy else ()))
    if not report.digital:
        spread = report.accuracy_spread()
        for index, label in enumerate(("mean", "sample std")):
            for name in report.outputs:
                cells = [report.spread(name, metric)[index] for metric in METRICS]
                table.add_row(label, name, number_text(cells[0], ".4g"),
                              number_text(cells[1], ".2f"), number_text(cells[2], ".4f"),
                              number_text(cells[3], ".4f"),
                              *((number_text(spread[index], ".4f"),) if spread else ()))
    return table

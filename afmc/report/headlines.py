"""The evaluation results of OUT/eval in one line each: the table `afmc report` prints.

Each result file is a row: its name (the settings it was made with, afmc.eval.results)
and its headline, the number that answers the evaluation: the mean +- sample std over
the chips (seeds, embedding, inputs), the metric at the last drift time, the
all-analog value and the layers kept digital (sensitivity), the FP and mean chip
accuracy at the most samples (test-time compute).
"""

from __future__ import annotations

from rich.table import Table

from afmc.eval.spread import std_text
from afmc.report.results import Found


def headline(found: Found) -> str:
    """The number that answers the evaluation of one result file (module rules)."""
    result = found.result
    if result.kind == "seeds":
        return (f"perplexity {result.mean:.4f} +- {std_text(result.std)} over "
                f"{len(result.chips)} chip(s) (FP {result.fp:.4f})")
    if result.kind == "embedding":
        return (f"embedding relative error {result.mean:.4f} +- {std_text(result.std)} over "
                f"{len(result.chips)} chip(s)")
    if result.kind == "inputs":
        first = result.outputs[0]
        mean = result.mean.outputs[first].get("relative_error")
        text = (f"{first}: relative error {'n/a' if mean is None else f'{mean:.4g}'} +- "
                f"{std_text(result.std.outputs[first].get('relative_error'))}")
        if result.mean.accuracy is not None:
            text += f", accuracy {result.mean.accuracy:.4f}"
        return text
    if result.kind == "drift":
        last = result.summary[-1]
        return (f"{result.metric.replace('_', ' ')} {last.mean:.4f} +- {std_text(last.std)} "
                f"at {last.time_s:g} s over {last.chips} chip(s)")
    if result.kind == "sensitivity":
        kept = "" if result.budget is None else f", {len(result.keep_digital)} kept digital"
        return (f"all analog {result.all_analog:.4f} over {len(result.layers)} layers "
                f"(chip {result.seed}){kept}")
    accuracy = {curve.label: curve.accuracy[-1] for curve in result.curves}
    chips = [value for label, value in accuracy.items() if label != "FP"]
    return (f"accuracy at n={result.samples[-1]}: FP {accuracy.get('FP', float('nan')):.3f}, "
            f"chips {sum(chips) / len(chips):.3f}" if chips else "no chips")


def results_table(results: dict[str, list[Found]]) -> Table | None:
    """A row per result file (name, headline); None when OUT/eval holds none. A name is
    never broken (the narrow terminal wraps the headline instead) nor cut."""
    found = [each for files in results.values() for each in files]
    if not found:
        return None
    table = Table(title="evaluation results (OUT/eval)", show_edge=False)
    table.add_column("result file", no_wrap=True, min_width=max(len(each.path.name)
                                                                for each in found))
    table.add_column("headline", overflow="fold")
    for each in found:
        table.add_row(each.path.name, headline(each))
    return table

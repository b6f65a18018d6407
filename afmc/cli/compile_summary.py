"""What `afmc compile` prints when it is done: the fidelity to the FP model (when the
compile measured it), the time of every step, and the placement in one line (or, for a
compile stopped by --to-step, where its intermediate model is)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def fidelity_line(fidelity: dict[str, Any]) -> str:
    """The record's "fidelity": FP perplexity, then the noise-free file and chip 0."""
    parts = []
    for key, label in (("noise_free", "no programming noise"), ("chip_0", "chip 0")):
        if key in fidelity:
            scores = fidelity[key]
            ppl = f"perplexity {scores['perplexity']:.4g}, " if "perplexity" in scores else ""
            parts.append(f"{label}: {ppl}relative error {scores['relative_error']:.3g}")
    fp = f"FP perplexity {fidelity['fp_perplexity']:.4g}; " if "fp_perplexity" in fidelity else ""
    return f"fidelity on {fidelity['data']}: {fp}{'; '.join(parts)}"


def print_compile_summary(record: dict[str, Any], output: Path, out: Console) -> None:
    """Print the summary of the compile record `record` written to `output`."""
    if "fidelity" in record:
        out.print(fidelity_line(record["fidelity"]))
    table = Table(title=f"afmc compile -> {output}", show_edge=False)
    verified = any("output_drift" in step for step in record["passes"])
    for column in ("step", "seconds") + (("output drift vs FP",) if verified else ()):
        table.add_column(column)
    for step in record["passes"]:
        drift = step.get("output_drift")
        table.add_row(step["name"], f"{step['seconds']:.2f}",
                      *((f"{drift:.2e}" if drift is not None else "",) if verified else ()))
    out.print(table)
    if "to_step" in record:
        out.print(f"stopped after step {record['to_step']}: the model as it left it is in "
                  f"{output / 'intermediate'}")
        return
    summary = record["summary"]
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

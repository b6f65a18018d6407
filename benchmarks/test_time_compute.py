"""Test-time compute on analog chips: majority-vote accuracy of afmc-adder vs samples.

What is run: ``--model`` (default the built-in afmc-adder; a directory, such as the
output of ``afmc train afmc-adder ...``, is the hook for a hardware-aware trained
adder) compiled for aimc with its defaults (afmc-adder: its own calibration text),
then afmc.eval.test_time_compute on ``--task`` (default afmc-adder's 200 held-out
3-digit + 3-digit problems): ``--samples`` (16) answers per problem at
``--temperature`` (1.0), majority vote over the first n = 1, 2, 4, ... samples, for
the FP view and chips 0..``--seeds``-1 (pcm programming noise, 8-bit DAC/ADC), plus
the greedy accuracy (temperature 0) of each for reference.

Prints the accuracy table, writes its result file to OUT/eval and the figure
``--figure`` (docs/test-time-compute.png: accuracy vs n, log2 x axis, one line per
chip and FP, the FP greedy accuracy dashed).

    python benchmarks/test_time_compute.py [--samples 16] [--seeds 3] [--temperature 1.0]
        [--model afmc-adder] [--task FILE] [--out DIR] [--figure docs/test-time-compute.png]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402

import afmc  # noqa: E402
from afmc.eval.test_time_compute import accuracy_table, eval_task, sweep_task  # noqa: E402
from afmc.models import BUILTIN_MODELS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def plot(result: dict, greedy: float, title: str, figure: Path) -> None:
    """Accuracy vs n (log2 x axis), one line per curve; the FP greedy accuracy dashed."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for curve in result["curves"]:
        style = {"color": "black", "linewidth": 2.2} if curve["seed"] is None else {}
        ax.plot(result["samples"], curve["accuracy"], marker="o", label=curve["label"], **style)
    ax.axhline(greedy, color="black", linestyle="--", linewidth=1, label="FP greedy")
    ax.set_xscale("log", base=2)
    ax.set_xticks(result["samples"], [str(n) for n in result["samples"]])
    ax.set_xlabel("samples per problem n (majority vote)")
    ax.set_ylabel(f"accuracy ({result['problems']} problems)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(figure, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="afmc-adder", help="built-in name or HF directory")
    parser.add_argument("--task", type=Path,
                        default=BUILTIN_MODELS["afmc-adder"] / "addition.jsonl")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--out", type=Path, help="compile output (default: a temporary one)")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "test-time-compute.png")
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "adder"
        start = time.perf_counter()
        afmc.compile(args.model, "aimc", output=out)
        console.print(f"compiled {args.model} for aimc in {time.perf_counter() - start:.1f} s")
        model = afmc.load(out)
        start = time.perf_counter()
        greedy = sweep_task(model, args.task, samples=1, seeds=range(args.seeds),
                            temperature=0.0)
        fp_greedy = greedy["curves"][0]["accuracy"][0]
        result, _ = eval_task(model, args.task, samples=args.samples, vote="majority",
                              seeds=args.seeds, temperature=args.temperature)
        console.print(f"sweep: {time.perf_counter() - start:.1f} s; greedy accuracy "
                      "(temperature 0): " + ", ".join(f"{c['label']} {c['accuracy'][0]:.3f}"
                                                      for c in greedy["curves"]))
        console.print(accuracy_table(result))
        plot(result, fp_greedy, f"{Path(args.model).name} on aimc, temperature "
             f"{args.temperature:g}", args.figure)
        console.print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()

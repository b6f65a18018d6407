"""Accuracy against cost: perplexity on chips and energy per token, over devices, bit
slicing and device pairs per weight (docs/cost.md, "Bit-sliced weights, accuracy and cost").

For each compiled output (afmc-tiny, compiled here with its defaults; SmolLM2-135M, an
output of ``benchmarks/real_llm.py --rows aimc --keep DIR`` given as ``--smollm2 DIR/aimc``)
and each point -- a noise model of ``--noise`` (``name:row`` for ``drift_scaling=row``)
with ``hardware.weight_slices`` in ``--slices`` (one device pair) or
``hardware.devices_per_weight`` in ``--devices`` (one slice) -- the chips of
``afmc.load(OUT, weight_slices=..., devices_per_weight=...)`` are scored over ``--seeds``
seeds on held-out text (afmc-tiny: stdlib:heldout; SmolLM2: the Apache-2.0 text of
benchmarks/real_llm.py) and costed on ``--profile`` (``afmc.cost.estimate_record`` on the
same record), beside the digital-int8 baseline. The compile's choices (ranges, smoothing,
split) are those of the default hardware for every point. Prints a table, writes
``--json`` and plots perplexity against energy per token (``--plot``).

    python benchmarks/cost_accuracy.py --smollm2 /work/keep/smol/aimc --seeds 3 \\
        --plot docs/cost_accuracy.png --json cost_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_llm import apache_license  # noqa: E402

BASELINE = "digital-int8"


def points(noise: list[str], slices: list[int], devices: list[int]) -> list[tuple[str, int, int]]:
    """(noise model, weight slices, devices per weight): every slicing at one device pair,
    then every device count at one slice, per noise model."""
    grid = []
    for model in noise:
        grid += [(model, n, 1) for n in slices]
        grid += [(model, 1, d) for d in devices if d > 1 or 1 not in slices]
    return grid


def sweep(name: str, out: Path, ids, grid, seeds: int, profile: str) -> list[dict]:
    """Score and cost every point of `grid` on the output `out` (module docstring)."""
    import afmc
    from afmc.cost import estimate_record
    from afmc.eval.evaluate import evaluate
    from afmc.runtime.noise import NoiseConfig

    rows = []
    baseline = estimate_record(afmc.load(out).record, BASELINE)
    fp = None
    for noise, slices, devices in grid:
        model = afmc.load(out, weight_slices=slices, devices_per_weight=devices)
        name_only, _, scaling = noise.partition(":")
        config = NoiseConfig.model_validate({**model.noise.model_dump(), "model": name_only,
                                             "drift_scaling": scaling or "layer"})
        start = time.perf_counter()
        report = evaluate(model, ids, list(range(seeds)), max_tokens=len(ids), noise=config)
        cost = estimate_record(model.record, profile)
        fp = fp or report.fp
        row = {"model": name, "noise": noise, "weight_slices": slices,
               "devices_per_weight": devices, "fp": report.fp,
               "noise_free": report.noise_free, "chips": report.chips,
               "mean": report.mean, "std": report.std,
               "energy_uj": cost.energy_pj / 1e6, "latency_us": cost.latency_ns / 1e3,
               "tiles": cost.tiles, "area_mm2": cost.area_mm2,
               "baseline_energy_uj": baseline.energy_pj / 1e6,
               "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        print(f"{name:10} {noise:14} slices {slices} devices {devices}: perplexity "
              f"{row['mean']:8.2f} +- {row['std']:6.2f} ({row['mean'] / fp:5.2f}x FP "
              f"{fp:.2f}; noise-free {row['noise_free']:.2f}), {row['energy_uj']:8.3f} uJ/token "
              f"({row['baseline_energy_uj'] / row['energy_uj']:6.1f}x less than {BASELINE}), "
              f"{row['tiles']} tiles, {row['seconds']:.0f} s", flush=True)
    return rows


CEILING = 10.0  # plotted perplexity / FP: lines wholly above it are named, not drawn


def plot(rows: list[dict], path: Path) -> None:
    """Perplexity / FP against energy per token, one panel per model, one line per device
    and knob (slices, device pairs); a line wholly above CEILING x FP is listed in the
    panel instead, so the usable ones keep their scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(row["model"] for row in rows))
    figure, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for axis, name in zip(axes[0], models, strict=True):
        mine = [row for row in rows if row["model"] == name]
        lost = []
        for noise in dict.fromkeys(row["noise"] for row in mine):
            for knob, label, marker in (("weight_slices", "slices", "o"),
                                        ("devices_per_weight", "devices", "s")):
                other = "devices_per_weight" if knob == "weight_slices" else "weight_slices"
                line = sorted((row for row in mine if row["noise"] == noise
                               and row[other] == 1), key=lambda row: row[knob])
                if knob == "devices_per_weight":
                    line = [row for row in line if row["weight_slices"] == 1]
                xs = [row["energy_uj"] for row in line]
                ys = [row["mean"] / row["fp"] for row in line]
                errors = [row["std"] / row["fp"] for row in line]
                if min(ys) > CEILING:
                    lost.append(f"{noise} {label}")
                    continue
                axis.errorbar(xs, ys, yerr=errors, marker=marker, capsize=3,
                              label=f"{noise}, {label} " + ",".join(str(row[knob])
                                                                    for row in line))
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("energy per token on ibm-pcm-64core (uJ)")
        axis.set_ylabel("perplexity on chips / FP")
        axis.set_title(f"{name} (int8 digital: {mine[0]['baseline_energy_uj']:.0f} uJ/token)")
        for line in dict.fromkeys(lost):
            axis.plot([], [], " ", label=f"{line}: above {CEILING:g}x FP")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    from afmc.console.quiet import quiet_libraries

    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm2", type=Path, default=None,
                        help="SmolLM2 output of benchmarks/real_llm.py --rows aimc --keep DIR")
    parser.add_argument("--noise", default="pcm,reram-wan2022,reram-cmo")
    parser.add_argument("--slices", default="1,2,4")
    parser.add_argument("--devices", default="1,2,4")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--profile", default="ibm-pcm-64core")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--previous", type=Path, default=None,
                        help="the --json of an earlier run: its rows join this run's "
                             "JSON and plot (e.g. more noise models on the same outputs)")
    args = parser.parse_args()
    grid = points(args.noise.split(","), [int(n) for n in args.slices.split(",")],
                  [int(d) for d in args.devices.split(",")])

    import afmc
    from afmc.data.text_source import read_text

    rows = json.loads(args.previous.read_text()) if args.previous else []
    with tempfile.TemporaryDirectory(prefix="afmc-cost-accuracy-") as tmp:
        tiny = afmc.compile("afmc-tiny", "aimc", output=Path(tmp) / "tiny").output
        ids = afmc.load(tiny).tokenizer().encode(read_text("stdlib:heldout"))[:args.tokens]
        rows += sweep("afmc-tiny", tiny, ids, grid, args.seeds, args.profile)
    if args.smollm2 is not None:
        ids = afmc.load(args.smollm2).tokenizer().encode(apache_license())[:args.tokens]
        rows += sweep("SmolLM2", args.smollm2, ids, grid, args.seeds, args.profile)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()

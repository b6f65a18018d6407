"""Reproduce the Analog Foundation Models result at small scale: afmc-tiny under a noise sweep.

Models (rows): FP; afmc-tiny compiled for aimc as it is (off-the-shelf, default
configuration: smooth-inputs, search calibration); afmc-tiny after hardware-aware
training (afmc.train.train, distillation on stdlib:train with the AFM recipe:
weight noise 0.03, weight clipping at 2.5 std, learned input ranges) compiled with
its learned ranges; the control that isolates training, the same start clipped at 2.5
std and compiled as a trained checkpoint with no training step (training.steps=0:
ranges from the data initialisation of the first steps); the two ablations with the
same budget, clipping only (weight noise 0) and noise injection only (clip_sigma 0);
and round-to-nearest int4 of the FP model and of the trained checkpoint (digital: no
noise, one number each).

Noise settings (columns), each without and with read noise 0.04: the AFM pcm
programming-noise model with its std scaled x1, x2, x4 (NoiseConfig.pcm_scale),
and additive noise of 5, 10, 20 % of each row slice's max |w|. Every analog model
is scored on the same `--chips` chip instances (seeds 0..chips-1) per setting:
held-out perplexity (stdlib:heldout, first `--tokens` byte tokens, windows of
256) through ONNX Runtime on the compiled files, mean +- sample std (ddof=1) over chips.

    python benchmarks/reproduce_afm.py [--quick] [--steps 24] [--chips 10] [--tokens 4096]
        [--device cpu|cuda] [--out DIR] [--json PATH] [--plot docs/reproduction.png]

Training budget by default: 24 steps of 8 x 256 tokens at the AFM learning rate 2e-5
(docs/reproduction.md: results, compute, how the budget was chosen). Training runs on
--device (cuda: the same recipe on a GPU, for longer budgets); compiling and scoring
always run on the CPU (ONNX Runtime). With --out, trained checkpoints whose recorded
configuration matches are reused, not retrained. A run that moved no weight is
reported with a warning.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "afmc-tiny"
TRAIN_DATA = "stdlib:train"
READ_NOISE = 0.04
PCM_SCALES = (1.0, 2.0, 4.0)
ADDITIVE_PERCENT = (5, 10, 20)
# name: (weight_noise, clip_sigma) of the training run; the AFM defaults are 0.03 and 2.5.
TRAINED_ROWS = {
    "control: clipped, no training": (0.03, 2.5),  # trained for 0 steps (training.steps=0)
    "trained (noise + clip)": (0.03, 2.5),
    "clip only": (0.0, 2.5),
    "noise only": (0.03, 0.0),
}
CONTROL = "control: clipped, no training"
WARMUP = 0.125
OFF_THE_SHELF = "off-the-shelf"
INT4_ROWS = {"int4 of FP": OFF_THE_SHELF, "int4 of trained": "trained (noise + clip)"}


def noise_settings() -> list[tuple[str, dict[str, Any], float]]:
    """(label, NoiseConfig fields, read noise) of every column, in table order."""
    settings = []
    for read in (0.0, READ_NOISE):
        suffix = f" +r{READ_NOISE:g}" if read else ""
        for scale in PCM_SCALES:
            settings.append((f"pcm x{scale:g}{suffix}", {"model": "pcm", "pcm_scale": scale},
                             read))
        for percent in ADDITIVE_PERCENT:
            settings.append((f"add {percent}%{suffix}",
                             {"model": "additive", "additive_std": percent / 100}, read))
    return settings


def training_config(steps: int, batch_size: int, seq_len: int, learning_rate: float,
                    weight_noise: float, clip_sigma: float):
    """The AFM training section with this budget; ranges initialised over the first third
    of the steps (AFM: 500 of a far longer run), learned afterwards; a warm-up of 1/8 of
    the steps (AFM's 1.6 % is no step at all in a run this short)."""
    from afmc.config import load_config

    return load_config(None, [
        f"training.steps={steps}", f"training.batch_size={batch_size}",
        f"training.seq_len={seq_len}", f"training.learning_rate={learning_rate}",
        f"training.weight_noise={weight_noise}", f"training.clip_sigma={clip_sigma}",
        f"training.range_init_batches={max(1, steps // 3)}", f"training.warmup={WARMUP}",
        f"training.checkpoint_every={max(1, steps)}",
    ])


def weight_change(folder: Path) -> float:
    """Relative L2 change ||W - W0|| / ||W0|| of the trained model's digital weights
    (embeddings, norms: not clipped, so only the optimizer moves them) over the original."""
    from safetensors.torch import load_file

    from afmc.models import resolve_model_path

    before = load_file(str(Path(resolve_model_path(MODEL)) / "model.safetensors"))
    after = load_file(str(folder / "model.safetensors"))
    names = [name for name in before if "proj" not in name and "lm_head" not in name]
    change = sum(float((after[n].double() - before[n].double()).square().sum()) for n in names)
    norm = sum(float(before[n].double().square().sum()) for n in names)
    return (change / norm) ** 0.5


def train_row(name: str, folder: Path, config, device: str) -> dict[str, Any]:
    """Train (or reuse a finished run with the same configuration in) `folder`."""
    from afmc.compiler.trained_model import TRAINING_RECORD, trained_config
    from afmc.train.trainer import train

    wanted = config.model_dump(mode="json")
    if (folder / TRAINING_RECORD).is_file() and trained_config(folder) == wanted:
        record = json.loads((folder / TRAINING_RECORD).read_text())
        losses, seconds, reused = record["losses"], record["seconds_this_run"], True
    else:
        started = time.perf_counter()

        def progress(step: int, steps: int, loss: float, rate: float) -> None:
            if step == 1 or step % max(1, steps // 5) == 0 or step == steps:
                print(f"  [{name}] step {step}/{steps} loss {loss:.5f} ({rate:.0f} tok/s, "
                      f"{time.perf_counter() - started:.0f} s)", flush=True)

        result = train(MODEL, TRAIN_DATA, folder, config, force=True, device=device,
                       progress=progress)
        losses, seconds, reused = result.losses, result.seconds, False
    window = max(1, len(losses) // 5)
    change = weight_change(folder)
    if change == 0 and config.training.steps > 0:
        print(f"  WARNING [{name}]: training left the digital weights unchanged: train() "
              "updated no weights (only input ranges and clipping)",
              flush=True)
    return {"train_s": round(seconds, 1), "reused": reused, "losses": losses,
            "digital_weight_change": change,
            "loss_first": float(np.mean(losses[:window])) if losses else float("nan"),
            "loss_last": float(np.mean(losses[-window:])) if losses else float("nan")}


def compile_row(model: str | Path, target: str, output: Path) -> float:
    import afmc

    started = time.perf_counter()
    afmc.compile(model, target, output=output, force=True)
    return time.perf_counter() - started


def peak_to_rms(out: Path) -> float:
    """Mean over the analog layers' row slices of max |w| / rms(w) of the compiled weights.

    Both noise models scale their std with max |w| of each row slice, so at a given
    setting the noise relative to a typical weight grows with this ratio.
    """
    import onnx
    from onnx import numpy_helper

    from afmc.io.layout import MODEL_FILE
    from afmc.runtime.chip import load_record

    record = load_record(out)
    model = onnx.load(str(out / MODEL_FILE))
    weights = {init.name: init for init in model.graph.initializer}
    ratios = []
    for layer in record["layers"]:
        if not layer.get("onnx_weight"):
            continue
        weight = numpy_helper.to_array(weights[layer["onnx_weight"]]).astype(np.float64)
        for block in np.split(weight, np.cumsum(layer["slice_sizes"])[:-1], axis=1):
            rms = np.sqrt((block ** 2).mean(axis=1))
            ratios.append(np.abs(block).max(axis=1)[rms > 0] / rms[rms > 0])
    return float(np.concatenate(ratios).mean())


def score_analog(out: Path, windows: np.ndarray, chips: int) -> dict[str, Any]:
    """FP view, noise-free analog, and every noise setting over `chips` chips of `out`."""
    from afmc.api import load
    from afmc.eval.perplexity import perplexity
    from afmc.eval.spread import json_number, mean_std, spread_label, std_text
    from afmc.runtime.noise import NoiseConfig

    started = time.perf_counter()
    model = load(out)
    entry: dict[str, Any] = {
        "peak_to_rms": peak_to_rms(out),
        "fp_view": perplexity(model.fp_view().run, windows),
        "noise_free": perplexity(model.chip(None).run, windows),
        "settings": {},
    }
    for label, fields, read in noise_settings():
        noise = NoiseConfig(**fields)
        values = [perplexity(model.chip(seed, read_noise=read, noise=noise).run, windows)
                  for seed in range(chips)]
        mean, std = mean_std(values)
        entry["settings"][label] = {"mean": mean, "std": json_number(std), "chips": values}
        print(f"    {label:14} {mean:.4f} +- {std_text(std)} ({spread_label(len(values))})",
              flush=True)
    entry["eval_s"] = round(time.perf_counter() - started, 1)
    return entry


def score_digital(out: Path, windows: np.ndarray) -> dict[str, Any]:
    from afmc.api import load
    from afmc.eval.perplexity import perplexity

    started = time.perf_counter()
    value = perplexity(load(out).chip().run, windows)
    return {"perplexity": value, "eval_s": round(time.perf_counter() - started, 1)}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from afmc.data.corpus import stdlib_text
    from afmc.data.tokenizer import ByteTokenizer, token_windows

    windows = token_windows(ByteTokenizer().encode(stdlib_text("heldout")), 256, args.tokens)
    rows: dict[str, dict[str, Any]] = {}
    folders: dict[str, Path] = {}

    print(f"[{OFF_THE_SHELF}] compile for aimc (default configuration)", flush=True)
    out = work / "off-the-shelf-aimc"
    entry = {"kind": "analog", "train_s": 0.0, "compile_s": round(compile_row(MODEL, "aimc",
                                                                              out), 1)}
    entry |= score_analog(out, windows, args.chips)
    rows[OFF_THE_SHELF] = entry
    fp = entry["fp_view"]
    folders[OFF_THE_SHELF] = Path(MODEL)
    print(f"FP perplexity {fp:.4f} ({windows.size} held-out tokens)", flush=True)

    for index, (name, (weight_noise, clip_sigma)) in enumerate(TRAINED_ROWS.items()):
        steps = 0 if name == CONTROL else args.steps
        config = training_config(steps, args.batch_size, args.seq_len, args.lr,
                                 weight_noise, clip_sigma)
        folder = work / f"trained-{index}"
        print(f"[{name}] train {args.steps} steps x {args.batch_size} x {args.seq_len} tokens, "
              f"weight_noise {weight_noise}, clip_sigma {clip_sigma}, lr {args.lr:g} "
              f"on {args.device}", flush=True)
        entry = {"kind": "analog", "weight_noise": weight_noise, "clip_sigma": clip_sigma}
        entry |= train_row(name, folder, config, args.device)
        print(f"  loss {entry['loss_first']:.5f} (first fifth) -> {entry['loss_last']:.5f} "
              f"(last fifth), {entry['train_s']:.0f} s", flush=True)
        out = folder.with_name(folder.name + "-aimc")
        entry["compile_s"] = round(compile_row(folder, "aimc", out), 1)
        entry |= score_analog(out, windows, args.chips)
        rows[name] = entry
        folders[name] = folder

    for name, source in INT4_ROWS.items():
        print(f"[{name}] compile for int4 (round-to-nearest)", flush=True)
        out = work / f"int4-{len(rows)}"
        entry = {"kind": "digital", "source": source,
                 "compile_s": round(compile_row(folders[source], "int4", out), 1)}
        entry |= score_digital(out, windows)
        print(f"    int4           {entry['perplexity']:.4f}", flush=True)
        rows[name] = entry

    return {
        "command": " ".join(["python", "benchmarks/reproduce_afm.py", *sys.argv[1:]]),
        "model": MODEL, "held_out": "stdlib:heldout", "tokens": int(windows.size),
        "seq_len": 256, "chips": args.chips, "read_noise": READ_NOISE,
        "training": {"data": TRAIN_DATA, "steps": args.steps, "batch_size": args.batch_size,
                     "seq_len": args.seq_len, "learning_rate": args.lr,
                     "range_init_batches": max(1, args.steps // 3), "warmup": WARMUP,
                     "device": args.device},
        "fp": fp, "rows": rows,
    }


def table(result: dict[str, Any]) -> str:
    """Markdown tables: without read noise (and the noise-free analog column), then with it;
    mean +- sample std over chips and the change over FP. FP and int4 rows have no noise."""
    from afmc.eval.spread import std_text

    fp, rows = result["fp"], result["rows"]
    labels = [label for label, _, _ in noise_settings()]
    half = len(labels) // 2
    lines = []
    for first, part in ((True, labels[:half]), (False, labels[half:])):
        header = ["model", "no noise", *part] if first else ["model", *part]
        lines.append("without read noise:\n" if first else f"read noise {READ_NOISE:g}:\n")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        if first:
            lines.append(f"| FP | {fp:.4f} |" + " - |" * len(part))
        for name, entry in rows.items():
            if entry["kind"] == "digital":
                if first:
                    value = entry["perplexity"]
                    lines.append(f"| {name} | {value:.4f} ({_pct(value, fp)}) |"
                                 + " - |" * len(part))
                continue
            cells = [f"{entry['noise_free']:.4f} ({_pct(entry['noise_free'], fp)})"] if (
                first) else []
            for label in part:
                value = entry["settings"][label]
                cells.append(f"{value['mean']:.4f} +- {std_text(value['std'])} "
                             f"({_pct(value['mean'], fp)})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def compute_table(result: dict[str, Any]) -> str:
    lines = ["| model | training s | compile s | eval s | distillation loss (first -> last "
             "fifth of the steps) | digital weights moved | FP of its weights | "
             "weight peak / rms |", "|---|---|---|---|---|---|---|---|"]
    for name, entry in result["rows"].items():
        loss = (f"{entry['loss_first']:.5f} -> {entry['loss_last']:.5f}"
                if "loss_first" in entry else "")
        train_s = entry.get("train_s", 0.0)
        reused = " (reused)" if entry.get("reused") else ""
        peak = f"{entry['peak_to_rms']:.2f}" if "peak_to_rms" in entry else ""
        own = f"{entry['fp_view']:.4f}" if "fp_view" in entry else ""
        moved = (f"{100 * entry['digital_weight_change']:.2f}%"
                 if "digital_weight_change" in entry else "")
        lines.append(f"| {name} | {train_s:.0f}{reused} | {entry['compile_s']:.0f} | "
                     f"{entry['eval_s']:.0f} | {loss} | {moved} | {own} | {peak} |")
    return "\n".join(lines)


def _pct(value: float, fp: float) -> str:
    return f"{100 * (value / fp - 1):+.1f}%"


def plot(result: dict[str, Any], path: Path) -> None:
    """Perplexity against noise strength, mean +- std bands; pcm scale | additive %."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    panels = ((axes[0], "pcm", PCM_SCALES, lambda x: f"pcm x{x:g}", "pcm noise std scale"),
              (axes[1], "add", ADDITIVE_PERCENT, lambda x: f"add {x}%",
               "additive noise std (% of max |w|)"))
    colours = dict(zip([n for n, e in result["rows"].items() if e["kind"] == "analog"],
                       ("tab:red", "tab:blue", "tab:green", "tab:orange"), strict=False))
    for axis, _, xs, label_of, xlabel in panels:
        axis.axhline(result["fp"], color="black", linewidth=1, label="FP")
        for name, entry in result["rows"].items():
            if entry["kind"] == "digital":
                style = ":" if entry["source"] == OFF_THE_SHELF else "-."
                axis.axhline(entry["perplexity"], color="grey", linestyle=style, linewidth=1,
                             label=name)
                continue
            for read, style in ((0.0, "-"), (READ_NOISE, "--")):
                suffix = f" +r{READ_NOISE:g}" if read else ""
                stats = [entry["settings"][label_of(x) + suffix] for x in xs]
                mean = np.array([s["mean"] for s in stats])
                std = np.array([s["std"] or 0.0 for s in stats])  # None: one chip
                wide = name == "trained (noise + clip)"  # drawn wide: clip only lies on it
                axis.plot(xs, mean, style, marker="o", color=colours[name],
                          linewidth=4 if wide else 1.5, alpha=0.6 if wide else 1.0,
                          label=name + (f", read noise {read:g}" if read else ""))
                axis.fill_between(xs, mean - std, mean + std, color=colours[name], alpha=0.15)
        axis.set_xticks(list(xs))
        axis.set_xticklabels([f"{x:g}" for x in xs])
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
    axes[0].set_xscale("log", base=2)
    axes[1].set_xscale("log", base=2)
    axes[1].set_xticks(list(ADDITIVE_PERCENT))
    axes[1].set_xticklabels([f"{x}%" for x in ADDITIVE_PERCENT])
    for axis in axes:
        axis.minorticks_off()
    axes[0].set_xticks(list(PCM_SCALES))
    axes[0].set_xticklabels([f"x{x:g}" for x in PCM_SCALES])
    axes[0].set_ylabel(f"held-out perplexity ({result['tokens']} tokens)")
    axes[1].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"afmc-tiny under programming noise: mean +- sample std over "
                 f"{result['chips']} chips "
                 f"(solid: no read noise, dashed: read noise {READ_NOISE:g})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(result: dict[str, Any]) -> None:
    print()
    print(table(result))
    print(compute_table(result))
    print(f"\nFP perplexity {result['fp']:.4f} on {result['tokens']} held-out tokens; "
          f"{result['chips']} chips per setting; total {result['total_s']:.0f} s")


def main() -> None:
    from afmc.console.quiet import quiet_libraries

    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 training steps of 4 x 128, 2 chips, 512 tokens")
    parser.add_argument("--device", default="cpu", help="training device (cpu, cuda)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 24)")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step (8)")
    parser.add_argument("--seq-len", type=int, default=None, help="training tokens per "
                        "sequence (256)")
    parser.add_argument("--lr", type=float, default=2e-5,
                        help="learning rate of the weights (2e-5: the AFM value)")
    parser.add_argument("--chips", type=int, default=None, help="chip instances per setting "
                        "(10)")
    parser.add_argument("--tokens", type=int, default=None, help="held-out tokens (4096)")
    parser.add_argument("--out", type=Path, default=None,
                        help="work directory for checkpoints and compiled models (default: a "
                        "temporary directory, removed at the end)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the sweep")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="run nothing: print the tables of (and --plot) a --json result")
    args = parser.parse_args()
    if args.render:
        result = json.loads(args.render.read_text())
        report(result)
        if args.plot:
            plot(result, args.plot)
        return
    defaults = ({"steps": 2, "batch_size": 4, "seq_len": 128, "chips": 2, "tokens": 512}
                if args.quick else
                {"steps": 24, "batch_size": 8, "seq_len": 256, "chips": 10, "tokens": 4096})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    started = time.perf_counter()
    if args.out is None:
        with tempfile.TemporaryDirectory(prefix="afmc-reproduce-") as tmp:
            result = run(args, Path(tmp))
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        result = run(args, args.out)
    result["total_s"] = round(time.perf_counter() - started, 1)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(result, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()

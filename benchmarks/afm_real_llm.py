"""Hardware-aware training of a real pretrained LLM: SmolLM2-135M-Instruct before and after.

The AFM recipe (afmc train: distillation from the FP model, weight noise 0.03, learned
input ranges, 2.5-sigma weight clipping, AdamW, polynomial schedule) on text the model
samples itself (afmc synth, temperature 1, top_k 50; --synth-tokens) or on English
text (the docstrings of the standard library, the default), within a stated budget of
steps or minutes; afmc's start (training.smoothing and range_init=search: the student begins where
the default compile puts the model) unless --afm-start. Rows, all scored through ONNX
Runtime on the written files on the first --tokens tokens of the Apache-2.0 text
(held out, as benchmarks/real_llm.py):

- off-the-shelf: ``afmc compile GGUF --target aimc`` with the defaults, noise-free and
  over --chips pcm chips; int4 (round-to-nearest) of the FP model;
- trained: ``afmc compile CKPT --target aimc`` (the learned ranges), noise-free and over
  the same chips; int4 of the trained weights.

    python benchmarks/afm_real_llm.py [--steps 60] [--max-minutes 40] [--synth-tokens N]
        [--data SYNTH_DIR] [--set training.split_outliers=true] [--chips 5]
        [--device cuda] [--json PATH]

``--set`` options apply to training (and so to the trained model's compile, which takes
the trained configuration) and to the off-the-shelf compile alike.

On a GPU (--device cuda) the same recipe runs unchanged; raise --steps and
--synth-tokens for longer budgets.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_llm import (  # noqa: E402
    apache_license,
    english_docstrings,
    gguf_path,
    module_docstrings,
)


def all_docstrings() -> str:
    """Docstrings (over 200 characters) of every pure-Python standard-library module."""
    import sysconfig

    texts = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        try:
            texts += module_docstrings(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
    return "\n\n".join(texts)


def _score(out: Path, ids, chips: int) -> dict:
    from afmc.api import load
    from afmc.eval.evaluate import evaluate
    from afmc.eval.spread import json_number

    report = evaluate(load(out), ids, list(range(chips)), max_tokens=len(ids))
    if report.digital:
        return {"fp": report.fp, "perplexity": report.chips[0]}
    return {"fp": report.fp, "noise_free": report.noise_free, "chips_mean": report.mean,
            "chips_std": json_number(report.std),  # sample std (ddof=1); None: one chip
            "chips": report.chips}


def weight_movement(model: Path, trained: Path) -> dict:
    """How far training moved the analog layers' weights: ||W_trained - W|| / ||W|| over
    all of them together, and the median of the per-layer ratios."""
    import torch
    from safetensors.torch import load_file

    from afmc.capture.hf import load_causal_lm
    from afmc.compiler.trained_model import RANGES_FILE

    names = [k for k in load_file(trained / RANGES_FILE) if k.rpartition(".")[2] not in (
        "input_scale", "outliers_per_slice")]
    before, after = load_causal_lm(model), load_causal_lm(trained)
    moved, total, ratios = 0.0, 0.0, []
    for name in names:
        w0 = before.get_submodule(name).weight.detach().double()
        w1 = after.get_submodule(name).weight.detach().double()
        change, size = float((w1 - w0).square().sum()), float(w0.square().sum())
        moved, total = moved + change, total + size
        ratios.append((change / size) ** 0.5)
    return {"relative_change": (moved / total) ** 0.5,
            "median_layer_change": float(torch.tensor(ratios).median())}


def _line(name: str, entry: dict, fp: float) -> str:
    from afmc.eval.spread import std_text

    if "perplexity" in entry:
        return f"{name:24} {entry['perplexity']:9.2f} ({entry['perplexity'] / fp:5.2f}x FP)"
    return (f"{name:24} noise-free {entry['noise_free']:9.2f} ({entry['noise_free'] / fp:5.2f}x)"
            f"  pcm chips {entry['chips_mean']:9.2f} +- {std_text(entry['chips_std'], 2):>7} "
            f"({entry['chips_mean'] / fp:5.2f}x; sample std over {len(entry['chips'])} chips)")


def main() -> None:
    from afmc.console.quiet import quiet_libraries

    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--synth-tokens", type=int, default=0,
                        help="training tokens sampled from the model (afmc synth); 0: train "
                             "on the docstrings of every standard-library module instead")
    parser.add_argument("--data", type=Path, default=None,
                        help="training data made before (an afmc synth directory of the model)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a configuration override for training and both compiles")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="training time budget (stops after the step that ends past it)")
    parser.add_argument("--afm-start", action="store_true",
                        help="AFM's start (kappa-std ranges, no smoothing) instead of afmc's")
    parser.add_argument("--clip-sigma", type=float, default=2.5,
                        help="training.clip_sigma (0: no weight clipping)")
    parser.add_argument("--skip-off-the-shelf", action="store_true",
                        help="score only the trained model (the off-the-shelf rows take "
                             "~20 minutes on 2 loaded cores and do not change)")
    parser.add_argument("--control", action="store_true",
                        help="also the control: the same start with no training step "
                             "(training.steps=0), compiled and scored as the trained model")
    parser.add_argument("--control-only", action="store_true",
                        help="only the control (no training)")
    parser.add_argument("--chips", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=1024, help="held-out tokens to score")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=None, help="work directory (kept)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import afmc
    from afmc.config import load_config
    from afmc.train.synth import synthesize
    from afmc.train.trainer import train

    model = gguf_path()
    work = args.work or Path(tempfile.mkdtemp(prefix="afmc-afm-real-"))
    work.mkdir(parents=True, exist_ok=True)
    calib = work / "calibration.txt"
    calib.write_text(english_docstrings(), encoding="utf-8")
    seconds: dict[str, float] = {}
    results: dict[str, dict] = {}

    def timed(name: str, action):
        start = time.perf_counter()
        value = action()
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"[{name}: {seconds[name]:.0f} s]", flush=True)
        return value

    fp = None
    if not args.skip_off_the_shelf:
        off_the_shelf = work / "off-the-shelf-aimc"
        timed("compile off-the-shelf aimc", lambda: afmc.compile(
            model, "aimc", load_config(None, args.set), calibration=calib,
            output=off_the_shelf, force=True))
        ids = afmc.load(off_the_shelf).tokenizer().encode(apache_license())[:args.tokens]
        results["off-the-shelf aimc"] = timed("score off-the-shelf aimc",
                                              lambda: _score(off_the_shelf, ids, args.chips))
        fp = results["off-the-shelf aimc"]["fp"]
        print(_line("off-the-shelf aimc", results["off-the-shelf aimc"], fp), flush=True)
        int4 = work / "off-the-shelf-int4"
        timed("compile off-the-shelf int4", lambda: afmc.compile(model, "int4", output=int4,
                                                                 force=True))
        results["off-the-shelf int4"] = _score(int4, ids, 1)
        print(_line("off-the-shelf int4", results["off-the-shelf int4"], fp), flush=True)

    if args.data is not None:
        data: Path | str = args.data
    elif args.synth_tokens > 0:
        data = work / "synth"
        timed("synth", lambda: synthesize(model, work / "synth", args.synth_tokens,
                                          seq_len=args.seq_len))
    else:
        data = work / "stdlib-docstrings.txt"
        data.write_text(all_docstrings(), encoding="utf-8")
    overrides = [f"training.steps={args.steps}", f"training.batch_size={args.batch_size}",
                 f"training.seq_len={args.seq_len}", f"training.learning_rate={args.learning_rate}",
                 f"training.checkpoint_every={max(1, args.steps // 4)}",
                 f"training.clip_sigma={args.clip_sigma}"]
    if not args.afm_start:
        overrides += ["training.smoothing=true", "training.range_init=search"]
    config = load_config(None, overrides + args.set)
    if args.control or args.control_only:
        start = work / "start"
        timed("prepare the start", lambda: train(
            model, data, start, config.model_copy(update={"training": config.training.model_copy(
                update={"steps": 0})}), force=True, device=args.device))
        start_aimc = work / "start-aimc"
        timed("compile the start aimc", lambda: afmc.compile(
            start, "aimc", calibration=calib, output=start_aimc, force=True))
        if fp is None:
            ids = afmc.load(start_aimc).tokenizer().encode(apache_license())[:args.tokens]
        results["start, no training (control)"] = timed(
            "score the start aimc", lambda: _score(start_aimc, ids, args.chips))
        fp = fp or results["start, no training (control)"]["fp"]
        print(_line("start (control)", results["start, no training (control)"], fp), flush=True)
        if args.control_only:
            _write_json(args.json, fp, results, seconds, {}, None, vars(args))
            return
    checkpoint = work / "trained"
    trained = timed("train", lambda: train(
        model, data, checkpoint, config, force=True, device=args.device,
        max_seconds=None if args.max_minutes is None else args.max_minutes * 60,
        progress=lambda step, total, loss, rate: print(
            f"  step {step}/{total} loss {loss:.4f} {rate:.0f} tok/s", flush=True)))
    movement = weight_movement(model, checkpoint)
    print(f"  analog weights moved {movement['relative_change']:.2e} (relative Frobenius "
          f"norm; median layer {movement['median_layer_change']:.2e})", flush=True)
    trained_aimc = work / "trained-aimc"
    timed("compile trained aimc", lambda: afmc.compile(checkpoint, "aimc", calibration=calib,
                                                       output=trained_aimc, force=True))
    if fp is None:
        ids = afmc.load(trained_aimc).tokenizer().encode(apache_license())[:args.tokens]
    results["trained aimc"] = timed("score trained aimc",
                                    lambda: _score(trained_aimc, ids, args.chips))
    fp = fp or results["trained aimc"]["fp"]
    print(_line("trained aimc", results["trained aimc"], fp), flush=True)
    trained_int4 = work / "trained-int4"
    timed("compile trained int4", lambda: afmc.compile(checkpoint, "int4",
                                                       output=trained_int4, force=True))
    results["trained int4"] = _score(trained_int4, ids, 1)
    print(_line("trained int4", results["trained int4"], fp), flush=True)
    print(f"{'FP':24} {fp:9.2f} ({len(ids)} held-out tokens of the Apache-2.0 text); training "
          f"{trained.steps} steps, {trained.tokens:,} tokens, {trained.seconds:.0f} s on "
          f"{args.device}; losses {trained.losses[0]:.4f} -> {trained.losses[-1]:.4f}")
    _write_json(args.json, fp, results, seconds, movement, trained, vars(args))


def _write_json(path: Path | None, fp: float, results: dict, seconds: dict, movement: dict,
                trained, options: dict) -> None:
    if path is None:
        return
    run = {} if trained is None else {"steps": trained.steps, "tokens": trained.seen,
                                      "losses": trained.losses}
    path.write_text(json.dumps({
        "fp": fp, "rows": results, "seconds": seconds, **run, "weight_movement": movement,
        "options": {k: str(v) for k, v in options.items()}}, indent=2))


if __name__ == "__main__":
    main()

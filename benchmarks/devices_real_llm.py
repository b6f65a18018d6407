"""A compiled LLM on each device's chips: perplexity per noise model (docs/real-models.md).

Loads an afmc output (e.g. SmolLM2-135M compiled by ``benchmarks/real_llm.py --keep``)
and scores its FP view and ``--seeds`` chips of every noise model of ``--models`` on
the first ``--tokens`` tokens of the held-out Apache-2.0 text (as benchmarks/real_llm.py),
each model replacing the compiled one (afmc.eval.evaluate's ``noise``). A model is a
``noise.model`` name, optionally with ``:row`` for ``drift_scaling=row``; every model is
read at ``drift_time_s`` = ``--time``.

    python benchmarks/devices_real_llm.py /work/keep/aimc --seeds 3 \\
        --models pcm,reram-wan2022,reram-wan2022:row,reram-cmo,reram-cmo:row
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_llm import apache_license  # noqa: E402


def main() -> None:
    from afmc.console.quiet import quiet_libraries

    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="a compiled afmc output folder")
    parser.add_argument("--models", default="pcm,reram-wan2022,reram-cmo")
    parser.add_argument("--seeds", type=int, default=3, help="chips per model")
    parser.add_argument("--tokens", type=int, default=1024, help="held-out tokens to score")
    parser.add_argument("--time", type=float, default=3600.0, help="drift_time_s")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import afmc
    from afmc.eval.evaluate import evaluate
    from afmc.runtime.noise import NoiseConfig

    loaded = afmc.load(args.output)
    ids = loaded.tokenizer().encode(apache_license())[:args.tokens]
    rows: dict[str, dict] = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        model, _, scaling = name.partition(":")
        noise = NoiseConfig(model=model, drift_time_s=args.time,
                            drift_scaling=scaling or "layer")
        report = evaluate(loaded, ids, list(range(args.seeds)), max_tokens=args.tokens,
                          noise=noise)
        chips = np.array([report.chips[seed] for seed in sorted(report.chips)])
        rows[name] = {"noise": noise.model_dump(), "chips": chips.tolist(),
                      "mean": float(chips.mean()), "std": float(chips.std(ddof=1)),
                      "fp": report.fp, "noise_free": report.noise_free}
        print(f"{name:20} perplexity {chips.mean():10.4g} +- {chips.std(ddof=1):.3g} "
              f"over {len(chips)} chips (noise-free {report.noise_free:.2f}, "
              f"FP {report.fp:.2f}, {len(ids)} tokens)", flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

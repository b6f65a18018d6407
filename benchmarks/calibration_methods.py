"""Does the calibration method matter? afmc-tiny's analog perplexity (noise off) per method.

For each method (max, percentile 99.995, kappa-std with kappa 18 and 3, search
with and without row clipping), without and with the chip-smooth-inputs pass,
afmc-tiny is compiled for aimc with 8-bit DAC/ADC, calibrated on its training
text, and its held-out perplexity is measured on the stored (noise-free)
weights, next to the FP perplexity of the same file. benchmarks/real_llm.py
asks the same of a real pretrained model.

    python benchmarks/calibration_methods.py [--tokens 16384] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from afmc.api import compile as afmc_compile
from afmc.api import load
from afmc.config import load_config
from afmc.data.corpus import stdlib_text
from afmc.data.tokenizer import ByteTokenizer, token_windows
from afmc.eval.perplexity import perplexity

METHODS = {
    "max": ["calibration.method=max"],
    "percentile 99.995": ["calibration.method=percentile", "calibration.percentile=99.995"],
    "kappa-std (kappa 18)": ["calibration.method=kappa-std", "calibration.kappa=18"],
    "kappa-std (kappa 3)": ["calibration.method=kappa-std", "calibration.kappa=3"],
    "search": ["calibration.method=search"],
    "search, row clipping": ["calibration.method=search", "calibration.clip_weights=true"],
}


def main() -> None:
    from afmc.console.quiet import quiet_libraries

    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384, help="held-out tokens to score")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    windows = token_windows(ByteTokenizer().encode(stdlib_text("heldout")), 256, args.tokens)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, (method, overrides) in enumerate(METHODS.items()):
            for smooth in (False, True):
                label = f"{method}{' + chip-smooth-inputs' if smooth else ''}"
                out = Path(tmp) / f"m{index}{smooth:d}"
                afmc_compile("afmc-tiny", "aimc", load_config(None, overrides), output=out,
                             skip=[] if smooth else ["chip-smooth-inputs"])
                if not results:
                    results["fp"] = perplexity(load(out).fp_view().run, windows)
                results[label] = perplexity(load(out).chip(None).run, windows)
                print(f"{label:40} analog perplexity (noise off) {results[label]:.4f}",
                      flush=True)
    print(f"{'fp':40} perplexity {results['fp']:.4f}  ({windows.size} held-out tokens)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

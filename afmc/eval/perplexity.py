"""Perplexity of a causal language model over fixed token windows, and the scorer of
chips by it.

The model is seen only through ``logits_fn``: int64 token ids ``[b, T]`` in,
float logits ``[b, T, V]`` out, so the same code scores a PyTorch module, an
ONNX Runtime session or an analog chip instance.

PerplexityScorer (eval.scoring): the perplexity of a chip on the windows; built with
the FP view's logits (``against_fp(..., logits=True)``), each score also holds the
relative L2 error of all the chip's logits against them, ||y - y_fp|| / ||y_fp||. The
FP logits are kept in memory (tokens x vocabulary floats), so only a scorer that needs
that error keeps them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from afmc.eval.scoring import Score
from afmc.metrics import next_token_nll

if TYPE_CHECKING:
    from afmc.runtime.chip import Chip
    from afmc.runtime.compiled import CompiledModel

LogitsFn = Callable[[np.ndarray], np.ndarray]


def perplexity(
    logits_fn: LogitsFn,
    windows: np.ndarray,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> float:
    """exp of the mean next-token NLL over every predicted position of ``windows``.

    ``progress(done, total)`` is called after each batch with window counts.
    """
    windows = np.asarray(windows, dtype=np.int64)
    if windows.ndim != 2 or windows.shape[1] < 2 or windows.shape[0] == 0:
        raise ValueError(f"windows must be [B>=1, T>=2] token ids, got shape {windows.shape}")
    total_nll = 0.0
    count = 0
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        logits = logits_fn(batch)
        if logits.shape[:2] != batch.shape:
            raise ValueError(f"logits_fn returned shape {logits.shape} for ids {batch.shape}")
        nll = next_token_nll(logits, batch)
        total_nll += float(nll.sum())
        count += nll.size
        if progress is not None:
            progress(min(start + batch_size, len(windows)), len(windows))
    return float(np.exp(total_nll / count))


def _kept(logits_fn: LogitsFn, kept: list[np.ndarray]) -> LogitsFn:
    """`logits_fn`, appending each batch's logits to `kept`."""

    def run(ids: np.ndarray) -> np.ndarray:
        logits = logits_fn(ids)
        kept.append(logits)
        return logits

    return run


def _squared_errors(logits_fn: LogitsFn, reference: tuple[np.ndarray, ...],
                    errors: list[float]) -> LogitsFn:
    """`logits_fn`, appending each batch's squared L2 distance (float64) to the reference
    logits of the same batch to `errors`."""
    batches = iter(reference)

    def run(ids: np.ndarray) -> np.ndarray:
        logits = logits_fn(ids)
        errors.append(float(np.sum((logits.astype(np.float64) - next(batches)) ** 2)))
        return logits

    return run


@dataclass(frozen=True, eq=False)
class PerplexityScorer:
    """The perplexity of `windows` ([n, T] token ids) on a chip, and with `reference` (the
    FP view's logits per batch) the logits' relative error (module docstring); `fp` is
    the FP view's perplexity where measured."""

    windows: np.ndarray
    batch_size: int = 8
    fp: float | None = None
    reference: tuple[np.ndarray, ...] | None = None
    metric: ClassVar[str] = "perplexity"

    @classmethod
    def against_fp(cls, model: CompiledModel, windows: np.ndarray, batch_size: int = 8, *,
                   logits: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> PerplexityScorer:
        """The scorer with `model`'s FP perplexity measured (`progress` follows its
        windows) and, with `logits`, the FP logits kept as the reference."""
        kept: list[np.ndarray] = []
        fp_run = model.fp_view().run
        fp = perplexity(_kept(fp_run, kept) if logits else fp_run, windows, batch_size,
                        progress)
        return cls(windows, batch_size, fp, tuple(kept) if logits else None)

    def __call__(self, chip: Chip) -> Score:
        if self.reference is None:
            return Score(perplexity(chip.run, self.windows, self.batch_size))
        errors: list[float] = []
        value = perplexity(_squared_errors(chip.run, self.reference, errors), self.windows,
                           self.batch_size)
        return Score(value, math.sqrt(sum(errors) / self._reference_norm))

    @cached_property
    def _reference_norm(self) -> float:
        """||y_fp||^2 over every batch of the reference (float64), once per scorer."""
        return sum(float(np.sum(fp.astype(np.float64) ** 2)) for fp in self.reference)

    def fingerprint(self) -> bytes:
        """The windows; a scorer with a reference scores more (the logits' error), so its
        sweeps are others."""
        logits = b"" if self.reference is None else b"+fp-logits"
        return self.windows.tobytes() + str(self.windows.shape).encode() + logits


def torch_logits_fn(model) -> LogitsFn:
    """A ``logits_fn`` for a Hugging Face causal LM (no grad, no KV cache).

    The model is used as it is; put it in ``eval()`` mode first.
    """
    import torch

    device = next(model.parameters()).device

    def logits_fn(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            input_ids = torch.from_numpy(np.ascontiguousarray(ids)).to(device)
            logits = model(input_ids=input_ids, use_cache=False).logits
        return logits.float().cpu().numpy()

    return logits_fn

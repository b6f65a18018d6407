"""What every evaluation scores a chip with: a Scorer maps a chip to a Score.

Rules:
- A Score's `value` is the scorer's `metric` (perplexity, or a relative error against
  the FP view); `relative_error` is the outputs' relative L2 error against the FP view
  where the scorer measures it (None: it does not); `details` holds any further named
  numbers (JSON values: numbers, None, lists and dicts of them), such as per-output
  metrics, so that a sweep's log can hold the whole Score.
- A Scorer has a `metric`, `fp` (the FP view's value of the metric, or None where the
  metric is itself measured against the FP view) and a `fingerprint()` of the data it
  scores on (eval.sweep keys its log by it). Implementations: perplexity.PerplexityScorer
  (token windows), tensor_eval.OutputErrorScorer (tensor inputs),
  embedding.EmbeddingScorer (an encoder's embeddings of token windows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from afmc.metrics import sqnr_db

if TYPE_CHECKING:
    from afmc.runtime.chip import Chip


@dataclass(frozen=True)
class Score:
    """One chip against the FP view (module rules)."""

    value: float
    relative_error: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def sqnr_db(self) -> float:
        """-20 log10(relative error); infinite for an exact match (afmc.metrics). A
        ValueError for a score whose scorer measures no relative error."""
        if self.relative_error is None:
            raise ValueError("this score has no relative error: its scorer keeps no FP "
                             "outputs to compare with")
        return sqnr_db(self.relative_error)


class Scorer(Protocol):
    """Scores a chip (module rules)."""

    @property
    def metric(self) -> str: ...

    @property
    def fp(self) -> float | None: ...

    def __call__(self, chip: Chip) -> Score: ...

    def fingerprint(self) -> bytes: ...

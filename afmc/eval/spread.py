"""Mean and spread over chip instances: the sample standard deviation (ddof=1).

Rule: wherever afmc reports a mean +- std over chips (seeds), the std is the
sample standard deviation of the per-chip values, sqrt(sum (v - mean)^2 / (n - 1)):
the chips are a sample of the chips the hardware could produce, and the spread
estimates theirs. (Until issue 21 afmc reported the population std, divided by n,
which is smaller by the factor sqrt((n - 1) / n): 0.894 for 5 chips.)

- Over one chip the sample std is undefined: NaN here, null in JSON (`json_number`),
  "n/a" in text (`std_text`).
- Equal values (an infinite SQNR on every chip too) have std 0.
- Labels say what the spread is: `spread_label(n)`, "sample std over n chips".
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def sample_std(values: Iterable[float]) -> float:
    """The sample standard deviation (ddof=1) of `values`; NaN for fewer than 2."""
    values = [float(value) for value in values]
    if len(values) < 2:
        return math.nan
    if len(set(values)) == 1:
        return 0.0  # also for infinite values, where numpy would give NaN
    with np.errstate(invalid="ignore"):
        return float(np.std(values, ddof=1))


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """(mean, sample std) of `values` (module rules); (NaN, NaN) for none."""
    values = [float(value) for value in values]
    if not values:
        return math.nan, math.nan
    if len(set(values)) == 1:
        return values[0], 0.0 if len(values) > 1 else math.nan
    with np.errstate(invalid="ignore"):
        return float(np.mean(values)), sample_std(values)


def json_number(value: float | None) -> float | None:
    """`value` for JSON: None for NaN and infinities (JSON has neither)."""
    return value if value is not None and math.isfinite(value) else None


def std_text(value: float | None, digits: int = 4) -> str:
    """A std for tables and messages: `digits` decimals, "n/a" where undefined."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def number_text(value: float, spec: str) -> str:
    """`value` formatted by `spec`; "n/a" for NaN (the sample std of one chip)."""
    return "n/a" if math.isnan(value) else format(value, spec)


def spread_label(chips: int) -> str:
    """What the "+-" of a mean over `chips` chips is."""
    if chips < 2:
        return f"{chips} chip, no sample std"
    return f"sample std over {chips} chips"

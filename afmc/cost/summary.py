"""Comparisons with a digital baseline, and the cost summary a compile record carries.

Rules:
- `compare(report, baseline)`: the baseline's energy and latency per token divided by the
  report's (above 1: the report's hardware needs that many times less); a ratio whose
  denominator is 0 is None.
- `cost_summary(record)`: the totals of every built-in profile on the record (no layer
  rows) and, per analog profile, its ratios against every digital profile: what
  OUT/afmc.json holds under "cost" and `afmc report` prints.
"""

from __future__ import annotations

from typing import Any

from afmc.cost.model import CostReport, estimate_record
from afmc.cost.profile import builtin_profiles, load_profile


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def compare(report: CostReport, baseline: CostReport) -> dict[str, Any]:
    """How many times less energy and time per token `report` needs than `baseline`."""
    return {"baseline": baseline.profile,
            "energy_ratio": _ratio(baseline.energy_pj, report.energy_pj),
            "latency_ratio": _ratio(baseline.latency_ns, report.latency_ns)}


def cost_summary(record: dict[str, Any]) -> dict[str, Any]:
    """Every built-in profile's totals on `record`, and the analog ones' ratios."""
    reports = {name: estimate_record(record, load_profile(name)) for name in builtin_profiles()}
    baselines = [report for report in reports.values() if report.kind == "digital"]
    return {"profiles": {name: report.totals() for name, report in reports.items()},
            "ratios": {name: [compare(report, baseline) for baseline in baselines]
                       for name, report in reports.items() if report.kind == "analog"}}

"""Energy and latency per token of a compiled output on every built-in profile, with the
analog profiles' ratios against the digital baselines (docs/cost.md).

    python benchmarks/cost.py OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

from afmc.cost import builtin_profiles, compare, estimate


def main(output: Path) -> None:
    reports = {name: estimate(output, name) for name in builtin_profiles()}
    baselines = [report for report in reports.values() if report.kind == "digital"]
    for name, report in reports.items():
        line = (f"{name:16} {report.energy_pj / 1e6:12,.3f} uJ {report.latency_ns / 1e3:10,.3f} us"
                f" {report.tiles:7,} tiles")
        if report.kind == "analog":
            for baseline in baselines:
                ratio = compare(report, baseline)
                line += (f"  vs {baseline.profile}: {ratio['energy_ratio']:,.1f}x energy, "
                         f"{ratio['latency_ratio']:,.1f}x latency")
        print(line)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

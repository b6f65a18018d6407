"""Cost model over the tile map: energy, latency and area per token of a compiled model on
a named hardware profile (docs/cost.md).

profile.py: the profile schema and the built-in profiles (profiles/*.yaml); model.py: the
arithmetic per layer and in total; summary.py: the comparison with a digital baseline and
the summary afmc.json carries; table.py: the tables `afmc cost` prints; command.py: the
`afmc cost` command.
"""

from afmc.cost.model import CostReport, LayerCost, estimate, estimate_record
from afmc.cost.profile import HardwareProfile, builtin_profiles, load_profile
from afmc.cost.summary import DEFAULT_BASELINE, compare, cost_summary

__all__ = [
    "DEFAULT_BASELINE",
    "CostReport",
    "HardwareProfile",
    "LayerCost",
    "builtin_profiles",
    "compare",
    "cost_summary",
    "estimate",
    "estimate_record",
    "load_profile",
]

"""Cost model over the tile map: energy, latency and area per token of a compiled model on
a named hardware profile (docs/cost.md).

profile.py: the profile schema and the built-in profiles (profiles/*.yaml); model.py: the
arithmetic per layer and in total; summary.py: the comparison with a digital baseline and
the summary afmc.json carries; table.py: the tables `afmc cost` prints; command.py: the
`afmc cost` command. The names below are imported on first use, so that importing the
command (as the CLI does at start-up) imports no tile mapper.
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "CostReport": "model", "LayerCost": "model", "estimate": "model",
    "estimate_record": "model", "HardwareProfile": "profile", "builtin_profiles": "profile",
    "load_profile": "profile", "compare": "summary",
    "cost_summary": "summary",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"afmc.cost.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'afmc.cost' has no attribute {name!r}")

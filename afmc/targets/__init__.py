"""Targets: named entries saying which passes a compile runs and how the result runs.

aimc: analog in-memory computing (place layers, insert afmc analog ops, calibrate
input ranges; runs on the ONNX Runtime analog simulator with programming noise
per chip instance). fp: the captured floating-point model, lowered unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx_ir as ir

from afmc.config import AfmcConfig
from afmc.passes.layers import LayerRecord


@dataclass
class LowerContext:
    """What a target's post-lowering step sees: the lowered FP/analog model and its inputs."""

    model: ir.Model
    config: AfmcConfig
    layers: list[LayerRecord]
    calibration: list[tuple] | None
    captured: Any


@dataclass(frozen=True)
class Target:
    """A compile target: its name, one line of description, and its FX passes in order."""

    name: str
    description: str
    fx_passes: tuple[str, ...]
    needs_calibration: bool
    post_lower: Callable[[LowerContext], ir.Model] | None = None


TARGETS: dict[str, Target] = {
    "aimc": Target(
        "aimc",
        "analog in-memory computing: 8-bit DAC/ADC crossbar layers, programming noise per chip",
        ("place-layers", "insert-analog-linear", "calibrate"),
        needs_calibration=True,
    ),
    "fp": Target("fp", "floating-point reference: the captured model, lowered unchanged", (),
                 needs_calibration=False),
}


def get_target(name: str) -> Target:
    """The target `name`; an unknown name is an error listing the known ones."""
    try:
        return TARGETS[name]
    except KeyError:
        raise KeyError(f"unknown target {name!r} (known: {', '.join(TARGETS)})") from None

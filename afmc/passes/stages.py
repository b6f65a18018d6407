"""What a pass needs done before it, read off the layer records (both graph levels).

A compile's passes build on each other: place-layers writes a record for every
static-weight layer; insert-analog-linear gives each analog layer its analog op and
input range (record.input_range); calibrate or learned-ranges set those ranges
(record.calibrated). A pass that runs out of order used to do nothing, or leave stale
ranges, without a word (calibrate before insert-analog-linear: no layer calibrated;
split-outliers after calibrate: ranges measured on the unsplit layers).

Rule: a pass declares its `Needs`; its `requires` (the precondition hook of torch.fx's
and onnx_ir's PassBase, run before the pass) reads the graph's `Stage` and raises a
PassOrderError naming the pass, the layers concerned and the pass to run first (or
after). A graph with no layer to act on satisfies every need: a model without
static-weight layers or analog layers compiles, and is warned about, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from afmc.passes.layers import LayerRecord

SHOWN = 3  # layer names an error shows


class PassOrderError(ir.passes.PreconditionError, ValueError):
    """A pass runs before (or after) a pass it builds on (or that builds on it)."""


@dataclass(frozen=True)
class Needs:
    """What a pass needs of the graph before it runs.

    placed: place-layers has run (the graph's static-weight layers have records).
    analog_ops: True, the analog layers hold their analog op (insert-analog-linear ran);
        False, none does yet (the pass rewrites the plain layers); None, either.
    uncalibrated: no input range is set yet (the pass changes what calibration measures).
    """

    placed: bool = False
    analog_ops: bool | None = None
    uncalibrated: bool = False

    @property
    def placement(self) -> bool:
        """Whether the pass needs place-layers to have run (analog ops need it too)."""
        return self.placed or self.analog_ops is True


@dataclass(frozen=True)
class Stage:
    """How far a graph is: its static-weight layers without a record, and its records."""

    unplaced_layers: int
    records: list[LayerRecord]

    def _analog(self, with_op: bool) -> list[str]:
        return [record.name for record in self.records
                if record.placement == "analog" and bool(record.input_range) == with_op]

    def check(self, needs: Needs, pass_name: str, level_prefix: str = "") -> None:
        """Raise PassOrderError when the graph does not meet `needs` (module rule)."""
        def first(name: str) -> str:
            return f"{level_prefix}{name}"

        if needs.placement and self.unplaced_layers and not self.records:
            raise PassOrderError(f"pass {pass_name}: no layer is placed yet; run "
                                 f"{first('place-layers')} before it")
        if needs.analog_ops is True and (missing := self._analog(with_op=False)):
            raise PassOrderError(f"pass {pass_name}: analog layer(s) {_names(missing)} hold "
                                 f"no analog op yet; run {first('insert-analog-linear')} "
                                 "before it")
        if needs.analog_ops is False and (present := self._analog(with_op=True)):
            raise PassOrderError(f"pass {pass_name} must run before "
                                 f"{first('insert-analog-linear')}: analog layer(s) "
                                 f"{_names(present)} already hold their analog op")
        calibrated = [record.name for record in self.records if record.calibrated]
        if needs.uncalibrated and calibrated:
            raise PassOrderError(f"pass {pass_name} must run before {first('calibrate')}: "
                                 f"the input ranges of {_names(calibrated)} are already set "
                                 "and would not match the changed layers")


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")

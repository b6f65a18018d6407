"""Targets: named entries saying which passes a compile runs and how the result runs.

aimc: analog in-memory computing (place layers, insert afmc analog ops, calibrate
input ranges; runs on the ONNX Runtime analog simulator with programming noise
per chip instance). int8 / int4: the layers place-layers puts on the accelerator
quantized for ONNX Runtime's integer kernels (afmc.targets.digital); layers placed
digital stay floating point. fp: the captured floating-point model, lowered unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from afmc.config import AfmcConfig
from afmc.passes.layers import LayerRecord


@dataclass
class LowerContext:
    """What a target's post-lowering step sees: the lowered model, its layers, and the
    calibration batches (dicts from input name to array), if the compile has any."""

    model: ir.Model
    config: AfmcConfig
    layers: list[LayerRecord]
    calibration: list[dict[str, np.ndarray]] | None
    files: dict[str, ir.Model] = field(default_factory=dict)  # more ONNX files for OUT/
    record: dict[str, Any] = field(default_factory=dict)  # more entries for OUT/afmc.json


@dataclass(frozen=True)
class Target:
    """A compile target: its name, one line of description, and its FX passes in order.

    needs_calibration: whether the driver builds calibration batches, fixed or decided
    by the configuration. runtime: how the compiled output runs, written into the
    record for afmc.load (afmc.runtime.compiled.RUNTIMES): "analog" samples programming
    noise per chip, "stored" runs the file as it is.
    """

    name: str
    description: str
    fx_passes: tuple[str, ...]
    needs_calibration: bool | Callable[[AfmcConfig], bool]
    runtime: str = "stored"
    post_lower: Callable[[LowerContext], ir.Model] | None = None
    onnx_passes: tuple[str, ...] | None = None  # for ONNX input; None: not supported
    # for a model trained by afmc train (learned input ranges); None: fx_passes, onnx_passes
    trained_fx_passes: tuple[str, ...] | None = None
    trained_onnx_passes: tuple[str, ...] | None = None

    def calibrates(self, config: AfmcConfig) -> bool:
        """Whether a compile with `config` needs calibration batches."""
        needs = self.needs_calibration
        return needs(config) if callable(needs) else needs


def _int8(context: LowerContext) -> ir.Model:
    from afmc.targets.digital import lower_digital

    return lower_digital(context, "int8")


def _int4(context: LowerContext) -> ir.Model:
    from afmc.targets.digital import lower_digital

    return lower_digital(context, "int4")


TARGETS: dict[str, Target] = {
    "aimc": Target(
        "aimc",
        "analog in-memory computing: 8-bit DAC/ADC crossbar layers, programming noise per chip",
        ("fold-batchnorm", "fold-norms", "place-layers", "chip-smooth-inputs",
         "insert-analog-linear", "split-outliers", "calibrate"),
        needs_calibration=True,
        runtime="analog",
        onnx_passes=("onnx-upgrade-opset", "onnx-fold-norms", "onnx-place-layers",
                     "onnx-insert-analog-linear", "onnx-chip-smooth-inputs",
                     "onnx-split-outliers", "onnx-calibrate"),
        # The learned ranges belong to the inputs the layers saw in training: no norm
        # folding or smoothing, which would change them.
        trained_fx_passes=("place-layers", "insert-analog-linear", "learned-ranges"),
        trained_onnx_passes=("onnx-upgrade-opset", "onnx-place-layers",
                             "onnx-insert-analog-linear", "onnx-learned-ranges"),
    ),
    "int8": Target(
        "int8",
        "8-bit weights (per channel) and static 8-bit activations: ONNX Runtime integer MatMuls",
        ("place-layers", "smooth-inputs"),
        needs_calibration=True,
        post_lower=_int8,
        onnx_passes=("onnx-upgrade-opset", "onnx-place-integer-layers"),
    ),
    "int4": Target(
        "int4",
        "4-bit block-wise weights in MatMulNBits (int8 compute at accuracy level 4)",
        ("place-layers",),
        needs_calibration=lambda config: config.digital.int4_algorithm == "gptq",
        post_lower=_int4,
        onnx_passes=("onnx-upgrade-opset", "onnx-place-integer-layers"),
    ),
    "fp": Target("fp", "floating-point reference: the captured model, lowered unchanged", (),
                 needs_calibration=False, onnx_passes=()),
}


def get_target(name: str) -> Target:
    """The target `name`; an unknown name is an error listing the known ones."""
    try:
        return TARGETS[name]
    except KeyError:
        raise KeyError(f"unknown target {name!r} (known: {', '.join(TARGETS)})") from None

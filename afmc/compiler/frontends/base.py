"""What the compile driver asks of a front end: the model's inputs, its passes, its lowering.

A front end holds one model on its way through a compile: a torch program
(frontends.torch_program) or an ONNX graph (frontends.onnx_graph). The driver
(afmc.compiler.driver) runs every front end and every target through the same steps:
capture -> data -> passes -> lower -> target-lower -> fidelity -> write. The fidelity
check is the driver's, on the lowered model (compiler.fidelity.lowered_fidelity); a
front end only holds the FP outputs it compares with.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx_ir as ir
from torch import fx

from afmc.config import AfmcConfig
from afmc.data.calibration import Batch, CalibrationData, ModelSignature
from afmc.data.tokenizer import Tokenizer
from afmc.io.user_errors import InputWarning
from afmc.passes.layers import LayerRecord
from afmc.passes.registry import Level, PassSpec
from afmc.targets import Target


class Frontend(Protocol):
    """One model being compiled (the protocol every front end implements)."""

    source: str  # the record's "source": "hf:DIR", "torch:Class", "onnx:FILE"
    name: str  # the model as messages name it: DIR, Class, FILE
    level: Level  # the graph level its passes run on
    inputs: list[Path]  # the files it was read from (an output may not touch them)
    signature: ModelSignature
    program: fx.GraphModule | None  # the torch program after the passes (torch front end)
    fp_outputs: list[np.ndarray]  # the FP model's outputs on the fidelity batches

    def tokenizer(self) -> Tokenizer | None:
        """The model's tokenizer, if it has one (loaded once, on first use)."""
        ...

    def default_passes(self, target: Target) -> tuple[str, ...]:
        """The target's pass list for this front end; ValueError if it has none."""
        ...

    def run_pass(self, spec: PassSpec, config: AfmcConfig,
                 calibration: CalibrationData | None,
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Run one pass (a registered name or a pass object); its outcome for the record
        ("modified", and with --verify "output_drift"). A pass that reports progress gets
        `progress`, called with the count of calibration batches done."""
        ...

    def save(self, stem: Path) -> None:
        """Save the graph as it stands: STEM.pt2 (a torch program) or STEM.onnx, and its
        layer records in STEM.json (compiler.checkpoint)."""
        ...

    def restore(self, stem: Path) -> None:
        """Replace the graph by the one `save` left at STEM, its records attached."""
        ...

    def lower(self) -> ir.Model:
        """The ONNX model of the graph after the passes, with afmc functions attached."""
        ...

    def layers(self) -> list[LayerRecord]:
        """The static-weight layer records, in graph order."""
        ...

    def record_fields(self) -> dict[str, Any]:
        """The record's inputs, outputs, fold_notes and dependencies."""
        ...

    def hold_reference(self, batches: list[Batch] | None) -> None:
        """Keep the FP model's first output on each of `batches` in `fp_outputs` (the
        fidelity check's reference; None: no check), before the passes, and release
        what only they needed."""
        ...


def warn_nothing_to_recalibrate(name: str) -> None:
    """--recalibrate on the model `name` without learned input ranges: a named warning."""
    warnings.warn(f"{name}: --recalibrate has nothing to replace (the model "
                  "holds no learned input ranges of afmc train); it is calibrated as usual",
                  InputWarning, stacklevel=3)

"""The ONNX front end: an ONNX file, compiled by ONNX-level passes on its onnx_ir model.

The file is loaded by capture.onnx_model (external data checked, read lazily); a model
whose weights fit under the external-data threshold is then read into memory, so the
passes, the digital quantizers and the output never depend on the input's data file.
A file that already holds afmc nodes is refused. The passes are the target's
onnx_passes (for aimc: upgrade the opset, fold norms, place layers, insert afmc analog
ops, calibrate through onnxruntime); lowering attaches nothing more, the graph already
is the ONNX model. A file trained by `afmc train` (its folder holds
afmc_ranges.safetensors) brings its learned input ranges, used by the target's
trained_onnx_passes (unless `recalibrate`). The tokenizer for text is the one given,
else the one in the file's folder, if any.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

import afmc.passes  # noqa: F401  (registers the passes)
from afmc import ops
from afmc.capture.onnx_model import load_onnx_model
from afmc.compiler import checkpoint
from afmc.compiler.frontends.base import warn_nothing_to_recalibrate
from afmc.compiler.onnx_export import (
    EXTERNAL_DATA_THRESHOLD_BYTES,
    initializer_bytes,
    save_model,
)
from afmc.compiler.trained_model import read_learned_ranges
from afmc.config import AfmcConfig
from afmc.data.calibration import Batch, CalibrationData
from afmc.data.onnx_signature import onnx_signature
from afmc.data.tokenizer import Tokenizer, find_tokenizer
from afmc.io.user_errors import CaptureError
from afmc.mapping.graph import onnx_analog_dependencies
from afmc.ops import onnx_model
from afmc.passes.layers import NOTES_KEY, LayerRecord
from afmc.passes.learned_ranges import META_RANGES
from afmc.passes.onnx.static_layers import find_static_layers, onnx_layer_records
from afmc.passes.registry import PassSpec, build_pass, pass_name
from afmc.passes.verify import check_onnx_graph
from afmc.targets import Target


class OnnxFrontend:
    """An ONNX model on its way through a compile (frontends.base.Frontend)."""

    level = "onnx"
    program = None  # no torch program: the passes rewrite the ONNX graph

    def __init__(self, path: Path, tokenizer: Tokenizer | None = None,
                 verify: bool = False, *, recalibrate: bool = False) -> None:
        if verify:
            raise ValueError("--verify applies to the torch path, not to ONNX input")
        self.path = path
        self.model = load_onnx_model(path)
        if any(node.domain == ops.DOMAIN for node in self.model.graph):
            raise CaptureError(f"{path}: already compiled by afmc (it holds afmc nodes); "
                               "compile the original model")
        data_files = {Path(value.const_value.path) for value in _external(self.model)}
        if initializer_bytes(self.model) <= EXTERNAL_DATA_THRESHOLD_BYTES:
            ir.external_data.load_to_model(self.model)
        self.source, self.name = f"onnx:{path}", str(path)
        self.inputs = [path, *sorted(data_files)]
        self.signature = onnx_signature(self.model)
        learned = read_learned_ranges(path.parent)
        if recalibrate and learned is None:
            warn_nothing_to_recalibrate(self.name)
        self.learned = None if recalibrate else learned
        self._tokenizer, self._tokenizer_loaded = tokenizer, tokenizer is not None
        self.fp_outputs: list[np.ndarray] = []

    def tokenizer(self) -> Tokenizer | None:
        if not self._tokenizer_loaded:
            self._tokenizer = find_tokenizer(self.path.parent)
        self._tokenizer_loaded = True
        return self._tokenizer

    def default_passes(self, target: Target) -> tuple[str, ...]:
        if target.onnx_passes is None:
            raise ValueError(f"target {target.name!r} does not take ONNX input")
        if self.learned is not None and target.trained_onnx_passes is not None:
            self.model.meta[META_RANGES] = self.learned
            return target.trained_onnx_passes
        return target.onnx_passes

    def run_pass(self, spec: PassSpec, config: AfmcConfig,
                 calibration: CalibrationData | None,
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        name = pass_name(spec)
        spec = build_pass(spec, config, lambda: calibration.batches
                          if calibration is not None else None, progress)
        result = spec(self.model)
        self.model = result.model
        check_onnx_graph(self.model, name)
        return {"modified": bool(result.modified)}

    def save(self, stem: Path) -> None:
        """The graph as it stands: STEM.onnx (weights above 1 GiB as external data), and
        its layer records and fold notes in STEM.json (compiler.checkpoint)."""
        save_model(self.model, stem.with_suffix(".onnx"))
        checkpoint.write_state(stem, onnx_layer_records(self.model),
                               self.model.meta.get(NOTES_KEY, []))

    def restore(self, stem: Path) -> None:
        """The graph saved as STEM (save), in place of the input's, its records attached
        by weight name: an analog node's weight, or a digital layer's (checkpoint)."""
        path = stem.with_suffix(".onnx")
        model = load_onnx_model(path)
        if initializer_bytes(model) <= EXTERNAL_DATA_THRESHOLD_BYTES:
            ir.external_data.load_to_model(model)
        records, notes = checkpoint.read_state(
            stem, lambda record: record.onnx_weight or record.weight)
        analog = [(onnx_model.source_initializer(node.inputs[1]).name, node.meta)
                  for node in onnx_model.analog_nodes(model)]
        plain = [(layer.weight.name, layer.node.meta)
                 for layer in find_static_layers(model.graph)]
        checkpoint.attach_records(records, [*analog, *plain], path)
        model.meta[NOTES_KEY] = notes
        self.model = model

    def lower(self) -> ir.Model:
        return self.model

    def layers(self) -> list[LayerRecord]:
        return onnx_layer_records(self.model)

    def record_fields(self) -> dict[str, Any]:
        return {"inputs": self.signature.names,
                "outputs": [value.name for value in self.model.graph.outputs],
                "fold_notes": self.model.meta.get(NOTES_KEY, []),
                "dependencies": onnx_analog_dependencies(self.model)}

    def hold_reference(self, batches: list[Batch] | None) -> None:
        """Run the input model on the fidelity check's `batches` now (None: no check), before
        any pass rewrites it."""
        from afmc.compiler.fidelity import onnx_outputs

        if batches is not None:
            fp = onnx_outputs(self.model, self.signature.names)
            self.fp_outputs = [fp(batch) for batch in batches]


def _external(model: ir.Model) -> list[ir.Value]:
    return [value for value in model.graph.initializers.values()
            if isinstance(value.const_value, ir.ExternalTensor)]


def is_onnx_file(model: object) -> bool:
    """Whether a model argument names an ONNX file (by its .onnx suffix)."""
    return isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(".onnx")

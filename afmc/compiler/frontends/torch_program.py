"""The torch front end: a captured program (nn.Module, Hugging Face directory, GGUF file).

The model is captured with torch.export (afmc.capture), its FX passes rewrite the
program, and lowering re-exports it to ONNX with the afmc ops (afmc.compiler.lowering). A
module given with example inputs is captured with a dynamic batch axis (every tensor
input's first axis, one shared Dim "batch"; an example batch of 1 is repeated to 2 so
torch does not specialise it); a module whose code fixes its batch size is captured as
it is, with a StaticBatchWarning. A directory trained by `afmc train` brings its learned
input ranges, used by the target's trained pass list (unless `recalibrate`).
A causal LM captured with its KV cache is calibrated and checked on input_ids with
empty pasts (afmc.data.kv_cache); its signature and record "inputs" / "outputs"
name the data only (input_ids, logits), and the record's "kv_cache" the cache.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from torch import fx, nn
from torch.fx.passes.infra.pass_base import PassResult

from afmc.capture import CapturedModel, CaptureError, capture_module, capture_pretrained
from afmc.capture.kv_cache import empty_pasts
from afmc.compiler import checkpoint, lowering
from afmc.compiler.frontends.base import warn_nothing_to_recalibrate
from afmc.compiler.trained_model import read_learned_ranges
from afmc.config import AfmcConfig
from afmc.data.calibration import Batch, CalibrationData, InputSpec, ModelSignature
from afmc.data.kv_cache import is_cache_name
from afmc.data.tokenizer import Tokenizer, find_tokenizer
from afmc.mapping import analog_dependencies
from afmc.ops import onnx_model
from afmc.ops.analog_linear import ANALOG_LINEAR
from afmc.passes.fx.static_linear import find_static_linears
from afmc.passes.layers import NOTES_KEY, LayerRecord, layer_records
from afmc.passes.learned_ranges import META_RANGES
from afmc.passes.registry import PassSpec, build_pass, pass_name
from afmc.passes.verify import VerificationError, check_graph, output_drift
from afmc.targets import Target

PRESERVE_TOLERANCE = 1e-5


class StaticBatchWarning(UserWarning):
    """A module could not be captured with a dynamic batch axis: its batch size is fixed."""


class TorchFrontend:
    """A torch program on its way through a compile (frontends.base.Frontend)."""

    level = "fx"

    def __init__(self, captured: CapturedModel, model_dir: Path | None = None, *,
                 tokenizer: Tokenizer | None = None, recalibrate: bool = False,
                 verify: bool = False) -> None:
        self.captured = captured
        self.program: fx.GraphModule = captured.graph_module
        self.source = captured.source
        self.name = captured.source.split(":", 1)[-1]
        self.inputs = [model_dir] if model_dir is not None else []
        self.model_dir = model_dir
        self.signature = module_signature(captured)
        learned = read_learned_ranges(model_dir)
        if recalibrate and learned is None:
            warn_nothing_to_recalibrate(self.name)
        self.learned = None if recalibrate else learned
        self.verify = verify
        self._tokenizer, self._tokenizer_loaded = tokenizer, tokenizer is not None
        self._reference = _reference_output(captured) if verify else None
        self.fp_outputs: list[np.ndarray] = []

    def tokenizer(self) -> Tokenizer | None:
        if not self._tokenizer_loaded and self.model_dir is not None:
            self._tokenizer = find_tokenizer(self.model_dir)
        self._tokenizer_loaded = True
        return self._tokenizer

    def default_passes(self, target: Target) -> tuple[str, ...]:
        if self.learned is not None and target.trained_fx_passes is not None:
            self.program.meta[META_RANGES] = self.learned
            return target.trained_fx_passes
        return target.fx_passes

    def run_pass(self, spec: PassSpec, config: AfmcConfig,
                 calibration: CalibrationData | None,
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        name = pass_name(spec)
        spec = build_pass(spec, config, lambda: self._program_batches(calibration)
                          if calibration is not None else None, progress)
        outcome = spec(self.program)
        self.program = outcome.graph_module if isinstance(outcome, PassResult) else outcome
        check_graph(self.program, name)
        result: dict[str, Any] = {"modified": bool(getattr(outcome, "modified", True))}
        if self._reference is not None:
            drift = output_drift(self.program, self.captured.example_inputs, self._reference)
            result["output_drift"] = drift
            if getattr(spec, "preserves_output", False) and drift > PRESERVE_TOLERANCE:
                raise VerificationError(f"pass {name} must not change the output but "
                                        f"moved it by {drift:.2e} (relative L2)")
        return result

    def lower(self) -> ir.Model:
        captured = self.captured
        model = lowering.export_program(self.program, captured.example_inputs,
                                        captured.dynamic_shapes, captured.input_names,
                                        captured.output_names)
        _onnx_names(self.program, model)
        return model

    def layers(self) -> list[LayerRecord]:
        return layer_records(self.program)

    def record_fields(self) -> dict[str, Any]:
        captured = self.captured
        fields = {"inputs": list(captured.input_names[:captured.data_inputs]),
                  "outputs": [name for name in captured.output_names if not is_cache_name(name)],
                  "fold_notes": self.program.meta.get(NOTES_KEY, []),
                  "dependencies": analog_dependencies(self.program)}
        if captured.kv_cache is not None:
            fields["kv_cache"] = captured.kv_cache.to_json()
        return fields

    def _program_batches(self, calibration: CalibrationData) -> list[tuple[torch.Tensor, ...]]:
        """The calibration batches as the program's input tuples (_program_inputs)."""
        return [self._program_inputs(batch) for batch in calibration.batches]

    def _program_inputs(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        """One batch as the program's input tuple: the data inputs, then empty pasts."""
        inputs = tuple(torch.from_numpy(batch[name]) for name in self.signature.names)
        spec = self.captured.kv_cache
        return inputs if spec is None else (*inputs, *empty_pasts(spec, inputs[0].shape[0]))

    def hold_reference(self, batches: list[Batch] | None) -> None:
        """Run the FP module on the fidelity check's `batches` now (None: no check), before
        any pass, and let it go (unless verify still needs it): the passes replace every
        weight they fold, and the FP module would otherwise keep the originals alive
        through the compile (two copies of most weights of a language model)."""
        from afmc.compiler.fidelity import torch_outputs

        if batches is not None:
            fp = torch_outputs(self.captured.fp_module)
            self.fp_outputs = [fp(self._program_inputs(batch)) for batch in batches]
        if not self.verify:
            self.captured = replace(self.captured, fp_module=None)

    def save(self, stem: Path) -> None:
        """The program as it stands, exported again: STEM.pt2 (torch.export.load), and
        its layer records and fold notes in STEM.json (compiler.checkpoint)."""
        exported = torch.export.export(self.program, self.captured.example_inputs,
                                       dynamic_shapes=self.captured.dynamic_shapes)
        torch.export.save(exported, stem.with_suffix(".pt2"))
        checkpoint.write_state(stem, layer_records(self.program),
                               self.program.meta.get(NOTES_KEY, []))

    def restore(self, stem: Path) -> None:
        """The program saved as STEM (save), in place of the captured one, its records
        attached by weight name (compiler.checkpoint)."""
        path = stem.with_suffix(".pt2")
        program = torch.export.load(path).module()
        records, notes = checkpoint.read_state(stem, lambda record: record.weight)
        analog = [(node.args[1].target, node.meta) for node in program.graph.nodes
                  if node.op == "call_function" and node.target is ANALOG_LINEAR]
        plain = [(layer.weight.target, layer.node.meta)
                 for layer in find_static_linears(program)]
        checkpoint.attach_records(records, [*analog, *plain], path)
        program.meta[NOTES_KEY] = notes
        self.program = program


def capture_with_batch_axis(module: nn.Module, example_inputs: tuple) -> CapturedModel:
    """Capture `module` with a dynamic batch axis (module docstring); static if it fixes it."""
    tensors = [isinstance(x, torch.Tensor) and x.dim() > 0 for x in example_inputs]
    sizes = {x.shape[0] for x, is_tensor in zip(example_inputs, tensors, strict=True)
             if is_tensor}
    if len(sizes) == 1 and all(tensors):
        batch = torch.export.Dim("batch")
        examples = tuple(torch.cat([x, x]) if x.shape[0] == 1 else x for x in example_inputs)
        try:
            return capture_module(module, examples,
                                  dynamic_shapes=tuple({0: batch} for _ in examples))
        except CaptureError:
            pass
    captured = capture_module(module, example_inputs)
    shapes = ", ".join(str(list(x.shape)) for x in example_inputs if isinstance(x, torch.Tensor))
    warnings.warn(f"{type(module).__name__}: captured with the example's fixed shapes "
                  f"({shapes}); its code does not allow a dynamic batch axis",
                  StaticBatchWarning, stacklevel=2)
    return captured


def open_torch(model: Any, example_inputs: tuple | None, *, tokenizer: Tokenizer | None,
               recalibrate: bool, verify: bool) -> TorchFrontend:
    """The torch front end of an nn.Module, a CapturedModel, or a model directory / GGUF."""
    from afmc.models import resolve_model_path

    options = {"tokenizer": tokenizer, "recalibrate": recalibrate, "verify": verify}
    if isinstance(model, CapturedModel):
        return TorchFrontend(model, **options)
    if isinstance(model, nn.Module):
        if example_inputs is None:
            raise ValueError("compile(nn.Module) needs example_inputs (a tuple of tensors)")
        return TorchFrontend(capture_with_batch_axis(model, tuple(example_inputs)), **options)
    path = resolve_model_path(str(model))
    return TorchFrontend(capture_pretrained(path), path, **options)


def module_signature(captured: CapturedModel) -> ModelSignature:
    """The data inputs of a captured program (not a KV cache's pasts): example dtypes and
    ranks, dynamic axes by name."""
    specs = captured.dynamic_shapes
    per_input = list(specs.values() if isinstance(specs, dict) else specs or ())
    inputs = []
    data = captured.data_inputs
    for index, (name, example) in enumerate(zip(captured.input_names[:data],
                                                captured.example_inputs[:data], strict=True)):
        spec = per_input[index] if index < len(per_input) else None
        axes = dict(spec.items() if isinstance(spec, dict) else enumerate(spec or ()))
        shape = tuple(_axis_name(axes[axis]) if axes.get(axis) is not None else int(size)
                      for axis, size in enumerate(example.shape))
        dtype = _numpy_dtype(example.dtype)
        inputs.append(InputSpec(name, dtype, shape))
    config = _hf_config(captured.fp_module)
    return ModelSignature(tuple(inputs), getattr(config, "vocab_size", None),
                          getattr(config, "max_position_embeddings", None))


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype of a torch dtype; bfloat16 (none in numpy) is fed as float32."""
    return np.dtype(torch.empty((), dtype=dtype).float().numpy().dtype
                    if dtype == torch.bfloat16 else str(dtype).removeprefix("torch."))


def _axis_name(dim: Any) -> str:
    return getattr(dim, "__name__", None) or "dynamic"


def _hf_config(module: nn.Module) -> Any:
    """The Hugging Face config of a wrapped pretrained model, if the module holds one."""
    for sub in module.modules():
        config = getattr(sub, "config", None)
        if config is not None and hasattr(config, "vocab_size"):
            return config
    return None


def _reference_output(captured: CapturedModel) -> torch.Tensor:
    with torch.no_grad():
        output = captured.graph_module(*captured.example_inputs)
    return output[0] if isinstance(output, (tuple, list)) else output


def _onnx_names(program: fx.GraphModule, lowered: ir.Model) -> None:
    """Fill each analog record with the ONNX initializer names of its weight and ranges."""
    by_range = {}
    for node in onnx_model.analog_nodes(lowered):
        weight = onnx_model.source_initializer(node.inputs[1])
        by_range[node.inputs[2].name] = weight.name
    for record in layer_records(program):
        if record.placement == "analog" and record.input_range:
            record.onnx_input_range = record.input_range
            record.onnx_weight = by_range.get(record.input_range, "")
            if not record.onnx_weight:
                raise RuntimeError(f"lowering lost the analog layer {record.name}")
            for name in (record.outlier_indices, record.outlier_values):
                if name and name not in lowered.graph.initializers:
                    raise RuntimeError(f"lowering lost the outliers {name} of {record.name}")

"""What `afmc train` trains: the model, its data, its loss and what it writes, per kind.

Two kinds share the one trainer (afmc.train.trainer):

- **CausalLMTask**, a causal LM (afmc-tiny, a Hugging Face directory, a GGUF file) on
  token sequences (afmc.train.data); its analog layers are its analog-placed nn.Linear
  modules; loss: beta * T^2 * KL(teacher || student) + (1 - beta) * next-token
  cross-entropy; the result a Hugging Face directory.
- **OnnxTask**, any ONNX file (a CNN, an encoder, ...) in its torch form
  (afmc.train.onnx_torch) on the input tensors of a .npy / .npz / .pt file, checked
  against the model's inputs as ``afmc eval --inputs`` checks them; its analog layers are
  the static layers onnx-place-layers places analog (the names compile gives them); loss
  on the first output by ``training.objective``: ``kl`` T^2 * KL(teacher || student) over
  its last axis at temperature T (logits), ``mse`` the mean squared error over the
  teacher's mean square (embeddings); ``auto`` is kl for a [samples, classes] output,
  else mse. The result is OUT/model.onnx: the same graph, the trained initializers.

Both: OUT also holds the learned ranges by the layer names compile gives
(afmc_ranges.safetensors) and the training record (afmc_training.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F
from torch import nn

from afmc.config import AfmcConfig, TrainingConfig
from afmc.train.analog_layer import (
    WRAPPER_PREFIX,
    AnalogTrainingLinear,
    convert_to_analog,
    learned_ranges,
    restore_linears,
    untie_analog_weights,
)

Batch = dict[str, torch.Tensor]


class TrainingTask(Protocol):
    """One model and its training data, as the trainer sees them."""

    teacher: nn.Module
    count: int  # training samples
    unit: str  # what progress counts: "tokens" or "samples"
    per_sample: int  # units per sample
    micro_size: int | None  # the samples per forward the model fixes (None: free)

    def batch(self, indices: np.ndarray, device: str) -> Batch: ...

    def outputs(self, module: nn.Module, batch: Batch) -> torch.Tensor: ...

    def loss(self, student: torch.Tensor, teacher: torch.Tensor, batch: Batch,
             settings: TrainingConfig) -> torch.Tensor: ...

    def convert(self, student: nn.Module, config: AfmcConfig) -> dict[str, str]: ...

    def compile_name(self, module_name: str) -> str: ...

    def calibration_count(self, config: AfmcConfig) -> int: ...

    def save(self, student: nn.Module, folder: Path) -> dict[str, Any]: ...


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, ids: torch.Tensor,
                      settings: TrainingConfig) -> torch.Tensor:
    """beta * T^2 * KL(teacher || student) + (1 - beta) * next-token cross-entropy."""
    vocab = student.shape[-1]
    beta = settings.distill_weight
    loss = student.new_zeros(())
    if beta > 0:
        loss = loss + beta * kl_loss(student, teacher, settings.temperature)
    if beta < 1:
        ce = F.cross_entropy(student[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1))
        loss = loss + (1 - beta) * ce
    return loss


def kl_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher || student) over the last axis, the mean over the other positions."""
    vocab = student.shape[-1]
    log_student = F.log_softmax(student.reshape(-1, vocab) / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher.reshape(-1, vocab) / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
    return temperature ** 2 * kl


def convert_causal_lm(student: nn.Module, config: AfmcConfig) -> dict[str, str]:
    """Swap a causal LM's analog-placed nn.Linear modules for AnalogTrainingLinear and untie
    them from shared parameters ({layer: the parameter it was tied to})."""
    convert_to_analog(student, config)
    return untie_analog_weights(student)


class CausalLMTask:
    """A causal LM on token sequences (module docstring)."""

    unit = "tokens"
    micro_size = None

    def __init__(self, model: str | Path, data: str | Path, settings: TrainingConfig,
                 device: str) -> None:
        from afmc.capture.hf import load_causal_lm
        from afmc.data.tokenizer import load_tokenizer
        from afmc.models import resolve_model_path
        from afmc.train.data import training_sequences

        path = resolve_model_path(str(model))
        self.teacher = load_causal_lm(path).to(device)
        self.tokenizer = load_tokenizer(path)
        self.sequences = training_sequences(data, self.tokenizer, settings.seq_len,
                                            self.teacher.config.vocab_size)
        self.count, self.per_sample = len(self.sequences), settings.seq_len
        self.untied: dict[str, str] = {}

    def batch(self, indices: np.ndarray, device: str) -> Batch:
        return {"input_ids": torch.from_numpy(self.sequences[indices]).to(device)}

    def outputs(self, module: nn.Module, batch: Batch) -> torch.Tensor:
        return module(**batch, use_cache=False).logits

    def loss(self, student: torch.Tensor, teacher: torch.Tensor, batch: Batch,
             settings: TrainingConfig) -> torch.Tensor:
        return distillation_loss(student, teacher, batch["input_ids"], settings)

    def convert(self, student: nn.Module, config: AfmcConfig) -> dict[str, str]:
        self.untied = convert_causal_lm(student, config)
        return self.untied

    def compile_name(self, module_name: str) -> str:
        return WRAPPER_PREFIX + module_name

    def calibration_count(self, config: AfmcConfig) -> int:
        return max(1, min(self.count, config.calibration.max_tokens // self.per_sample))

    def save(self, student: nn.Module, folder: Path) -> dict[str, torch.Tensor]:
        from afmc.data.tokenizer import HFTokenizer

        ranges = learned_ranges(student)
        restore_linears(student)
        student.eval().save_pretrained(folder)
        if isinstance(self.tokenizer, HFTokenizer):
            self.tokenizer.tokenizer.save_pretrained(folder)
        return ranges


class OnnxTask:
    """An ONNX model in its torch form on input tensors (module docstring)."""

    unit = "samples"
    per_sample = 1
    FILE = "model.onnx"
    CALIBRATION_SAMPLES = 64  # samples the start (training.smoothing, range search) observes

    def __init__(self, model: str | Path, data: str | Path, config: AfmcConfig,
                 device: str) -> None:
        from afmc.capture.onnx_model import load_onnx_model
        from afmc.data.model_inputs import load_inputs
        from afmc.data.onnx_signature import onnx_signature
        from afmc.train.onnx_torch import OnnxTorchModule

        onnx_model = load_onnx_model(model)
        ir.external_data.load_to_model(onnx_model)
        signature = onnx_signature(onnx_model)
        inputs = load_inputs(Path(data), signature)
        self.arrays = {name: np.concatenate([batch[name] for batch in inputs.batches])
                       for name in signature.names}
        self.count = inputs.samples
        fixed = [spec.shape[0] for spec in signature.inputs
                 if spec.shape and isinstance(spec.shape[0], int)]
        self.micro_size = fixed[0] if fixed else None
        self.teacher = OnnxTorchModule(onnx_model, config).to(device)
        self.objective = config.training.objective

    def batch(self, indices: np.ndarray, device: str) -> Batch:
        return {name: torch.from_numpy(array[indices]).to(device)
                for name, array in self.arrays.items()}

    def outputs(self, module: nn.Module, batch: Batch) -> torch.Tensor:
        return module(**batch)[0]

    def loss(self, student: torch.Tensor, teacher: torch.Tensor, batch: Batch,
             settings: TrainingConfig) -> torch.Tensor:
        objective = self.objective
        if objective == "auto":
            objective = "kl" if teacher.dim() == 2 and teacher.shape[1] > 1 else "mse"
        if objective == "kl":
            return kl_loss(student, teacher, settings.temperature)
        return (student - teacher).square().mean() / teacher.square().mean().clamp_min(1e-12)

    def convert(self, student: nn.Module, config: AfmcConfig) -> dict[str, str]:
        """Swap each analog-placed layer's nn.Linear for an AnalogTrainingLinear."""
        from afmc.train.onnx_torch import module_key

        converted = 0
        for name, record in student.records.items():
            if record.placement == "analog":
                key = module_key(name)
                student.layers[key] = AnalogTrainingLinear(student.layers[key], config.hardware,
                                                           config.training)
                converted += 1
        if not converted:
            raise ValueError("the model has no analog-placed layer to train")
        return {}

    def compile_name(self, module_name: str) -> str:
        from afmc.train.onnx_torch import module_key

        key = module_name.removeprefix("layers.")
        return next(name for name in self.teacher.records if module_key(name) == key)

    def calibration_count(self, config: AfmcConfig) -> int:
        count = min(self.count, self.CALIBRATION_SAMPLES)
        return count - count % self.micro_size if self.micro_size else count

    def save(self, student: nn.Module, folder: Path) -> dict[str, torch.Tensor]:
        from afmc.compiler.onnx_export import EXTERNAL_DATA_THRESHOLD_BYTES, initializer_bytes

        ranges = {self._ranges_key(name): value for name, value in learned_ranges(student).items()}
        restore_linears(student)
        model = student.write_back()
        external = initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD_BYTES
        ir.save(model, folder / self.FILE,
                external_data=f"{self.FILE}.data" if external else None)
        return ranges

    def _ranges_key(self, key: str) -> str:
        """A learned_ranges key (layers.KEY[.suffix]) as compile names it (NAME[.suffix])."""
        from afmc.passes.learned_ranges import OUTLIERS_SUFFIX, SCALE_SUFFIX

        for suffix in (SCALE_SUFFIX, OUTLIERS_SUFFIX):
            if key.endswith(suffix):
                return self.compile_name(key.removesuffix(suffix)) + suffix
        return self.compile_name(key)

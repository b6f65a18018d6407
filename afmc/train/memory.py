"""How much memory one process of ``afmc train`` needs (``afmc train MODEL --estimate``).

The student is built on the meta device exactly as training builds it (analog layers,
the untied LM head copy, LoRA adapters), so every count is the model's own. Terms,
in bytes, for one process holding the whole model (DDP; no sharding):

- student weights: 4 per parameter (float32 master weights in every dtype);
- gradients: 4 per trainable parameter; AdamW: 8 per trainable parameter (two
  float32 moments), allocated at the first optimizer step;
- teacher: 4 per parameter of the FP model, 2 with ``training.dtype=bfloat16``;
- crossbar copies: every analog layer's forward keeps its noisy weight for the
  backward (AnalogTrainingFunction), in the compute dtype (4 or 2 bytes; in bfloat16
  autocast also keeps the cast weight of every layer): the analog weights of all
  blocks, or of one block with gradient checkpointing;
- activations: per token and decoder block, ``ACTIVATION_FACTOR_H`` * hidden +
  ``ACTIVATION_FACTOR_I`` * intermediate values in the compute dtype (the tensors a
  Llama-style block saves: norms, q/k/v, attention, the MLP's gate/up/product, the
  residuals); with checkpointing each block keeps only its input and one block at a
  time is recomputed;
- logits: per token, ``LOGIT_COPIES`` float32 copies of the vocabulary (student and
  teacher logits, their log-softmax, the gradient);
- runtime: ``RUNTIME_BYTES`` for the interpreter, torch and the tokenizer.

With P processes each runs batch_size / (grad_accumulation x P) sequences per
micro-batch. With ``training.engine=fsdp`` (afmc.train.engine) the student weights,
gradients and AdamW state are divided by P, plus the weights gathered whole while they
compute (the root's -- embeddings, LM head, final norm -- and one decoder block's), plus
on process 0, the one estimated, the unsharded host copy that checkpoints and the
result are written from (4 per parameter, in host memory).

Peak = the static part (weights, teacher, runtime) + the larger of the backward
(activations, crossbar copies, logits and the gradients being written) and the
optimizer step (gradients and AdamW). Factors are measured by
benchmarks/train_memory.py, which holds the estimate against the peak RSS of real
steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from afmc.config import AfmcConfig

ACTIVATION_FACTOR_H = 12
ACTIVATION_FACTOR_I = 4
LOGIT_COPIES = 6
RUNTIME_BYTES = 1.0e9


@dataclass
class MemoryEstimate:
    """Bytes by term and the peak of one process."""

    terms: dict[str, float]
    peak: float
    parameters: int
    trainable: int

    def lines(self) -> list[str]:
        gb = 1e9
        rows = [f"{name:24} {value / gb:8.2f} GB" for name, value in self.terms.items()]
        return [f"parameters {self.parameters:,} ({self.trainable:,} trained)", *rows,
                f"{'peak (one process)':24} {self.peak / gb:8.2f} GB"]


def estimate_model_memory(model: str, config: AfmcConfig, processes: int = 1) -> MemoryEstimate:
    """The estimate for `model` (afmc-tiny, a Hugging Face directory or a GGUF file; only
    its configuration is read)."""
    from transformers import AutoConfig

    from afmc.capture.gguf import find_gguf
    from afmc.capture.hf import read_config
    from afmc.models import resolve_model_path

    path = resolve_model_path(model)
    gguf = find_gguf(path) if path.exists() else None
    if gguf is None:
        return estimate_memory(read_config(path), config, processes)
    return estimate_memory(AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                      local_files_only=True), config, processes)


def estimate_memory(model_config, config: AfmcConfig, processes: int = 1) -> MemoryEstimate:
    """The estimate for a Hugging Face model configuration and afmc's `config`."""
    from transformers import AutoModelForCausalLM

    from afmc.train.trainer import build_student

    with torch.device("meta"):
        teacher = AutoModelForCausalLM.from_config(model_config)
    student, _ = build_student(teacher, config)
    return estimate_for(teacher, student, model_config, config, processes)


def estimate_for(teacher: nn.Module, student: nn.Module, model_config,
                 config: AfmcConfig, processes: int = 1) -> MemoryEstimate:
    """The terms of the module docstring for a built teacher and student, on process 0 of
    `processes`."""
    from afmc.train.analog_layer import analog_layers

    settings = config.training
    text = model_config.get_text_config()
    blocks = text.num_hidden_layers
    compute = 2 if settings.dtype == "bfloat16" else 4
    parameters = sum(p.numel() for p in student.parameters())
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    analog = sum(layer.weight.numel() for _, layer in analog_layers(student))
    tokens = settings.batch_size // (settings.grad_accumulation * processes) * settings.seq_len
    per_block = tokens * (ACTIVATION_FACTOR_H * text.hidden_size
                          + ACTIVATION_FACTOR_I * text.intermediate_size) * compute
    copies = compute * (2 if settings.dtype == "bfloat16" else 1)
    if settings.gradient_checkpointing:
        activations = blocks * tokens * text.hidden_size * compute + per_block
        crossbar = copies * analog / blocks
    else:
        activations, crossbar = blocks * per_block, copies * analog
    terms = {
        "student weights": 4.0 * parameters,
        "teacher": float((2 if settings.dtype == "bfloat16" else 4)
                         * sum(p.numel() for p in teacher.parameters())),
        "runtime": RUNTIME_BYTES,
        "activations": float(activations),
        "crossbar copies": float(crossbar),
        "logits": float(LOGIT_COPIES * 4 * tokens * text.vocab_size),
        "gradients": 4.0 * trainable,
        "AdamW state": 8.0 * trainable,
    }
    if settings.engine == "fsdp" and processes > 1:
        _shard(terms, student, processes, 4.0 * parameters)
    static = (terms["student weights"] + terms["teacher"] + terms["runtime"]
              + terms.get("gathered weights", 0.0) + terms.get("host copy", 0.0))
    backward = (terms["activations"] + terms["crossbar copies"] + terms["logits"]
                + terms["gradients"])
    step = terms["gradients"] + terms["AdamW state"]
    return MemoryEstimate(terms, static + max(backward, step), parameters, trainable)


def _shard(terms: dict[str, float], student: nn.Module, processes: int,
           whole: float) -> None:
    """The fsdp terms (module docstring): sharded weights, gradients and AdamW state; the
    root's and the largest block's weights gathered; process 0's host copy."""
    blocks = set(getattr(student, "_no_split_modules", None) or ())
    sizes = [sum(p.numel() for p in module.parameters()) for module in student.modules()
             if type(module).__name__ in blocks]
    root = sum(p.numel() for p in student.parameters()) - sum(sizes)
    for name in ("student weights", "gradients", "AdamW state"):
        terms[name] /= processes
    terms["gathered weights"] = 4.0 * (root + max(sizes, default=0))
    terms["host copy"] = whole

"""Hugging Face encoder front end (BERT-like): mean-pooled embeddings as the output.

A directory is an encoder when its model type has a masked-LM class (BERT,
RoBERTa, DistilBERT, ...), it is neither a decoder nor an encoder-decoder, and
config.architectures names no causal-LM class. It loads with AutoModel (the
bare encoder, float32, eval mode) and is wrapped in `MeanPooledEmbeddings`:
the inputs are those of `input_ids`, `attention_mask`, `token_type_ids` that
the encoder's forward takes, in that order, all int64 [batch, seq] (both
dynamic); the one output "embeddings" [batch, hidden] is the last hidden state
averaged over the positions the attention mask keeps.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path

import torch
import transformers
from torch import nn
from torch.export import Dim
from transformers import AutoModel, PretrainedConfig, PreTrainedModel

from afmc.capture.hf import EXAMPLE_BATCH, attention_implementation, read_config
from afmc.capture.loading_info import check_loading_info
from afmc.capture.torch_module import CapturedModel, capture_module
from afmc.io.user_errors import CaptureError, first_line

ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "embeddings"


def is_encoder(config: PretrainedConfig) -> bool:
    """Whether `config` is a BERT-like encoder (the rule in the module docstring)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    return (config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
            and not getattr(config, "is_decoder", False)
            and not getattr(config, "is_encoder_decoder", False)
            and not causal & set(config.architectures or ()))


class MeanPooledEmbeddings(nn.Module):
    """forward(input_ids, attention_mask[, token_type_ids]) -> mean of the last hidden state
    over the positions the mask keeps."""

    def __init__(self, encoder: PreTrainedModel) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              **extra).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def load_encoder(model_dir: Path) -> PreTrainedModel:
    """The bare encoder of `model_dir` (AutoModel), float32, eval mode, without its pooler.

    Raises:
        CaptureError: the config or the weights cannot be loaded, or the weights lack
            a tensor or hold one of the wrong shape (capture.loading_info).
    """
    config = read_config(model_dir)
    model_class = AutoModel._model_mapping[type(config)]
    try:
        model, info = AutoModel.from_pretrained(
            model_dir, local_files_only=True, dtype=torch.float32,
            attn_implementation=attention_implementation(model_class),
            output_loading_info=True, ignore_mismatched_sizes=True)
    except Exception as exc:
        raise CaptureError(f"{model_dir}: cannot load the encoder ({first_line(exc)})") from exc
    check_loading_info(model_dir, info)
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # its [CLS] output is unused by the mean pooling
    return model.eval()


def capture_encoder(model_dir: Path, example_seq_len: int = 16) -> CapturedModel:
    """Capture the encoder of `model_dir` as a CapturedModel with output "embeddings"."""
    transformers.utils.logging.disable_progress_bar()
    model = load_encoder(model_dir)
    accepted = inspect.signature(model.forward).parameters
    names = [name for name in ENCODER_INPUTS if name in accepted]
    if names[:2] != ["input_ids", "attention_mask"]:
        raise CaptureError(f"{model_dir}: the encoder {type(model).__name__} does not take "
                           "input_ids and attention_mask")
    generator = torch.Generator().manual_seed(0)
    shape = (EXAMPLE_BATCH, example_seq_len)
    example = {"input_ids": torch.randint(model.config.vocab_size, shape, generator=generator),
               "attention_mask": torch.ones(shape, dtype=torch.int64),
               "token_type_ids": torch.zeros(shape, dtype=torch.int64)}
    example["attention_mask"][1, example_seq_len // 2:] = 0
    max_len = getattr(model.config, "max_position_embeddings", None)
    dims = {0: Dim("batch", min=1), 1: Dim("seq", min=1, max=max_len)}
    try:
        captured = capture_module(
            MeanPooledEmbeddings(model), tuple(example[name] for name in names),
            dynamic_shapes=tuple(dims for _ in names),
            input_names=names, output_names=[OUTPUT])
    except CaptureError as exc:
        raise CaptureError(f"model type {model.config.model_type!r}: {exc}") from exc
    return replace(captured, source=f"hf-encoder:{model_dir}")

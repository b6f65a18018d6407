"""Hugging Face causal LM front end: load a local model directory and capture it.

With kv_cache=True (what `afmc compile` uses) the model is wrapped in
`CausalLMWithCache` (afmc.capture.kv_cache): input_ids plus the past keys and
values in, logits plus the present keys and values out, one graph for prefill
and decode; a model whose cache that wrapper cannot hold is captured as below.
Otherwise it is wrapped in `CausalLMLogits`, whose forward takes only `input_ids`
and returns only the logits with `use_cache=False`. Neither takes an attention
mask (every position attends causally to the ones before it). Both wrappers
keep the model under the attribute `lm`, so graph and ONNX names read
`lm.model.layers.0.self_attn.q_proj.weight` (Llama, Phi-3, Qwen2) or
`lm.transformer.h.0.attn.c_attn.weight` (GPT-2).

Which models: there is no allow-list. A directory is captured when (1) its
config.json loads with AutoConfig, (2) AutoModelForCausalLM maps its config to
a class, and (3) torch.export traces it; each failure is a one-line CaptureError
naming the file, the model type, or the module that did not export.
Mixture-of-experts blocks run densely (afmc.capture.moe). docs/models.md lists
the families that are tested.

Findings (transformers 5.x, torch 2.13):

- torch.fx.symbolic_trace fails on current transformers; torch.export
  (non-strict) traces the tested families without patches, with both
  the "eager" and the "sdpa" attention implementations. afmc loads "sdpa"
  (transformers' default) where the class supports it, else "eager" (Gemma2,
  Bloom): with sdpa attention is one `aten.scaled_dot_product_attention`
  node in the graph, while "eager" adds matmul/softmax/dropout nodes.
- HF's causal-mask code traces fine under export when no attention mask is
  passed; no mask input is needed.
- Dynamic shapes: named dims `Dim("batch", min=1)` and
  `Dim("seq", min=1, max=max_position_embeddings)` export cleanly, even though
  the example has batch 2 and a longer sequence (min=1 is accepted, and the
  graph and the ONNX file run batch 1, sequence 1). `Dim.AUTO` works
  too but yields a range starting at 2 and unnamed ONNX axes. The example must
  not use size 1 on a dynamic dim, or torch specialises it.
- The max on "seq" makes the graph module reject a too-long input up front
  (GPT-2's learned positions would otherwise fail inside the embedding).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import torch
import transformers
from torch import nn
from torch.export import Dim
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from afmc.capture.gguf import SUFFIX as GGUF_SUFFIX
from afmc.capture.gguf import find_gguf, load_gguf_model
from afmc.capture.kv_cache import CausalLMWithCache, cache_spec, fill_empty_pasts
from afmc.capture.loading_info import check_loading_info
from afmc.capture.moe import densify_experts
from afmc.capture.torch_module import CapturedModel, capture_module
from afmc.capture.upcast import stored_dtype, upcast_in_place
from afmc.io.user_errors import CaptureError, first_line

EXAMPLE_BATCH = 2
EXAMPLE_PAST = 5  # >= 2, or torch specialises the past axis


def read_config(model_dir: Path) -> PretrainedConfig:
    """The config of the Hugging Face directory `model_dir`, loaded with AutoConfig.

    Raises:
        CaptureError: the directory or config.json is missing, config.json is not
            a JSON object, or transformers does not know its model type.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CaptureError(f"model directory not found: {model_dir}")
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise CaptureError(f"{config_path}: file not found (not a Hugging Face model directory)")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaptureError(f"{config_path}: not a valid JSON file ({first_line(exc)})") from exc
    if not isinstance(raw, dict):
        raise CaptureError(f"{config_path}: expected a JSON object")
    try:
        return AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except Exception as exc:
        raise CaptureError(f"{config_path}: model type {raw.get('model_type')!r} does not load "
                           f"in transformers {transformers.__version__} "
                           f"({first_line(exc)})") from exc


def causal_lm_class(config: PretrainedConfig, where: str) -> type[PreTrainedModel]:
    """The class AutoModelForCausalLM builds for `config`.

    Raises:
        CaptureError: transformers has no causal-LM class for the model type.
    """
    try:
        return AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        named = f" ({', '.join(config.architectures)})" if config.architectures else ""
        raise CaptureError(
            f"{where}: model type {config.model_type!r}{named} has no causal-LM class in "
            f"transformers {transformers.__version__} (AutoModelForCausalLM)") from None


def attention_implementation(model_class: type[PreTrainedModel]) -> str:
    """The attention to load: "sdpa" where the class supports it (one SDPA node), else "eager"."""
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


def load_causal_lm(path: str | os.PathLike) -> PreTrainedModel:
    """Load a local causal LM in float32, eval mode: a Hugging Face directory or a GGUF.

    A `*.gguf` file, or a directory with one `*.gguf` and no config.json, is
    dequantized through transformers' GGUF loader (afmc.capture.gguf).

    Raises:
        CaptureError: the path is missing, config.json is missing or unreadable,
            the model type has no causal-LM class, or the weights cannot be loaded,
            lack a tensor or hold one of the wrong shape (capture.loading_info).
    """
    path = Path(path)
    if not path.exists():
        raise CaptureError(f"model directory not found: {path}")
    gguf = find_gguf(path)
    if gguf is not None:
        return load_gguf_model(gguf)
    if path.is_file():
        raise CaptureError(f"{path}: not a model directory nor a GGUF file (*{GGUF_SUFFIX})")
    config = read_config(path)
    model_class = causal_lm_class(config, str(path / "config.json"))
    sixteen_bit = stored_dtype(config, path)
    if sixteen_bit is not None:  # afmc.capture.upcast: not held twice in float32
        model, info = _from_pretrained(path, model_class, sixteen_bit)
        if upcast_in_place(model):
            check_loading_info(path, info)
            return model.eval()
        del model, info
    model, info = _from_pretrained(path, model_class, torch.float32)
    check_loading_info(path, info)
    return model.eval()


def _from_pretrained(path: Path, model_class: type[PreTrainedModel],
                     dtype: torch.dtype) -> tuple[PreTrainedModel, dict]:
    """transformers' from_pretrained of a local directory in `dtype`, with loading info."""
    try:
        transformers.utils.logging.disable_progress_bar()
        return AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=dtype,
            attn_implementation=attention_implementation(model_class),
            output_loading_info=True, ignore_mismatched_sizes=True,
        )
    except Exception as exc:
        raise CaptureError(f"{path}: cannot load the model ({first_line(exc)})") from exc


class CausalLMLogits(nn.Module):
    """forward(input_ids) -> logits of a causal LM, without KV cache or attention mask."""

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, use_cache=False).logits


def capture_causal_lm(
    model_dir_or_model: str | os.PathLike | PreTrainedModel, example_seq_len: int = 16,
    kv_cache: bool = False,
) -> CapturedModel:
    """Capture a causal LM (a local directory or a loaded model) as a CapturedModel.

    The graph takes "input_ids" (int64 [batch, seq], both dynamic) and returns
    "logits" (float32 [batch, seq, vocab]). With `kv_cache`, and a model whose cache
    capture.kv_cache.cache_spec describes, it also takes the pasts and returns the
    presents (afmc.data.kv_cache; axis "past" dynamic from 0), and calling the graph
    module with input_ids only fills empty pasts. A loaded model is switched to eval
    mode and used as it is (dtype and attention implementation unchanged), except
    that its mixture-of-experts blocks, if any, are made dense in place.
    fp_module is the wrapper, so it is called like the graph.
    """
    if isinstance(model_dir_or_model, (str, os.PathLike)):
        model = load_causal_lm(Path(model_dir_or_model))
        source = f"hf:{model_dir_or_model}"
    else:
        model = model_dir_or_model.eval()
        source = f"hf:{model.config.name_or_path or model.config.model_type}"
    max_len = getattr(model.config, "max_position_embeddings", None)
    if example_seq_len < 2 or (max_len is not None and example_seq_len > max_len):
        raise ValueError(f"example_seq_len must be in [2, {max_len}], got {example_seq_len}")
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(
        model.config.vocab_size, (EXAMPLE_BATCH, example_seq_len), generator=generator
    )
    ids_axes = {0: Dim("batch", min=1), 1: Dim("seq", min=1, max=max_len)}
    densify_experts(model)
    spec = cache_spec(model) if kv_cache else None
    try:
        if spec is None:
            captured = capture_module(CausalLMLogits(model), (example,),
                                      dynamic_shapes={"input_ids": ids_axes},
                                      input_names=["input_ids"], output_names=["logits"])
        else:
            pasts = tuple(torch.randn((EXAMPLE_BATCH, spec.kv_heads, EXAMPLE_PAST,
                                       spec.head_dim), generator=generator)
                          for _ in spec.input_names)
            past_axes = {0: ids_axes[0],
                         2: Dim("past", min=0, max=None if max_len is None else max_len - 1)}
            flat_shapes = (ids_axes, *(past_axes for _ in pasts))
            captured = capture_module(CausalLMWithCache(model, spec), (example, *pasts),
                                      dynamic_shapes=(ids_axes, flat_shapes[1:]),
                                      input_names=["input_ids", *spec.input_names],
                                      output_names=["logits", *spec.output_names])
            # the graph module takes the pasts as flat inputs: re-export (lowering) with them
            captured = replace(captured, dynamic_shapes=flat_shapes, kv_cache=spec)
            captured.graph_module.register_forward_pre_hook(fill_empty_pasts(spec),
                                                        prepend=True)
    except CaptureError as exc:
        raise CaptureError(f"model type {model.config.model_type!r}: {exc}") from exc
    return replace(captured, source=source)

"""A causal LM with its KV cache as plain tensors: one graph for prefill and decode.

`CausalLMWithCache.forward(input_ids, *pasts)` returns `(logits, *presents)`, the
pasts and presents named and shaped as afmc.data.kv_cache says. Inside, the
pasts fill a transformers DynamicCache, the positions are past .. past + seq - 1,
and the model's own mask code builds the causal mask with that offset (with
sdpa it becomes an explicit mask input of the attention node). Called with
input_ids only, the pasts are empty, so it computes what the model computes
without a cache.

Findings (torch 2.13, transformers 5.24): torch.export traces this wrapper with
`Dim("past", min=0)` on the pasts' third axis, from an example with past >= 2
(a past of 0 or 1 in the example would be specialised); the graph and its ONNX
lowering then run past = 0 (prefill) and past >= 1 (decode) alike, so one model
serves both and no decode model beside it is needed. The ONNX present axis
reads "past + seq".

Which models: those whose DynamicCache has only full-attention layers
(`DynamicLayer`) of one shape; `cache_spec` says None for the others (sliding
windows, hybrid or recurrent caches), which are captured without a cache.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from afmc.data.kv_cache import KVCacheSpec


def cache_spec(lm: PreTrainedModel) -> KVCacheSpec | None:
    """The cache `lm` keeps, read from one forward of two tokens with use_cache=True;
    None when it is not a DynamicCache of full-attention layers of one shape."""
    with torch.no_grad():
        output = lm(input_ids=torch.zeros((1, 2), dtype=torch.long), use_cache=True)
    cache = getattr(output, "cache", None)
    if type(cache) is not DynamicCache or not cache.layers \
            or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    shapes = {tuple(tensor.shape) for layer in cache.layers
              for tensor in (layer.keys, layer.values)}
    if len(shapes) != 1:
        return None
    (_, heads, _, head_dim), = shapes
    return KVCacheSpec(len(cache.layers), heads, head_dim)


class CausalLMWithCache(nn.Module):
    """forward(input_ids, *pasts) -> (logits, *presents) of a causal LM (module docstring)."""

    def __init__(self, lm: PreTrainedModel, spec: KVCacheSpec) -> None:
        super().__init__()
        self.lm = lm
        self.spec = spec

    def forward(self, input_ids: torch.Tensor, *pasts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not pasts:
            pasts = empty_pasts(self.spec, input_ids.shape[0])
        cache = DynamicCache(config=self.lm.config)
        for layer in range(self.spec.layers):
            cache.update(pasts[2 * layer], pasts[2 * layer + 1], layer)
        past = pasts[0].shape[2]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device) + past
        output = self.lm(input_ids=input_ids, cache=cache, use_cache=True,
                         position_ids=positions.unsqueeze(0).expand(input_ids.shape[0], -1))
        presents = [tensor for layer in output.cache.layers
                    for tensor in (layer.keys, layer.values)]
        return (output.logits, *presents)


def empty_pasts(spec: KVCacheSpec, batch: int) -> tuple[torch.Tensor, ...]:
    """Empty past tensors for a batch, in input order (a prefill)."""
    return tuple(torch.from_numpy(array) for array in spec.empty(batch).values())


def fill_empty_pasts(spec: KVCacheSpec) -> Callable[[nn.Module, tuple], tuple | None]:
    """A forward pre-hook for the captured graph module: a call with input_ids only gets
    empty pasts, so `program(input_ids)` runs as the model without a cache does (register
    it with prepend=True, ahead of torch.export's input checks)."""

    def hook(module: nn.Module, args: tuple) -> tuple | None:
        if len(args) != 1:
            return None
        return (args[0], *empty_pasts(spec, args[0].shape[0]))

    return hook

"""The KV cache of a compiled causal LM: its input and output names, and empty pasts.

A causal LM is compiled into one ONNX model that serves prefill and decode
(afmc.capture.kv_cache). Besides "input_ids" [batch, seq] it takes, per layer i,
"past_key_values.{i}.key" and "past_key_values.{i}.value" [batch, kv_heads, past,
head_dim] (float32), and besides "logits" it returns "present.{i}.key" and
"present.{i}.value" [batch, kv_heads, past + seq, head_dim]. Prefill is past = 0.
The names follow Hugging Face Optimum's ONNX exports, so other tools read them.

Rule for every place that runs the model with input_ids only (calibration, the
fidelity check, afmc run and eval, the FP view): the past inputs are filled with
empty tensors [batch, kv_heads, 0, head_dim] (`with_empty_pasts`), which makes the
model compute exactly the logits of the full sequence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."
KINDS = ("key", "value")
_PAST_NAME = re.compile(rf"{re.escape(PAST_PREFIX)}(\d+)\.(key|value)")


@dataclass(frozen=True)
class KVCacheSpec:
    """The cache of a model: `layers` layers, each a key and a value of `kv_heads` heads
    of `head_dim` numbers per position."""

    layers: int
    kv_heads: int
    head_dim: int

    @property
    def input_names(self) -> list[str]:
        """The past inputs, layer by layer, key before value."""
        return [f"{PAST_PREFIX}{i}.{kind}" for i in range(self.layers) for kind in KINDS]

    @property
    def output_names(self) -> list[str]:
        """The present outputs, in the order of `input_names`."""
        return [f"{PRESENT_PREFIX}{i}.{kind}" for i in range(self.layers) for kind in KINDS]

    def empty(self, batch: int) -> dict[str, np.ndarray]:
        """Empty pasts [batch, kv_heads, 0, head_dim] by input name (the prefill feeds)."""
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return {name: np.zeros(shape, np.float32) for name in self.input_names}

    def to_json(self) -> dict[str, Any]:
        """The record's "kv_cache" section."""
        return {"inputs": self.input_names, "outputs": self.output_names,
                "layers": self.layers, "kv_heads": self.kv_heads, "head_dim": self.head_dim}

    @classmethod
    def from_json(cls, section: Mapping[str, Any]) -> KVCacheSpec:
        """The spec of a record's "kv_cache" section."""
        return cls(int(section["layers"]), int(section["kv_heads"]), int(section["head_dim"]))


def kv_cache_of_inputs(inputs: Iterable[tuple[str, Sequence[Any] | None]]) -> KVCacheSpec | None:
    """The cache a model's graph inputs (name, shape) declare; None when it has no
    "past_key_values.*" input. Its layer count is the number of past keys, its heads and
    head size those of "past_key_values.0.key" (all layers are alike, capture checks it)."""
    shapes = {name: shape for name, shape in inputs if _PAST_NAME.fullmatch(name)}
    first = shapes.get(f"{PAST_PREFIX}0.key")
    if first is None or len(first) != 4:
        return None
    return KVCacheSpec(sum(name.endswith(".key") for name in shapes), int(first[1]),
                       int(first[3]))


def with_empty_pasts(feeds: Mapping[str, np.ndarray],
                     spec: KVCacheSpec | None) -> dict[str, np.ndarray]:
    """`feeds` plus empty pasts for a batch of input_ids, when the model has a cache and
    the feeds hold no past (module rule); otherwise `feeds` as they are."""
    feeds = dict(feeds)
    if spec is None or any(name.startswith(PAST_PREFIX) for name in feeds) \
            or "input_ids" not in feeds:
        return feeds
    return feeds | spec.empty(int(np.shape(feeds["input_ids"])[0]))


def is_cache_name(name: str) -> bool:
    """Whether an input or output name is a past or present of the cache."""
    return name.startswith((PAST_PREFIX, PRESENT_PREFIX))

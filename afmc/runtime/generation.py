"""Text generation with a compiled causal LM: a decoding loop over its ONNX session.

`generate(model, record, prompt_ids, options)` runs one sequence (batch 1):
- `model` is a Chip (or the FP view; anything with an onnxruntime `.session`) or a
  step callable, feeds by input name -> outputs by output name;
- with the record's "kv_cache" section (afmc.data.kv_cache) the prompt runs once with
  empty pasts (prefill) and every new token alone with the presents of the step
  before as its pasts (decode); without it (a model compiled without a cache) every
  step runs the whole sequence again;
- the next token is chosen from the last position's logits: the argmax when
  temperature is 0 (greedy; ties to the lowest id, as torch.argmax), otherwise a draw
  from softmax(logits / temperature), restricted first to the top_k most likely tokens
  (0: off) and then to the smallest set whose probability reaches top_p (1: off), as
  Hugging Face's samplers order them. The draws come from numpy's default_rng(seed),
  so the same seed and the same logits give the same tokens;
- it stops after max_new_tokens tokens, after the eos token (which is kept), or after
  the first token for which `stop(tokens so far)` is true (stop sequences, lm-eval's
  `until`), and the model is run once per new token.

Errors (ValueError, one line): an option out of range, an empty prompt, a record that
is not a causal LM (inputs exactly input_ids, first output logits), or a prompt plus
new tokens longer than the record's max_positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from afmc.data.kv_cache import KVCacheSpec, with_empty_pasts
from afmc.runtime.sessions import run_session, session_kv_cache

Step = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class GenerationOptions:
    """How to generate: rules in the module docstring."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    eos_token_id: int | None = None

    def check(self) -> None:
        """Raise ValueError naming the first option out of range."""
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), "
                             f"got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1] (1: off), got {self.top_p}")
        if self.temperature == 0 and (self.top_k or self.top_p < 1):
            raise ValueError("top_k and top_p choose among sampled tokens: give a "
                             "temperature > 0 with them (temperature 0 is greedy)")


@dataclass
class Generation:
    """The new tokens, the last-position logits each was chosen from, and why it stopped."""

    tokens: list[int]
    logits: list[np.ndarray] = field(repr=False)
    stopped_at_eos: bool


def session_step(session: Any, name: str = "model.onnx") -> Step:
    """The step callable of an onnxruntime session: every output, by name (pasts not
    given are fed empty, afmc.data.kv_cache)."""
    names = [output.name for output in session.get_outputs()]
    cache = session_kv_cache(session)

    def step(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = run_session(session, names, with_empty_pasts(feeds, cache), name)
        return dict(zip(names, outputs, strict=True))

    return step


def check_language_model(record: dict[str, Any]) -> None:
    """Raise ValueError unless the record is a causal LM's: input_ids in, logits out."""
    if list(record["inputs"]) != ["input_ids"] or record["outputs"][0] != "logits":
        raise ValueError(f"not a causal language model: generation needs input_ids in and "
                         f"logits out, the model takes {', '.join(record['inputs'])} and "
                         f"returns {', '.join(record['outputs'])}")


def next_token(logits: np.ndarray, options: GenerationOptions,
               rng: np.random.Generator) -> int:
    """The token chosen from one position's logits [vocab] (module rules)."""
    if options.temperature == 0:
        return int(np.argmax(logits))
    scores = logits.astype(np.float64) / options.temperature
    if 0 < options.top_k < scores.size:
        scores[scores < np.sort(scores)[-options.top_k]] = -np.inf
    if options.top_p < 1:
        order = np.argsort(-scores, kind="stable")
        probs = _softmax(scores[order])
        before = np.cumsum(probs) - probs  # the mass of the more likely tokens
        scores[order[before >= options.top_p]] = -np.inf
    return int(rng.choice(scores.size, p=_softmax(scores)))


def _softmax(scores: np.ndarray) -> np.ndarray:
    exp = np.exp(scores - scores.max())
    return exp / exp.sum()


def generate(model: Any, record: dict[str, Any], prompt_ids: Sequence[int],
             options: GenerationOptions,
             stop: Callable[[list[int]], bool] | None = None) -> Generation:
    """Generate up to options.max_new_tokens tokens after `prompt_ids` (module rules)."""
    options.check()
    check_language_model(record)
    prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
    if prompt.size == 0:
        raise ValueError("the prompt has no tokens")
    limit = record.get("max_positions")
    if limit is not None and prompt.size + options.max_new_tokens - 1 > limit:
        raise ValueError(f"a prompt of {prompt.size} tokens and {options.max_new_tokens} new "
                         f"tokens exceed the model's {limit} positions")
    step = session_step(model.session) if hasattr(model, "session") else model
    spec = KVCacheSpec.from_json(record["kv_cache"]) if "kv_cache" in record else None
    rng = np.random.default_rng(options.seed)
    tokens: list[int] = []
    chosen_from: list[np.ndarray] = []
    feeds = {"input_ids": prompt[None, :]} | (spec.empty(1) if spec else {})
    while True:
        outputs = step(feeds)
        logits = outputs["logits"][0, -1]
        token = next_token(logits, options, rng)
        tokens.append(token)
        chosen_from.append(logits)
        if (token == options.eos_token_id or len(tokens) == options.max_new_tokens
                or (stop is not None and stop(tokens))):
            return Generation(tokens, chosen_from, token == options.eos_token_id)
        if spec is None:
            feeds = {"input_ids": np.concatenate([prompt, tokens])[None, :]}
        else:
            feeds = {"input_ids": np.array([[token]], dtype=np.int64)} | {
                past: outputs[present]
                for past, present in zip(spec.input_names, spec.output_names, strict=True)}

"""The lm-evaluation-harness (lm-eval 0.4) model type "afmc": a compiled afmc model.

Importing this module registers the type; `afmc lm-eval ARGS` does so and runs
lm-eval's own command line (lm-eval 0.4 reads no entry points, so a plain `lm_eval
--model afmc` cannot find it). The model runs on one chip of the compiled output, or on
its FP view.

model_args (lm-eval's `key=value,...`):
- path (required): OUT of `afmc compile`, a causal language model with a tokenizer;
- seed (0): the chip instance (programming-noise draw); read_noise (0.0): relative
  output noise drawn afresh on every run; fp (false): the FP view instead of a chip;
- batch_size (8): rows per run for the log-likelihood requests ("auto" is refused);
- max_length (the record's max_positions): the longest sequence run, at most that;
- prefix_token (the tokenizer's bos, else its eos, else none): what the first token of
  a text is conditioned on;
- sample_seed (0): request i of generate_until samples with seed sample_seed + i.
lm-eval also hands every model `device` and `max_batch_size`; chips run on ONNX
Runtime's CPU provider, so both are taken and not used. Any other key, a missing
path, or a value of the wrong kind is a ValueError naming it.

Requests (tokens are the compiled model's tokenizer's, `model.tokenizer()`):
- loglikelihood(context, continuation): lm-eval's TemplateLM splits the pair into
  tokens (an empty context becomes [prefix_token]); the sequence context +
  continuation without its last token, cut on the left to max_length, is run once;
  the result is the sum of log-softmax of the continuation's tokens at the positions
  that predict them, and whether each was the argmax.
- loglikelihood_rolling(text): every token predicted exactly once with the most
  context that fits, in lm-eval's rolling windows (lm_eval.utils.
  get_rolling_token_windows, context_len 1); the first token is conditioned on
  prefix_token, or, without one, is not scored (as `afmc eval` scores a window). The
  result is the sum of the scored tokens' log-probabilities.
- Log-likelihood rows are sorted by length, longest first, and run batch_size at a time,
  padded on the right: a causal model's logits at a position do not depend on later
  positions, so a row's score does not depend on its batch.
- generate_until(context, gen_kwargs): afmc.runtime.generation (KV-cache decoding, batch
  1) from the context's last max_length - max_gen_toks + 1 tokens; greedy unless the
  task sets do_sample with a temperature > 0 (then top_k and top_p apply); it stops at
  the tokenizer's eos, after max_gen_toks tokens (lm-eval's default 256) or once the
  decoded text holds a string of `until`, and the text is cut before the first of them.
  Other generation keys are a ValueError naming them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from afmc.runtime.compiled import CompiledModel
from afmc.runtime.generation import GenerationOptions, check_language_model, generate

GENERATION_KEYS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p")
DEFAULT_MAX_GEN_TOKS = 256
PAD_ID = 0  # fills a row on the right; the logits there are never read

# (context tokens, continuation tokens): the continuation is scored given the context
TokenPair = tuple[list[int], list[int]]


def _integer(name: str, value: Any, minimum: int) -> int:
    """`value` as an int >= minimum; ValueError naming model_args key `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"afmc model_args: {name} must be an integer >= {minimum}, "
                         f"got {value!r}")
    return value


def _boolean(name: str, value: Any) -> bool:
    """`value` as a bool (lm-eval turns 'true'/'false' into one); ValueError otherwise."""
    if not isinstance(value, bool):
        raise ValueError(f"afmc model_args: {name} must be true or false, got {value!r}")
    return value


def token_logprobs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log softmax(logits)[i, targets[i]] for logits [n, V] (float64, stable)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=-1))
    return np.take_along_axis(shifted, targets[:, None], axis=-1)[:, 0] - log_norm


def cut_at_stops(text: str, until: Iterable[str]) -> str:
    """`text` up to the earliest occurrence of any string of `until`."""
    end = min((text.find(stop) for stop in until if stop and stop in text), default=len(text))
    return text[:end]


@register_model("afmc")
class AfmcLM(TemplateLM):
    """A chip (or the FP view) of a compiled afmc language model, as an lm-eval model."""

    def __init__(self, path: str | None = None, seed: int = 0, read_noise: float = 0.0,
                 fp: bool = False, batch_size: int | str = 8, max_length: int | None = None,
                 prefix_token: int | None = None, sample_seed: int = 0,
                 device: str | None = None, max_batch_size: int | None = None,
                 **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"afmc model_args: unknown key(s) {', '.join(sorted(unknown))} "
                             "(known: path, seed, read_noise, fp, batch_size, max_length, "
                             "prefix_token, sample_seed)")
        if path is None or path == "":
            raise ValueError("afmc model_args: path is missing (path=OUT, the output "
                             "directory of afmc compile)")
        if (isinstance(read_noise, bool) or not isinstance(read_noise, int | float)
                or not math.isfinite(read_noise) or read_noise < 0):
            raise ValueError(f"afmc model_args: read_noise must be a finite number >= 0, "
                             f"got {read_noise!r}")
        self.fp = _boolean("fp", fp)
        if self.fp and read_noise:
            raise ValueError("afmc model_args: read_noise is a chip's, not the FP view's "
                             "(fp=true)")
        self.seed = _integer("seed", seed, 0)
        self.sample_seed = _integer("sample_seed", sample_seed, 0)
        self.batch_size = _integer("batch_size", int(batch_size) if str(batch_size).isdigit()
                                   else batch_size, 1)
        self.model = CompiledModel(str(path))
        check_language_model(self.model.record)
        self.tokenizer = self.model.tokenizer()
        self.max_length = self._max_length(max_length)
        special = getattr(self.tokenizer, "tokenizer", None)  # a transformers tokenizer
        self._eos: int | None = getattr(special, "eos_token_id", None)
        if prefix_token is None:
            bos = getattr(special, "bos_token_id", None)
            prefix_token = bos if bos is not None else self._eos
        self._prefix = (None if prefix_token is None else
                        _integer("prefix_token", prefix_token, 0))
        if self._prefix is not None and self._prefix >= self.tokenizer.vocab_size:
            raise ValueError(f"afmc model_args: prefix_token {self._prefix} is not below the "
                             f"vocabulary size {self.tokenizer.vocab_size}")
        self.chip = (self.model.fp_view() if self.fp
                     else self.model.chip(self.seed, read_noise=float(read_noise)))

    def _max_length(self, max_length: int | None) -> int:
        """max_length, or the record's max_positions; at most that, at least 2."""
        limit = self.model.max_positions
        if max_length is None:
            if limit is None:
                raise ValueError(f"afmc model_args: {self.model.out_dir} does not record its "
                                 "max_positions; give max_length")
            return limit
        max_length = _integer("max_length", max_length, 2)
        if limit is not None and max_length > limit:
            raise ValueError(f"afmc model_args: max_length {max_length} exceeds the model's "
                             f"{limit} positions")
        return max_length

    @property
    def eot_token_id(self) -> int | None:
        return self._eos

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context is replaced by; ValueError when there is none."""
        if self._prefix is None:
            raise ValueError("afmc: an empty context needs a token to condition on and the "
                             "tokenizer has no bos or eos: give model_args prefix_token=ID")
        return self._prefix

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   **kwargs: Any) -> list[int]:
        """The compiled model's token ids of `string` (its tokenizer adds no special tokens)."""
        return [int(token) for token in self.tokenizer.encode(string)]

    def tok_decode(self, tokens: Iterable[int]) -> str:
        return self.tokenizer.decode(tokens)

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any
                              ) -> list[tuple[float, bool]]:
        """(sum of log-probabilities, all greedy) of each continuation (module rules)."""
        return self.score_pairs([(context, continuation)
                                 for _, context, continuation in requests], disable_tqdm)

    def score_pairs(self, pairs: list[TokenPair], disable_tqdm: bool = False
                    ) -> list[tuple[float, bool]]:
        """(sum of log-probabilities, all greedy) of each continuation given its context,
        in the order given; the rows run by length in batches (module rules)."""
        rows = []
        for context, continuation in pairs:
            if not continuation:
                raise ValueError("afmc: a continuation of no tokens cannot be scored")
            if len(continuation) > self.max_length:
                raise ValueError(f"afmc: a continuation of {len(continuation)} tokens exceeds "
                                 f"max_length {self.max_length}")
            if not context:
                raise ValueError("afmc: a continuation needs at least one context token")
            rows.append((context + continuation)[-(self.max_length + 1):][:-1])
        order = sorted(range(len(pairs)), key=lambda index: -len(rows[index]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        for start in tqdm(range(0, len(order), self.batch_size), disable=disable_tqdm,
                          desc="afmc loglikelihood"):
            batch = order[start:start + self.batch_size]
            width = len(rows[batch[0]])
            ids = np.full((len(batch), width), PAD_ID, dtype=np.int64)
            for row, index in enumerate(batch):
                ids[row, :len(rows[index])] = rows[index]
            logits = self.chip.run(ids)
            for row, index in enumerate(batch):
                continuation = np.asarray(pairs[index][1], dtype=np.int64)
                end = len(rows[index])
                scored = logits[row, end - len(continuation):end]
                logprob = float(token_logprobs(scored, continuation).sum())
                greedy = bool((scored.argmax(axis=-1) == continuation).all())
                results[index] = (logprob, greedy)
        return results

    def rolling_windows(self, text: str) -> list[TokenPair]:
        """The disjoint (context, continuation) windows that score `text` (module rules)."""
        tokens = self.tok_encode(text)
        prefix = self._prefix
        if prefix is None:
            if not tokens:
                return []
            prefix, tokens = tokens[0], tokens[1:]
        return [make_disjoint_window(window) for window in
                get_rolling_token_windows(tokens, prefix, self.max_length, context_len=1)]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False
                              ) -> list[float]:
        """The log-likelihood of each text, all its windows scored together (module rules)."""
        windows = [self.rolling_windows(request.args[0]) for request in requests]
        scores = iter(self.score_pairs([pair for text in windows for pair in text],
                                       disable_tqdm))
        return [sum(next(scores)[0] for _ in text) for text in windows]

    def generation_options(self, gen_kwargs: dict[str, Any], seed: int
                           ) -> tuple[GenerationOptions, list[str]]:
        """The GenerationOptions and stop strings of one request's gen_kwargs."""
        unknown = sorted(set(gen_kwargs) - set(GENERATION_KEYS) - {
            "max_new_tokens", "max_tokens", "max_completion_tokens"})
        if unknown:
            raise ValueError(f"afmc: generation option(s) {', '.join(unknown)} not supported "
                             f"(supported: {', '.join(GENERATION_KEYS)})")
        kwargs = normalize_gen_kwargs(gen_kwargs, DEFAULT_MAX_GEN_TOKS)
        temperature = float(kwargs["temperature"]) if kwargs["do_sample"] else 0.0
        sampled = temperature > 0
        options = GenerationOptions(
            max_new_tokens=int(kwargs["max_gen_toks"]), temperature=temperature,
            top_k=int(kwargs.get("top_k") or 0) if sampled else 0,
            top_p=float(kwargs.get("top_p") or 1.0) if sampled else 1.0,
            seed=seed, eos_token_id=self._eos)
        options.check()
        return options, [str(stop) for stop in kwargs["until"]]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """The text generated after each context, cut at its stop strings (module rules)."""
        texts = []
        for index, request in enumerate(tqdm(requests, disable=disable_tqdm,
                                             desc="afmc generate_until")):
            context, gen_kwargs = request.args
            options, until = self.generation_options(dict(gen_kwargs),
                                                     self.sample_seed + index)
            room = self.max_length - options.max_new_tokens + 1
            if room < 1:
                raise ValueError(f"afmc: max_gen_toks {options.max_new_tokens} leaves no room "
                                 f"for a prompt in max_length {self.max_length}")
            prompt = self.tok_encode(context)[-room:] or [self.prefix_token_id]

            def stopped(tokens: list[int], until: list[str] = until) -> bool:
                return any(stop in self.tok_decode(tokens) for stop in until if stop)

            result = generate(self.chip, self.model.record, prompt, options, stopped)
            tokens = result.tokens[:-1] if result.stopped_at_eos else result.tokens
            texts.append(cut_at_stops(self.tok_decode(tokens), until))
        return texts

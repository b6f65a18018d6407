"""Training text sampled from the teacher model itself (``afmc synth``).

Hardware-aware distillation trains the analog student on text the FP teacher
generates (the Analog Foundation Models recipe: temperature 1, top-p 1,
top-k 50). Rules:

- DATA is a directory of shards ``shard-00000.npy``, ... holding int32 token
  ids ``[shard_sequences, seq_len]`` (the last shard may hold fewer) for
  ``ceil(tokens / seq_len)`` sequences in all, and ``synth.json`` with the
  options, ``sequences``, ``shards`` and ``complete``.
- Every sequence starts with the prompt (``prompt_tokens``; default: the
  tokenizer's BOS token when the model has a tokenizer with one, otherwise one
  random token per sequence) and continues with ``seq_len - len(prompt)``
  sampled tokens. Generation uses the KV cache and does not stop at EOS: the
  model samples on past it, so a sequence may hold several documents. Only
  temperature, top-k (0: off) and top-p shape the distribution; the model's
  own generation defaults (EOS, repetition penalty, ...) are ignored.
- A shard depends only on the model, the options and (seed, shard index):
  torch is seeded from both before the shard is generated, batch by batch.
  Each shard is written to a temporary file and renamed into place, so a
  shard file on disk is always complete.
- Running again on the same DATA with the same options keeps the shards on
  disk and generates the missing ones, so an interrupted run resumed gives the
  same bytes as an uninterrupted one. Different options are refused, naming
  the first that differs; ``force=True`` deletes the shards and starts over.
- DATA may not be, hold or lie inside the teacher model, nor be the current
  directory (afmc.io.output_dir.check_output; checked before the model loads).
- Options out of range (afmc.train.synth_options) are refused before the model
  loads, naming the option. A corrupt ``synth.json`` or shard is an error
  naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.generation.streamers import BaseStreamer

from afmc.io.input_files import read_json_object
from afmc.train.synth_options import check_synth_options

RECORD = "synth.json"
_SHARD = "shard-{:05d}.npy"
# The options a resumed run must share with the recorded one, in the order they are checked.
_OPTIONS = ("model", "tokens", "seq_len", "seed", "temperature", "top_k", "top_p",
            "shard_sequences", "batch_size", "prompt_tokens", "vocab_size")

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SynthResult:
    """What ``synthesize`` left in ``output``: the shards and how many were already there."""

    output: Path
    sequences: int
    seq_len: int
    shards: int
    kept_shards: int


def synthesize(
    model: str | Path,
    output: Path,
    tokens: int,
    *,
    seq_len: int = 256,
    shard_sequences: int = 64,
    batch_size: int = 8,
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 1.0,
    seed: int = 0,
    prompt_tokens: Sequence[int] | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> SynthResult:
    """Sample ``tokens`` tokens (rounded up to whole sequences) from ``model`` into ``output``.

    ``model`` is ``afmc-tiny``, a Hugging Face directory or a GGUF file.
    ``prompt_tokens``: the ids every sequence starts with (default: BOS or one
    random token, see the module docstring). ``force``: delete the shards and
    ``synth.json`` in ``output`` and start over. ``progress(done, total)`` is
    called with token counts as generation goes (``done`` starts at the tokens
    of kept shards). See the module docstring for the layout, the sampling and
    the resume rules.

    Raises:
        ValueError: an option out of range, or ``output`` holds data made with
            other options (or files that are not afmc synth data) and not ``force``.
        FileNotFoundError: the model does not exist.
        NotADirectoryError: ``output`` is a file.
        CaptureError: the model cannot be loaded.
    """
    check_synth_options(tokens, seq_len, shard_sequences, batch_size, temperature, top_k,
                        top_p, prompt_tokens)
    from afmc.io.output_dir import check_output
    from afmc.models import BUILTIN_MODELS, model_paths, resolve_model_path

    name = str(model)
    path = resolve_model_path(name)
    output = Path(output)
    check_output(output, model_paths(model))
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"{output}: exists and is not a directory")
    lm = _load_teacher(path)
    vocab_size = int(lm.config.get_text_config().vocab_size)
    prompt = ([int(t) for t in prompt_tokens] if prompt_tokens is not None
              else _bos_prompt(path))
    if prompt is not None and not all(0 <= t < vocab_size for t in prompt):
        raise ValueError(f"prompt token ids must lie in [0, {vocab_size})")
    max_positions = getattr(lm.config.get_text_config(), "max_position_embeddings", None)
    if max_positions is not None and seq_len > max_positions:
        raise ValueError(f"--seq-len {seq_len} exceeds the model's {max_positions} positions")
    sequences = math.ceil(tokens / seq_len)
    record = {
        "model": name if name in BUILTIN_MODELS else str(path.resolve()),
        "tokens": tokens, "seq_len": seq_len, "seed": seed, "temperature": float(temperature),
        "top_k": top_k, "top_p": float(top_p), "shard_sequences": shard_sequences,
        "batch_size": batch_size, "prompt_tokens": prompt, "vocab_size": vocab_size,
        "sequences": sequences, "shards": math.ceil(sequences / shard_sequences),
        "complete": False,
    }
    _prepare_output(output, record, force)

    shard_rows = [min(shard_sequences, sequences - start)
                  for start in range(0, sequences, shard_sequences)]
    total = sequences * seq_len
    kept = [_kept_shard(output / _SHARD.format(i), rows, seq_len)
            for i, rows in enumerate(shard_rows)]
    done = sum(rows for rows, keep in zip(shard_rows, kept, strict=True) if keep) * seq_len
    report = progress or (lambda done, total: None)
    report(done, total)
    for index, rows in enumerate(shard_rows):
        if kept[index]:
            continue
        shard = _generate_shard(lm, record, index, rows,
                                lambda count, before=done: report(before + count, total))
        _write_atomic(output / _SHARD.format(index), lambda f, shard=shard: np.save(f, shard))
        done += rows * seq_len
    record["complete"] = True
    _write_record(output, record)
    return SynthResult(output, sequences, seq_len, len(shard_rows), sum(kept))


def load_token_sequences(data: Path) -> np.ndarray:
    """The token ids of an ``afmc synth`` directory: int64 ``[sequences, seq_len]``.

    Shards are concatenated in order. Raises ``FileNotFoundError`` without
    ``synth.json`` or a shard, and ``ValueError`` when the data is incomplete
    or a shard has the wrong shape.
    """
    data = Path(data)
    record_path = data / RECORD
    if not record_path.is_file():
        raise FileNotFoundError(f"{data}: no {RECORD} (not the output of afmc synth)")
    record = read_json_object(record_path, "afmc synth record",
                              ("complete", "shards", "sequences", "seq_len"))
    if not record["complete"]:
        raise ValueError(f"{data} is incomplete; rerun afmc synth to finish it")
    shards = [_load_shard(data / _SHARD.format(i)) for i in range(record["shards"])]
    ids = np.concatenate(shards).astype(np.int64)
    if ids.shape != (record["sequences"], record["seq_len"]):
        raise ValueError(f"{data}: shards hold {list(ids.shape)} tokens, {RECORD} says "
                         f"[{record['sequences']}, {record['seq_len']}]")
    return ids


def _load_teacher(path: Path) -> PreTrainedModel:
    """The causal LM at ``path`` (float32, eval) with plain generation defaults."""
    from afmc.capture.hf import load_causal_lm

    lm = load_causal_lm(path)
    lm.generation_config = GenerationConfig()
    return lm


def _bos_prompt(path: Path) -> list[int] | None:
    """``[bos]`` of the model's tokenizer; None when it has no tokenizer or no BOS token."""
    from afmc.data.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(path)
    except ValueError:
        return None
    bos = getattr(getattr(tokenizer, "tokenizer", None), "bos_token_id", None)
    return None if bos is None else [int(bos)]


def _prepare_output(output: Path, record: dict, force: bool) -> None:
    """Make ``output`` ready for ``record``'s shards: new, resumed, or emptied with ``force``.

    Stale temporary files of a killed run are removed in every case.
    """
    for stale in [*output.glob(".shard-*.npy.tmp"), output / f".{RECORD}.tmp"]:
        stale.unlink(missing_ok=True)
    recorded_path = output / RECORD
    if force:
        for old in [*output.glob("shard-*.npy"), recorded_path]:
            old.unlink(missing_ok=True)
    elif recorded_path.is_file():
        recorded = read_json_object(recorded_path, "afmc synth record")
        for key in _OPTIONS:
            if recorded.get(key) != record[key]:
                raise ValueError(
                    f"{output}: {key} {json.dumps(record[key])} differs from "
                    f"{json.dumps(recorded.get(key))} in {RECORD} (rerun with the recorded "
                    f"options, or --force to start over)")
        return
    elif output.is_dir() and any(output.iterdir()):
        raise ValueError(f"{output}: exists and holds no {RECORD} (not afmc synth data; "
                         f"use --force to write into it)")
    output.mkdir(parents=True, exist_ok=True)
    _write_record(output, record)


def _kept_shard(path: Path, rows: int, seq_len: int) -> bool:
    """Whether the shard ``path`` is on disk; raises ``ValueError`` when its shape is wrong."""
    if not path.is_file():
        return False
    shard = _load_shard(path, mmap_mode="r")
    if shard.shape != (rows, seq_len) or shard.dtype != np.int32:
        raise ValueError(f"{path}: holds {shard.dtype} {list(shard.shape)}, expected int32 "
                         f"[{rows}, {seq_len}] (use --force to start over)")
    return True


def _load_shard(path: Path, mmap_mode: Literal["r"] | None = None) -> np.ndarray:
    """The array in the shard file ``path``; ValueError naming it when it is not one."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, EOFError) as error:
        raise ValueError(f"{path}: not a readable shard ({error})") from None


def _shard_seed(seed: int, index: int) -> int:
    """The torch seed of shard ``index``: a hash of (seed, index)."""
    digest = hashlib.sha256(f"afmc-synth:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class _TokenCounter(BaseStreamer):
    """A generate streamer that reports the tokens of a batch produced so far."""

    def __init__(self, report: Callable[[int], None]) -> None:
        self.report = report
        self.tokens = 0

    def put(self, value: torch.Tensor) -> None:
        self.tokens += value.numel()
        self.report(self.tokens)

    def end(self) -> None:
        """Nothing to flush: counts are reported as they come."""


def _generate_shard(lm: PreTrainedModel, record: dict, index: int, rows: int,
                    progress: Callable[[int], None]) -> np.ndarray:
    """Sample shard ``index``: ``rows`` sequences, ``record['batch_size']`` at a time.

    The global torch RNG is seeded from (seed, index) inside a fork, so the
    caller's RNG state is left as it was.
    """
    seq_len, batch_size, prompt = record["seq_len"], record["batch_size"], record["prompt_tokens"]
    batches = []
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(_shard_seed(record["seed"], index))
        for start in range(0, rows, batch_size):
            n = min(batch_size, rows - start)
            if prompt is None:
                ids = torch.randint(record["vocab_size"], (n, 1))
            else:
                ids = torch.tensor(prompt, dtype=torch.long).expand(n, -1).contiguous()
            counter = _TokenCounter(lambda count, before=start * seq_len: progress(before + count))
            batches.append(lm.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=True,
                temperature=record["temperature"], top_k=record["top_k"], top_p=record["top_p"],
                use_cache=True, max_new_tokens=seq_len - ids.shape[1], streamer=counter,
            ))
    return torch.cat(batches).numpy().astype(np.int32)


def _write_record(output: Path, record: dict) -> None:
    """Write ``synth.json`` atomically."""
    text = json.dumps(record, indent=2) + "\n"
    _write_atomic(output / RECORD, lambda f: f.write(text.encode("utf-8")))


def _write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file in the same
    directory, flushed to disk, then renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

"""Tokenizers behind one small interface: ``encode``, ``decode``, ``vocab_size``.

A model directory without tokenizer files whose ``config.json`` says
``vocab_size: 256`` (such as the built-in ``afmc-tiny``) reads raw UTF-8
bytes; any other directory must hold files that
``transformers.AutoTokenizer`` can load offline. A GGUF file (or a directory
holding one GGUF and no ``config.json``) has its tokenizer built from the
vocabulary in its metadata.

``text_feeds`` turns token windows into the inputs of a text model: a causal LM
takes the ids alone, an encoder also an attention mask of ones and token type
ids of zeros (one unpadded segment, as its tokenizer would give).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np

from afmc.io.layout import TOKENIZER_DIR

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
)


class Tokenizer(Protocol):
    """What afmc needs from a tokenizer."""

    vocab_size: int

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as token ids 0-255; no special tokens."""

    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int64) of the UTF-8 bytes of ``text``."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of byte ids; invalid UTF-8 sequences become U+FFFD."""
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class HFTokenizer:
    """A ``transformers`` tokenizer behind the afmc interface (no special tokens added)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int64) of ``text``."""
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False), dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids."""
        return self.tokenizer.decode([int(i) for i in ids])

def token_windows(ids: np.ndarray, seq_len: int, max_tokens: int | None = None) -> np.ndarray:
    """Non-overlapping windows ``[B, seq_len]`` over the first ``max_tokens`` ids.

    The ragged tail is dropped; ``ValueError`` if not even one full window fits.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n_windows = len(ids) // seq_len
    if n_windows == 0:
        raise ValueError(f"{len(ids)} tokens do not fill one window of seq_len {seq_len}")
    return ids[: n_windows * seq_len].reshape(n_windows, seq_len)


def text_feeds(ids: np.ndarray, input_names: list[str]) -> list[np.ndarray]:
    """The model inputs named ``input_names`` for token windows ``ids`` [batch, seq].

    ``input_ids`` are the ids, ``attention_mask`` ones, ``token_type_ids`` zeros.
    """
    fill = {"input_ids": lambda: ids, "attention_mask": lambda: np.ones_like(ids),
            "token_type_ids": lambda: np.zeros_like(ids)}
    unknown = [name for name in input_names if name not in fill]
    if unknown:
        raise ValueError(f"no text input for {', '.join(unknown)} (text models take "
                         f"{', '.join(fill)})")
    return [fill[name]() for name in input_names]


def find_tokenizer(model_dir: Path) -> Tokenizer | None:
    """The tokenizer of `model_dir` (load_tokenizer), or None when it has none."""
    try:
        return load_tokenizer(model_dir)
    except ValueError:
        return None


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """The tokenizer of the Hugging Face model directory (or GGUF file) ``model_dir``.

    Raises ``ValueError`` when the directory has neither tokenizer files nor a
    byte-level ``config.json`` (``vocab_size`` 256).
    """
    model_dir = Path(model_dir)
    from afmc.capture.gguf import find_gguf, load_gguf_tokenizer

    gguf = find_gguf(model_dir)
    if gguf is not None:
        return HFTokenizer(load_gguf_tokenizer(gguf))
    if any((model_dir / name).is_file() for name in _TOKENIZER_FILES):
        from transformers import AutoTokenizer

        return HFTokenizer(AutoTokenizer.from_pretrained(model_dir, local_files_only=True))
    config_path = model_dir / "config.json"
    vocab_size = None
    if config_path.is_file():
        vocab_size = json.loads(config_path.read_text(encoding="utf-8")).get("vocab_size")
    if vocab_size == ByteTokenizer.vocab_size:
        return ByteTokenizer()
    raise ValueError(
        f"no tokenizer for {model_dir}: it has no tokenizer files "
        f"({', '.join(_TOKENIZER_FILES)}) and config.json vocab_size is {vocab_size}, not 256"
    )


def compiled_tokenizer(out_dir: Path, record: dict) -> Tokenizer:
    """The tokenizer a compiled language model (OUT, its afmc.json `record`) was compiled
    with; ValueError if it has none."""
    kind = record.get("tokenizer")
    if kind == "bytes":
        return ByteTokenizer()
    if kind == TOKENIZER_DIR:
        from transformers import AutoTokenizer

        return HFTokenizer(AutoTokenizer.from_pretrained(out_dir / TOKENIZER_DIR,
                                                         local_files_only=True))
    raise ValueError(f"{out_dir}: compiled model has no tokenizer (not a language model)")

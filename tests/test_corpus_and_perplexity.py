"""Corpus splits, tokenizers, perplexity helpers and the shipped afmc-tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from afmc.data import corpus
from afmc.data.corpus import (
    CALIBRATION_FILES,
    HELDOUT_FILES,
    TRAIN_FILES,
    stdlib_files,
    stdlib_text,
)
from afmc.data.tokenizer import ByteTokenizer, load_tokenizer, token_windows
from afmc.eval.perplexity import perplexity, torch_logits_fn
from afmc.models import BUILTIN_MODELS, resolve_model_path


def test_splits_are_disjoint_and_present():
    assert TRAIN_FILES and HELDOUT_FILES
    assert not set(TRAIN_FILES) & set(HELDOUT_FILES)
    assert len(set(TRAIN_FILES)) == len(TRAIN_FILES)
    heldout = stdlib_files("heldout")
    assert [p.name for p in heldout][:2] == ["argparse.py", "difflib.py"]
    assert 200_000 <= len(stdlib_text("heldout").encode()) <= 400_000
    assert all(p.is_file() for p in stdlib_files("train"))
    assert set(CALIBRATION_FILES) <= set(TRAIN_FILES)
    assert len(stdlib_text("calibration")) > 50_000


def test_text_joins_files_in_order():
    texts = [p.read_text(encoding="utf-8") for p in stdlib_files("heldout")]
    assert stdlib_text("heldout") == "\n\n".join(texts)


def test_missing_file_is_named(monkeypatch):
    monkeypatch.setattr(corpus, "HELDOUT_FILES", ("argparse.py", "no_such_module.py"))
    with pytest.raises(FileNotFoundError, match="no_such_module.py"):
        stdlib_files("heldout")
    with pytest.raises(ValueError, match="unknown corpus split"):
        stdlib_files("test")


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "def f(x):\n    return 'µ→ok'\n"
    ids = tok.encode(text)
    assert ids.dtype == np.int64
    assert ids.min() >= 0 and ids.max() < 256
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.vocab_size == 256


def test_load_tokenizer_choices(tmp_path):
    assert isinstance(load_tokenizer(BUILTIN_MODELS["afmc-tiny"]), ByteTokenizer)
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 1000}))
    with pytest.raises(ValueError, match="no tokenizer"):
        load_tokenizer(tmp_path)


def test_load_tokenizer_wraps_hf_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    ids = tok.encode("hello world")
    assert ids.dtype == np.int64
    assert ids.tolist() == [1, 2]
    assert tok.decode(ids) == "hello world"
    assert tok.vocab_size == 3


def test_token_windows():
    ids = np.arange(10)
    assert token_windows(ids, 4, None).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert token_windows(ids, 4, 5).shape == (1, 4)
    assert token_windows(ids, 5, None).dtype == np.int64
    with pytest.raises(ValueError, match="one window"):
        token_windows(ids, 11, None)
    with pytest.raises(ValueError, match="one window"):
        token_windows(ids, 4, 3)


def test_uniform_logits_give_vocab_size():
    windows = np.random.default_rng(0).integers(0, 256, size=(5, 16))
    ppl = perplexity(lambda ids: np.zeros((*ids.shape, 256), np.float32), windows, batch_size=2)
    assert ppl == pytest.approx(256.0, abs=1e-6)


def test_correct_predictor_gives_one():
    windows = np.random.default_rng(1).integers(0, 256, size=(3, 32))
    lookup = {w.tobytes(): w for w in windows}
    seen = []

    def oracle(ids: np.ndarray) -> np.ndarray:
        logits = np.full((*ids.shape, 256), -40.0, np.float32)
        rows = np.stack([lookup[w.tobytes()] for w in ids])
        b, t = np.meshgrid(np.arange(len(ids)), np.arange(ids.shape[1] - 1), indexing="ij")
        logits[b, t, rows[:, 1:]] = 40.0
        return logits

    ppl = perplexity(oracle, windows, batch_size=2, progress=lambda d, n: seen.append((d, n)))
    assert ppl == pytest.approx(1.0, abs=1e-6)
    assert seen == [(2, 3), (3, 3)]


def test_resolve_model_path(tmp_path):
    assert resolve_model_path("afmc-tiny") == BUILTIN_MODELS["afmc-tiny"]
    assert resolve_model_path(str(tmp_path)) == tmp_path
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope") as info:
        resolve_model_path(str(missing))
    assert "\n" not in str(info.value)


def test_shipped_afmc_tiny_is_a_good_byte_model():
    from transformers import LlamaForCausalLM

    model_dir = resolve_model_path("afmc-tiny")
    assert not (model_dir / "tokenizer.json").exists()
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    assert model.config.vocab_size == 256
    assert not model.config.tie_word_embeddings
    assert all(p.dtype == torch.float32 for p in model.parameters())
    windows = token_windows(ByteTokenizer().encode(stdlib_text("heldout")), 256, 4096)
    assert perplexity(torch_logits_fn(model), windows) < 10.0

"""Every tested decoder family and the BERT-like encoders through capture, compile and run.

Proves, on tiny random models (hidden 32, 2 layers, byte vocabulary): (1) each family
compiles for aimc with text calibration, the FP view of the compiled file equals
transformers' logits (1e-4), and a chip instance runs and is evaluated; (2) int8 on a
representative subset (a hand-written linear: Falcon; eager attention: Gemma2; mixture of
experts: Mixtral, Qwen2-MoE), int4 on the mixtures of experts; (3) the experts of MoE blocks are
analog layers; (4) encoders (BERT, RoBERTa, DistilBERT) compile for aimc with every
text input calibrated, their FP view's mean-pooled embeddings equal transformers',
and `afmc run` / `afmc eval` report the embedding error against the FP view.
Llama, Phi-3, Qwen2 and GPT-2 are covered in test_compile_pipeline.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as hf
from typer.testing import CliRunner

from afmc.api import compile as afmc_compile
from afmc.api import load
from afmc.cli import app
from afmc.config import load_config
from afmc.eval.evaluate import evaluate

pytestmark = pytest.mark.slow  # one compile per family and target

VOCAB = 256
TOKENS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
SIZES = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=128, **TOKENS)
GQA = dict(SIZES, num_key_value_heads=2)
EXPERTS = dict(num_experts_per_tok=2)
FAMILIES = {
    "mistral": lambda: hf.MistralConfig(**GQA),
    "qwen3": lambda: hf.Qwen3Config(**GQA, head_dim=8),
    "gemma": lambda: hf.GemmaConfig(**GQA, head_dim=8),
    "gemma2": lambda: hf.Gemma2Config(**GQA, head_dim=8),
    "gemma3_text": lambda: hf.Gemma3TextConfig(**GQA, head_dim=8),
    "phi": lambda: hf.PhiConfig(**SIZES),
    "smollm3": lambda: hf.SmolLM3Config(**GQA),
    "granite": lambda: hf.GraniteConfig(**GQA),
    "olmo2": lambda: hf.Olmo2Config(**GQA),
    "stablelm": lambda: hf.StableLmConfig(**GQA),
    "gpt_neox": lambda: hf.GPTNeoXConfig(**SIZES),
    "starcoder2": lambda: hf.Starcoder2Config(**GQA),
    "opt": lambda: hf.OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64,
                                num_hidden_layers=2, num_attention_heads=4,
                                max_position_embeddings=128, word_embed_proj_dim=32, **TOKENS),
    "falcon": lambda: hf.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, **TOKENS),
    "bloom": lambda: hf.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4,
                                    **TOKENS),
    "mixtral": lambda: hf.MixtralConfig(**GQA, **EXPERTS, num_local_experts=4),
    "qwen2_moe": lambda: hf.Qwen2MoeConfig(**GQA, **EXPERTS, num_experts=4,
                                           moe_intermediate_size=32,
                                           shared_expert_intermediate_size=32),
}
DIGITAL_SUBSET = ["falcon", "gemma2", "mixtral", "qwen2_moe"]
INT4_SUBSET = ["mixtral", "qwen2_moe"]  # int4 writes the same MatMulNBits for every family
MOE = ("mixtral", "qwen2_moe")
ENCODER_SIZES = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                     num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=130,
                     pad_token_id=0)
ENCODERS = {
    "bert": lambda: hf.BertConfig(**ENCODER_SIZES),
    "roberta": lambda: hf.RobertaConfig(**ENCODER_SIZES),
    "distilbert": lambda: hf.DistilBertConfig(vocab_size=VOCAB, dim=32, hidden_dim=64, n_layers=2,
                                              n_heads=4, max_position_embeddings=128),
}
SMALL = ["hardware.max_in=32", "calibration.seq_len=64"]  # within 128 positions
runner = CliRunner()


def _ids(batch: int = 3, seq: int = 11) -> np.ndarray:
    return np.random.default_rng(1).integers(3, VOCAB, (batch, seq), dtype=np.int64)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, Path]:
    """Each family as a seeded random model saved with save_pretrained (no tokenizer files:
    the byte vocabulary reads text as UTF-8 bytes)."""
    root = tmp_path_factory.mktemp("families")
    dirs = {}
    for family, config in {**FAMILIES, **ENCODERS}.items():
        torch.manual_seed(0)
        auto = hf.AutoModel if family in ENCODERS else hf.AutoModelForCausalLM
        auto.from_config(config()).eval().save_pretrained(root / family)
        dirs[family] = root / family
    for family in ENCODERS:
        _save_byte_tokenizer(dirs[family])
    return dirs


def _save_byte_tokenizer(model_dir: Path) -> None:
    """A WordPiece vocabulary of 256 entries: the specials, then single characters."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(161, 161 + 157)]
    (model_dir / "vocab.txt").write_text("\n".join(specials + chars[:VOCAB - 5]) + "\n")
    hf.BertTokenizer(vocab_file=str(model_dir / "vocab.txt")).save_pretrained(model_dir)


def _hf_logits(model_dir: Path, ids: np.ndarray) -> np.ndarray:
    model = hf.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_aimc_fp_view_equals_transformers(family, family_dirs, calibration_text, tmp_path):
    out = tmp_path / "out"
    result = afmc_compile(str(family_dirs[family]), "aimc", load_config(None, SMALL),
                          calibration=calibration_text, output=out)
    assert result.record["summary"]["analog_layers"] >= 9
    if family in MOE:
        _assert_experts_analog(result)
    ids = _ids()
    np.testing.assert_allclose(load(out).fp_view().run(ids),
                               _hf_logits(family_dirs[family], ids), rtol=1e-4, atol=1e-4)
    assert np.isfinite(load(out).chip(1).run(ids)).all()
    report = evaluate(load(out), ids.reshape(-1), [0], seq_len=11)
    assert np.isfinite(report.fp) and np.isfinite(report.chips[0])


@pytest.mark.parametrize(("family", "target"), [
    *((family, "int8") for family in DIGITAL_SUBSET),
    *((family, "int4") for family in INT4_SUBSET)])
def test_digital_targets(family, target, family_dirs, calibration_text, tmp_path):
    out = tmp_path / target
    afmc_compile(str(family_dirs[family]), target, load_config(None, SMALL[1:]),
                 calibration=calibration_text, output=out)
    ids = _ids()
    expected = _hf_logits(family_dirs[family], ids)
    np.testing.assert_allclose(load(out).fp_view().run(ids), expected, rtol=1e-4, atol=1e-4)
    got = load(out).chip(None).run(ids)
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 0.5


def _assert_experts_analog(result) -> None:
    analog = {layer.name for layer in result.layers if layer.placement == "analog"}
    for block in range(2):
        for expert in range(4):
            for projection in ("gate_up", "down"):
                assert f"lm.model.layers.{block}.mlp.experts.{projection}.{expert}" in analog


def _hf_embeddings(model_dir: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    model = hf.AutoModel.from_pretrained(model_dir).eval()
    inputs = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state.numpy()
    mask = feeds["attention_mask"][..., None]
    return (hidden * mask).sum(1) / mask.sum(1)


@pytest.mark.parametrize("family", list(ENCODERS))
def test_encoder_compiles_runs_and_evaluates(family, family_dirs, calibration_text, tmp_path):
    out = tmp_path / "out"
    result = afmc_compile(str(family_dirs[family]), "aimc", load_config(None, SMALL),
                          calibration=calibration_text, output=out)
    names = result.record["inputs"]
    assert names[:2] == ["input_ids", "attention_mask"]
    assert result.record["outputs"] == ["embeddings"]
    assert (family == "distilbert") == ("token_type_ids" not in names)
    ids = _ids(2, 9)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "token_type_ids": np.zeros_like(ids)}
    feeds["attention_mask"][1, 6:] = 0
    feeds = {name: feeds[name] for name in names}
    expected = _hf_embeddings(family_dirs[family], feeds)
    fp = load(out).fp_view().run(*feeds.values())
    np.testing.assert_allclose(fp, expected, rtol=1e-4, atol=1e-5)
    analog = load(out).chip(0).run(*feeds.values())
    assert np.linalg.norm(analog - expected) / np.linalg.norm(expected) < 0.5
    run = runner.invoke(app, ["run", str(out), "--text", str(calibration_text),
                              "--max-tokens", "100"])
    assert run.exit_code == 0, run.output
    assert "relative error" in run.stdout and "cosine" in run.stdout
    evaluated = runner.invoke(app, ["eval", str(out), "--text", str(calibration_text),
                                    "--seeds", "2", "--seq-len", "64", "--max-tokens", "512"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "seed 1" in evaluated.stdout and "embedding relative error" in evaluated.stdout

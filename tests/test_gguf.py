"""GGUF files in: a tiny llama written with the gguf package compiles like an HF directory.

Proves: (1) `afmc compile model.gguf` (and a directory holding one GGUF) dequantizes the
file through transformers' GGUF loader, and the FP view of the compiled file equals the
logits of transformers' model loaded from the same GGUF (F32 and F16 tensors); (2) the
output carries the GGUF's tokenizer, which `afmc run` loads; (3) a file that is not GGUF,
a truncated GGUF, an unsupported architecture and a directory with two GGUFs each give
one `error: ...` line naming the file, exit code 1, and no traceback.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode
from typer.testing import CliRunner

from afmc.api import compile as afmc_compile
from afmc.api import load
from afmc.cli import app
from afmc.config import load_config

MERGES = ["t h", "th e", "i n", "a n", "e r"]
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 32, 2, 4, 2, 64
runner = CliRunner()


def write_tiny_llama(path: Path, dtype: type = np.float32, architecture: str = "llama") -> None:
    """A random 2-layer llama GGUF with a byte-level BPE ("gpt2") vocabulary of 262 tokens."""
    rng = np.random.default_rng(0)
    tokens = list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in MERGES]
    tokens.append("<|endoftext|>")
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges(MERGES)
    writer.add_token_types([1] * (len(tokens) - 1) + [3])
    writer.add_bos_token_id(len(tokens) - 1)
    writer.add_eos_token_id(len(tokens) - 1)
    kv = KV_HEADS * HIDDEN // HEADS
    shapes = {"token_embd.weight": (len(tokens), HIDDEN), "output_norm.weight": (HIDDEN,),
              "output.weight": (len(tokens), HIDDEN)}
    for i in range(LAYERS):
        block = {"attn_norm": (HIDDEN,), "ffn_norm": (HIDDEN,), "attn_q": (HIDDEN, HIDDEN),
                 "attn_k": (kv, HIDDEN), "attn_v": (kv, HIDDEN), "attn_output": (HIDDEN, HIDDEN),
                 "ffn_gate": (FFN, HIDDEN), "ffn_up": (FFN, HIDDEN), "ffn_down": (HIDDEN, FFN)}
        shapes |= {f"blk.{i}.{name}.weight": shape for name, shape in block.items()}
    for name, shape in shapes.items():
        writer.add_tensor(name, (0.1 * rng.standard_normal(shape)).astype(dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_llama(path)
    return path


def _gguf_logits(path: Path, ids: np.ndarray) -> np.ndarray:
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()


def _ids() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 262, (2, 13), dtype=np.int64)


@pytest.mark.slow
def test_cli_compiles_a_gguf_file_with_its_tokenizer(tiny_gguf, calibration_text, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["compile", str(tiny_gguf), "-o", str(out), "--calib",
                                 str(calibration_text), "--set", "hardware.max_in=32"])
    assert result.exit_code == 0, result.output
    ids = _ids()
    np.testing.assert_allclose(load(out).fp_view().run(ids), _gguf_logits(tiny_gguf, ids),
                               rtol=1e-4, atol=1e-4)
    tokenizer = load(out).tokenizer()
    assert tokenizer.vocab_size == 262
    assert tokenizer.decode(tokenizer.encode("the thing")) == "the thing"
    run = runner.invoke(app, ["run", str(out), "--text", str(calibration_text)])
    assert run.exit_code == 0, run.output
    assert "perplexity" in run.stdout


@pytest.mark.slow
def test_directory_with_one_f16_gguf(calibration_text, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    write_tiny_llama(folder / "tiny-f16.gguf", dtype=np.float16)
    out = tmp_path / "out"
    result = afmc_compile(str(folder), "aimc", load_config(None, ["hardware.max_in=32"]),
                          calibration=calibration_text, output=out)
    assert result.record["summary"]["analog_layers"] == 7 * LAYERS + 1
    ids = _ids()
    np.testing.assert_allclose(load(out).fp_view().run(ids),
                               _gguf_logits(folder / "tiny-f16.gguf", ids), rtol=1e-4, atol=1e-4)


def _assert_one_line_error(args: list[str], needle: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert needle in lines[0] and "Traceback" not in result.output


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    _assert_one_line_error(["compile", str(bad), "-o", str(tmp_path / "out")],
                           f"{bad}: not a GGUF file")


def test_truncated_gguf(tiny_gguf, tmp_path):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(tiny_gguf.read_bytes()[:2000])
    _assert_one_line_error(["compile", str(bad), "-o", str(tmp_path / "out")],
                           f"{bad}: cannot load the GGUF model")


def test_unsupported_gguf_architecture(tmp_path):
    path = tmp_path / "odd.gguf"
    write_tiny_llama(path, architecture="no-such-arch")
    _assert_one_line_error(["compile", str(path), "-o", str(tmp_path / "out")],
                           f"{path}: cannot load the GGUF model")


def test_directory_with_two_ggufs(tiny_gguf, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("a.gguf", "b.gguf"):
        (folder / name).write_bytes(tiny_gguf.read_bytes())
    _assert_one_line_error(["compile", str(folder), "-o", str(tmp_path / "out")],
                           "holds 2 GGUF files (a.gguf, b.gguf)")

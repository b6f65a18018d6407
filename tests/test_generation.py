"""Generation with the KV cache: afmc.runtime.generation and `afmc generate`.

afmc-tiny is compiled once for aimc. (a) The FP view's greedy tokens equal
transformers' generate; (b) the chip's cached decode gives, at every step, the
logits of its own full-sequence forward (same chip, same seed, no read noise), and
the loop without a cache the same tokens; (c) sampling is seeded; (d) the CLI's
bad input is a one-line error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import afmc
from afmc.api import load
from afmc.capture.hf import load_causal_lm
from afmc.cli import app
from afmc.data.kv_cache import KVCacheSpec
from afmc.models import BUILTIN_MODELS
from afmc.runtime.chip import load_record
from afmc.runtime.generation import GenerationOptions, generate, next_token

# the module fixtures are built once, on one worker (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group(__name__)

PROMPT = list(b"The analog chip ")
runner = CliRunner()


@pytest.fixture(scope="module")
def compiled(compiled_tiny) -> afmc.api.CompileResult:
    """afmc-tiny compiled for aimc with its defaults (shared, read only)."""
    return compiled_tiny


@pytest.fixture(scope="module")
def tiny(compiled: afmc.api.CompileResult) -> Path:
    return compiled.output


@pytest.mark.slow
def test_program_runs_on_input_ids_alone(compiled: afmc.api.CompileResult):
    ids = torch.randint(256, (2, 12), generator=torch.Generator().manual_seed(0))
    spec = KVCacheSpec.from_json(compiled.record["kv_cache"])
    empty = [torch.from_numpy(array) for array in spec.empty(2).values()]
    with torch.no_grad():
        alone, given = compiled.program(ids), compiled.program(ids, *empty)
    assert alone[0].shape == (2, 12, 256) and torch.equal(alone[0], given[0])


@pytest.mark.slow
def test_record_and_file_declare_the_cache(tiny: Path):
    record = load_record(tiny)
    cache = record["kv_cache"]
    assert record["inputs"] == ["input_ids"] and record["outputs"] == ["logits"]
    assert (cache["layers"], cache["kv_heads"], cache["head_dim"]) == (4, 4, 64)
    graph = onnx.load(str(tiny / "model.onnx"), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["input_ids", *cache["inputs"]]
    assert [o.name for o in graph.output] == ["logits", *cache["outputs"]]
    dims = [d.dim_param or d.dim_value for d in graph.input[1].type.tensor_type.shape.dim]
    assert dims == ["batch", 4, "past", 64]


@pytest.mark.slow
def test_fp_view_greedy_equals_transformers(tiny: Path):
    lm = load_causal_lm(BUILTIN_MODELS["afmc-tiny"])
    fp = load(tiny).fp_view()
    for prompt in (PROMPT, list(b"def ")):
        got = generate(fp, load_record(tiny), prompt, GenerationOptions(max_new_tokens=32))
        expected = lm.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)
        assert got.tokens == expected[0, len(prompt):].tolist()


@pytest.mark.slow
def test_chip_decode_equals_its_full_forward(tiny: Path):
    record = load_record(tiny)
    chip = load(tiny).chip(0)
    got = generate(chip, record, PROMPT, GenerationOptions(max_new_tokens=24))
    full = chip.run(np.array([PROMPT + got.tokens[:-1]]))[0]
    for step, (logits, token) in enumerate(zip(got.logits, got.tokens, strict=True)):
        position = len(PROMPT) - 1 + step
        np.testing.assert_allclose(logits, full[position], atol=1e-4, rtol=0)
        assert int(full[position].argmax()) == token
    uncached = {key: value for key, value in record.items() if key != "kv_cache"}
    assert generate(chip, uncached, PROMPT, GenerationOptions(max_new_tokens=24)).tokens \
        == got.tokens


@pytest.mark.slow
def test_sampling_is_seeded(tiny: Path):
    chip, record = load(tiny).chip(0), load_record(tiny)

    def sample(seed: int) -> list[int]:
        options = GenerationOptions(max_new_tokens=24, temperature=1.0, top_k=50, top_p=0.95,
                                    seed=seed)
        return generate(chip, record, PROMPT, options).tokens

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


@pytest.mark.slow
def test_eos_stops_and_is_kept(tiny: Path):
    chip, record = load(tiny).chip(0), load_record(tiny)
    first = generate(chip, record, PROMPT, GenerationOptions(max_new_tokens=8)).tokens
    stopped = generate(chip, record, PROMPT, GenerationOptions(max_new_tokens=8,
                                                               eos_token_id=first[2]))
    assert stopped.tokens == first[:first.index(first[2]) + 1] and stopped.stopped_at_eos


def test_next_token_filters():
    logits = np.array([0.0, 3.0, 2.9, -1.0])
    rng = np.random.default_rng(0)
    assert next_token(logits, GenerationOptions(), rng) == 1
    for options in (GenerationOptions(temperature=1.0, top_k=1),
                    GenerationOptions(temperature=1.0, top_p=0.01)):
        assert {next_token(logits, options, rng) for _ in range(20)} == {1}
    top2 = GenerationOptions(temperature=5.0, top_k=2)
    assert {next_token(logits, top2, rng) for _ in range(200)} == {1, 2}


def _error_line(*args: object) -> str:
    result = runner.invoke(app, ["generate", *(str(a) for a in args)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.slow
def test_cli_generates_the_greedy_text(tiny: Path):
    result = runner.invoke(app, ["generate", str(tiny), "--prompt", bytes(PROMPT).decode(),
                                 "--seed", "0", "--max-new-tokens", "12"])
    assert result.exit_code == 0, result.output
    tokens = generate(load(tiny).chip(0), load_record(tiny), PROMPT,
                      GenerationOptions(max_new_tokens=12)).tokens
    assert result.stdout.rstrip("\n") == bytes(tokens).decode("utf-8", errors="replace")
    assert "12 new tokens" in result.stderr
    assert f"prompt ({len(PROMPT)} tokens): {bytes(PROMPT).decode()!r}" in result.stderr


@pytest.mark.slow
def test_cli_generates_with_the_fp_view(tiny: Path):
    result = runner.invoke(app, ["generate", str(tiny), "--prompt", bytes(PROMPT).decode(),
                                 "--fp", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    tokens = generate(load(tiny).fp_view(), load_record(tiny), PROMPT,
                      GenerationOptions(max_new_tokens=8)).tokens
    assert result.stdout.rstrip("\n") == bytes(tokens).decode("utf-8", errors="replace")
    assert "FP view: 8 new tokens" in result.stderr


@pytest.mark.slow
def test_cli_names_a_whitespace_only_continuation(tiny: Path, monkeypatch):
    """Newlines and spaces print as nothing visible: the summary line shows them quoted."""
    import afmc.eval.run_chip
    from afmc.runtime.generation import Generation

    monkeypatch.setattr(afmc.eval.run_chip, "generate", lambda *_: Generation(
        tokens=[10, 10, 32], logits=[], stopped_at_eos=False))
    result = runner.invoke(app, ["generate", str(tiny), "--prompt", "x"])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().endswith("tokens/s; whitespace only: '\\n\\n '")


@pytest.mark.slow
def test_cli_errors(tiny: Path, tmp_path: Path):
    assert "not a compiled afmc model" in _error_line(tmp_path / "nope", "--prompt", "x")
    assert "--max-new-tokens must be at least 1" in _error_line(
        tiny, "--prompt", "x", "--max-new-tokens", "0")
    assert "temperature > 0" in _error_line(tiny, "--prompt", "x", "--top-k", "5")
    assert "top_p must lie in (0, 1]" in _error_line(
        tiny, "--prompt", "x", "--temperature", "1", "--top-p", "0")
    mlp = tmp_path / "mlp"
    afmc.compile(nn.Sequential(nn.Linear(8, 4)), "fp", example_inputs=(torch.ones(2, 8),),
                 output=mlp)
    assert "not a causal language model" in _error_line(mlp, "--prompt", "x")

"""afmc train --estimate: the memory terms follow the student training builds."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from afmc.capture.hf import load_causal_lm, read_config
from afmc.cli import app
from afmc.config import config_from_dict
from afmc.models import resolve_model_path
from afmc.train.memory import estimate_memory
from afmc.train.trainer import build_student


def _estimate(processes: int = 1, **training):
    path = resolve_model_path("afmc-tiny")
    return estimate_memory(read_config(path), config_from_dict({"training": training}),
                           processes)


def test_counts_are_those_of_the_real_student():
    """Parameters (the untied head included) and the trained ones, full and LoRA."""
    config = config_from_dict({"training": {"lora_rank": 2}})
    teacher = load_causal_lm(resolve_model_path("afmc-tiny"))
    student, _ = build_student(teacher, config)
    estimate = _estimate(lora_rank=2)
    assert estimate.parameters == sum(p.numel() for p in student.parameters())
    assert estimate.trainable == sum(p.numel() for p in student.parameters() if p.requires_grad)
    assert estimate.terms["AdamW state"] == 8 * estimate.trainable
    full = _estimate()
    assert full.trainable == full.parameters > estimate.trainable


def test_bfloat16_and_checkpointing_shrink_their_terms():
    plain, half = _estimate(), _estimate(dtype="bfloat16")
    assert half.terms["teacher"] == plain.terms["teacher"] / 2
    assert half.terms["student weights"] == plain.terms["student weights"]
    assert half.terms["activations"] == plain.terms["activations"] / 2
    checkpointed = _estimate(dtype="bfloat16", gradient_checkpointing=True)
    assert checkpointed.terms["activations"] < half.terms["activations"] / 2
    assert checkpointed.peak < half.peak < plain.peak


def test_estimate_command(tmp_path: Path):
    result = CliRunner().invoke(app, ["train", "afmc-tiny", "--estimate",
                                      "--set", "training.dtype=bfloat16"])
    assert result.exit_code == 0, result.output
    assert "peak (one process)" in result.output and "teacher" in result.output
    missing = CliRunner().invoke(app, ["train", "afmc-tiny", "-o", str(tmp_path / "o")])
    assert missing.exit_code == 1
    assert missing.output.strip() == "error: missing option --data (or --estimate)"


@pytest.mark.parametrize("model", ["no-such-model"])
def test_estimate_of_a_missing_model_is_one_line(model: str):
    result = CliRunner().invoke(app, ["train", model, "--estimate"])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("error: model not found")


def test_sharding_divides_weights_gradients_and_optimizer_state():
    """fsdp over 4 processes: student weights, gradients and AdamW state / 4, plus the root's
    and one block's weights gathered whole and process 0's host copy; each process runs a
    quarter of the micro-batch (DDP over 4 too)."""
    one, ddp = _estimate(batch_size=8), _estimate(4, batch_size=8)
    sharded = _estimate(4, batch_size=8, engine="fsdp")
    for name in ("student weights", "gradients", "AdamW state"):
        assert sharded.terms[name] == one.terms[name] / 4 == ddp.terms[name] / 4
    assert sharded.terms["host copy"] == 4 * one.parameters
    teacher = load_causal_lm(resolve_model_path("afmc-tiny"))
    student, _ = build_student(teacher, config_from_dict({}))
    block = sum(p.numel() for p in student.model.layers[0].parameters())
    root = one.parameters - block * len(student.model.layers)
    assert sharded.terms["gathered weights"] == 4 * (root + block)
    assert ddp.terms["activations"] == sharded.terms["activations"] == one.terms[
        "activations"] / 4
    result = CliRunner().invoke(app, ["train", "afmc-tiny", "--estimate", "--processes", "4",
                                      "--set", "training.engine=fsdp"])
    assert result.exit_code == 0 and "host copy" in result.output, result.output

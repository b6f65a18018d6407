"""Test-time compute (afmc.eval.test_time_compute, `afmc eval --task`).

The vote and accuracy rules against hand-computed cases; afmc-adder compiled once
for aimc: the sweep is reproducible for the same seeds, its FP greedy answers and
accuracy equal an independent greedy decode through transformers of the shipped
model; the CLI writes its result file to OUT/eval, and a bad task file is a
one-line error naming the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM
from typer.testing import CliRunner

import afmc
from afmc.cli import app
from afmc.eval.test_time_compute import (
    Sampler,
    extract_answer,
    majority_vote,
    read_task,
    sample_counts,
    sample_seed,
    sweep_task,
    vote_accuracy,
)
from afmc.io.layout import EVAL_DIR
from afmc.models import BUILTIN_MODELS

# the module fixtures are built once, on one worker (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group(__name__)

TASK = BUILTIN_MODELS["afmc-adder"] / "addition.jsonl"
runner = CliRunner()


def test_majority_vote_ties_go_to_the_answer_seen_first():
    assert majority_vote(["7", "8", "8"]) == "8"
    assert majority_vote(["1", "2", "2", "1"]) == "1"
    assert majority_vote(["2", "1", "1", "2", "3"]) == "2"
    assert majority_vote(["5"]) == "5"


def test_vote_accuracy_hand_computed():
    answers = [["1", "2", "2", "3"], ["5", "6", "6", "5"], ["9", "7", "8", "7"]]
    # n=1: votes 1, 5, 9; n=2: ties -> 1, 5, 9; n=4: 2, 5 (tie, seen first), 7
    assert vote_accuracy(answers, ["2", "6", "7"], [1, 2, 4]) == [0.0, 0.0, 2 / 3]
    assert vote_accuracy(answers, ["1", " 5 ", "7"], [1, 2, 4]) == [2 / 3, 2 / 3, 2 / 3]


def test_sample_counts_and_extraction():
    assert sample_counts(1) == [1]
    assert sample_counts(8) == [1, 2, 4, 8]
    assert sample_counts(6) == [1, 2, 4, 6]
    assert extract_answer(" 579 \n12+3=15\n") == "579"
    assert extract_answer("12") == "12"
    assert sample_seed(3, 1) == sample_seed(3, 1) != sample_seed(1, 3)


@pytest.mark.parametrize(("text", "message"), [
    ('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "1+2=", \n', "line 2: not valid JSON"),
    ('\n["1+1=", "2"]\n', "line 2: expected an object"),
    ('{"prompt": "1+1=", "answer": 2}\n', "line 1: field 'answer' must be a string"),
    ('{"answer": "2"}\n', "line 1: field 'prompt' must be a string"),
    ('{"prompt": "", "answer": "2"}\n', "line 1: the prompt is empty"),
    ("\n  \n", ": no problems"),
])
def test_bad_task_files(tmp_path: Path, text: str, message: str):
    path = tmp_path / "task.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match="^" + str(path) + " ?" + message):
        read_task(path)


@pytest.fixture(scope="module")
def adder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """afmc-adder compiled for aimc with its defaults."""
    return afmc.compile("afmc-adder", "aimc",
                        output=tmp_path_factory.mktemp("ttc") / "adder").output


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 8 problems of afmc-adder's held-out task."""
    path = tmp_path_factory.mktemp("task") / "task.jsonl"
    path.write_text("".join(TASK.read_text().splitlines(keepends=True)[:8]))
    return path


@pytest.mark.slow
def test_sweep_is_reproducible(adder: Path, task: Path):
    model = afmc.load(adder)
    runs = [sweep_task(model, task, samples=4, seeds=[0, 1], temperature=1.0)
            for _ in range(2)]
    assert json.dumps(runs[0]) == json.dumps(runs[1])
    result = runs[0]
    assert result["samples"] == [1, 2, 4] and result["problems"] == 8
    assert [(c["label"], c["seed"]) for c in result["curves"]] == [
        ("FP", None), ("chip 0", 0), ("chip 1", 1)]
    assert all(len(c["accuracy"]) == 3 for c in result["curves"])


@pytest.mark.slow
def test_fp_greedy_equals_transformers(adder: Path, task: Path):
    problems = [json.loads(line) for line in task.read_text().splitlines()]
    lm = LlamaForCausalLM.from_pretrained(BUILTIN_MODELS["afmc-adder"], dtype=torch.float32)
    expected = []
    for problem in problems:
        prompt = torch.tensor([list(problem["prompt"].encode())])
        tokens = lm.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=10,
                             pad_token_id=10)[0, prompt.shape[1]:]
        expected.append(bytes(tokens.tolist()).split(b"\n")[0].decode(errors="replace").strip())
    correct = np.mean([got == p["answer"] for got, p in zip(expected, problems, strict=True)])
    model = afmc.load(adder)
    result = sweep_task(model, task, samples=2, seeds=[], temperature=0.0)
    assert [c["label"] for c in result["curves"]] == ["FP"]
    assert result["curves"][0]["accuracy"] == [correct] * 2
    sampler = Sampler(model.record, model.tokenizer(), 1, 0.0, max_new_tokens=6)
    answers = sampler.answers(model.fp_view(), read_task(task))
    assert answers == [[answer] for answer in expected]


@pytest.mark.slow
def test_cli_writes_the_result(adder: Path, task: Path):
    result = runner.invoke(app, ["eval", str(adder), "--task", str(task), "--samples", "2",
                                 "--seeds", "1", "--vote", "majority", "--temperature", "0.7"])
    assert result.exit_code == 0, result.output
    (path,) = (adder / EVAL_DIR).glob("test_time_compute-*-s2-n1-*.json")
    written = json.loads(path.read_text())
    assert written["kind"] == "test_time_compute" and written["vote"] == "majority"
    assert written["temperature"] == 0.7 and written["samples"] == [1, 2]
    assert [c["label"] for c in written["curves"]] == ["FP", "chip 0"]
    assert "n=2" in result.stdout and "chip 0" in result.stdout


@pytest.mark.slow
def test_cli_bad_task_is_one_line(adder: Path, tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "answer": "2"}\nnot json\n')
    result = runner.invoke(app, ["eval", str(adder), "--task", str(bad)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: {bad} line 2: not valid JSON (Expecting value)"]
    vote = runner.invoke(app, ["eval", str(adder), "--task", str(bad), "--vote", "mean"])
    assert vote.stderr.splitlines() == ["error: --vote must be one of majority, got 'mean'"]
    cold = runner.invoke(app, ["eval", str(adder), "--task", str(bad), "--temperature", "-1"])
    assert cold.stderr.splitlines() == [
        "error: --temperature must be a finite number >= 0 (0: greedy), got -1.0"]

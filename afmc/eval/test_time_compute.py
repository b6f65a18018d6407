"""Test-time compute: accuracy of majority vote over sampled answers, per chip and FP.

A task is a JSONL file, one problem a line: ``{"prompt": "...", "answer": "..."}``
(both strings, the prompt not empty; blank lines are skipped). Every problem is
answered `samples` (N) times by each model (the FP view and chip `seed` for every
seed), with afmc's KV-cache generation (runtime.generation):

- sample j of problem i is drawn with the sampling seed ``sample_seed(i, j)``, so
  results are reproducible and every chip sees the same sampling seeds (read noise,
  drawn afresh on every inference, is the exception);
- generation stops at the stop token (the newline when it is one token, else the
  tokenizer's eos) or after the longest answer's token count plus ``SLACK`` tokens;
- the answer is the generated text up to the first newline, stripped of whitespace;
- for n = 1, 2, 4, ... (powers of two below N, then N) the vote is the most frequent
  of the first n answers (a tie goes to the answer seen first), and the accuracy is
  the share of problems whose vote equals the expected answer (also stripped).

At temperature 0 (greedy) every sample is the same, so each problem is generated
once and its answer counted N times. A target whose chips do not vary by seed
(int8, int4, fp) has one chip curve, labelled with the target and seed 0.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from afmc.data.tokenizer import Tokenizer
from afmc.eval.results import write_result
from afmc.runtime.chip import Chip
from afmc.runtime.compiled import CompiledModel
from afmc.runtime.generation import GenerationOptions, check_language_model, generate

VOTES = ("majority",)
SLACK = 2


@dataclass(frozen=True)
class Problem:
    """One task problem: the prompt to continue and the expected answer."""

    prompt: str
    answer: str


def read_task(path: Path) -> list[Problem]:
    """The problems of a JSONL task file; ValueError ``FILE line K: ...`` for a bad line,
    ``FILE: ...`` for an unreadable or empty file."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the task file ({error})") from None
    problems = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            problems.append(_problem(line, f"{path} line {number}"))
    if not problems:
        raise ValueError(f"{path}: no problems (expected JSONL lines "
                         '{"prompt": "...", "answer": "..."})')
    return problems


def _problem(line: str, where: str) -> Problem:
    """The Problem of one JSONL line; ValueError starting with `where`."""
    try:
        item = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected an object "
                         '{"prompt": "...", "answer": "..."}')
    for key in ("prompt", "answer"):
        if not isinstance(item.get(key), str):
            raise ValueError(f"{where}: field {key!r} must be a string")
    if not item["prompt"]:
        raise ValueError(f"{where}: the prompt is empty")
    return Problem(item["prompt"], item["answer"])


def extract_answer(text: str) -> str:
    """The generated text up to its first newline, stripped of whitespace."""
    return text.split("\n", 1)[0].strip()


def majority_vote(answers: Sequence[str]) -> str:
    """The most frequent answer; among equally frequent ones, the one seen first."""
    counts = Counter(answers)
    return max(counts, key=counts.__getitem__)  # max keeps the first maximum (insertion order)


def sample_counts(samples: int) -> list[int]:
    """n = 1, 2, 4, ... (powers of two below `samples`), then `samples`."""
    counts = [1 << k for k in range(samples.bit_length()) if 1 << k < samples]
    return [*counts, samples]


def vote_accuracy(answers: Sequence[Sequence[str]], expected: Sequence[str],
                  counts: Sequence[int]) -> list[float]:
    """Per n in `counts`: the share of problems whose majority vote over their first n
    answers equals the expected answer (stripped)."""
    return [float(np.mean([majority_vote(given[:n]) == want.strip()
                           for given, want in zip(answers, expected, strict=True)]))
            for n in counts]


def sample_seed(problem: int, sample: int) -> int:
    """The sampling seed of sample `sample` of problem `problem` (numpy SeedSequence)."""
    return int(np.random.SeedSequence((problem, sample)).generate_state(1)[0])


def stop_token(tokenizer: Tokenizer) -> int | None:
    """The newline's token id when it is one token, else the tokenizer's eos (or None)."""
    newline = tokenizer.encode("\n")
    if len(newline) == 1:
        return int(newline[0])
    return getattr(getattr(tokenizer, "tokenizer", None), "eos_token_id", None)


@dataclass(frozen=True)
class Sampler:
    """How answers are sampled: rules in the module docstring."""

    record: dict[str, Any]
    tokenizer: Tokenizer
    samples: int
    temperature: float
    max_new_tokens: int

    def answers(self, chip: Chip, problems: Sequence[Problem],
                progress: Callable[[], None] | None = None) -> list[list[str]]:
        """The `samples` answers of every problem on `chip`."""
        draws = 1 if self.temperature == 0 else self.samples
        stop = stop_token(self.tokenizer)
        result = []
        for i, problem in enumerate(problems):
            ids = self.tokenizer.encode(problem.prompt)
            answers = []
            for j in range(draws):
                options = GenerationOptions(self.max_new_tokens, self.temperature,
                                            seed=sample_seed(i, j), eos_token_id=stop)
                tokens = generate(chip, self.record, ids, options).tokens
                answers.append(extract_answer(self.tokenizer.decode(tokens)))
            result.append(answers * (self.samples // draws))
            if progress:
                progress()
        return result


def check_options(samples: int, vote: str, temperature: float) -> None:
    """A ValueError naming the first option out of range."""
    if samples < 1:
        raise ValueError(f"--samples must be at least 1, got {samples}")
    if vote not in VOTES:
        raise ValueError(f"--vote must be one of {', '.join(VOTES)}, got {vote!r}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"--temperature must be a finite number >= 0 (0: greedy), "
                         f"got {temperature}")


def sweep_task(model: CompiledModel, task: Path, *, samples: int, seeds: Sequence[int],
                      temperature: float, read_noise: float = 0.0, vote: str = "majority",
                      progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The test_time_compute result of `model` on the task file (module rules): the
    accuracy curve of the FP view and of chip `seed` for each seed."""
    check_options(samples, vote, temperature)
    check_language_model(model.record)
    problems = read_task(task)
    tokenizer = model.tokenizer()
    longest = max(len(tokenizer.encode(problem.answer)) for problem in problems)
    sampler = Sampler(model.record, tokenizer, samples, temperature, longest + SLACK)
    counts = sample_counts(samples)
    expected = [problem.answer for problem in problems]
    chips: list[tuple[str, int | None, Callable[[], Chip]]] = [("FP", None, model.fp_view)]
    if model.varies_by_seed:
        chips += [(f"chip {seed}", seed, lambda seed=seed: model.chip(seed,
                                                                       read_noise=read_noise))
                  for seed in seeds]
    else:
        chips.append((model.target, 0, lambda: model.chip(0)))
    done, total = 0, len(chips) * len(problems)

    def advance() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    curves = []
    for label, seed, open_chip in chips:  # one chip alive at a time
        answers = sampler.answers(open_chip(), problems, advance)
        curves.append({"label": label, "seed": seed,
                       "accuracy": vote_accuracy(answers, expected, counts)})
    return {"kind": "test_time_compute", "task": str(task), "problems": len(problems),
            "vote": vote, "temperature": float(temperature), "read_noise": float(read_noise),
            "samples": counts, "curves": curves}


def eval_task(model: CompiledModel, task: Path, *, samples: int, vote: str, seeds: int,
              temperature: float, read_noise: float = 0.0,
              progress: Callable[[int, int], None] | None = None, copy: Path | None = None
              ) -> tuple[dict[str, Any], Path]:
    """test_time_compute over chips 0..seeds-1, written to OUT/eval as a result file
    keyed by its settings (afmc.eval.results; a copy to `copy` when given); returns the
    result and the file."""
    result = sweep_task(model, task, samples=samples, seeds=range(seeds),
                        temperature=temperature, read_noise=read_noise, vote=vote,
                        progress=progress)
    chips = seeds if model.varies_by_seed else 1
    settings = {"task": str(task), "samples": samples, "vote": vote,
                "temperature": float(temperature), "read_noise": float(read_noise),
                "seeds": chips}
    path = write_result(model.out_dir, "test_time_compute",
                        [Path(task).stem, f"s{samples}", f"n{chips}"], settings, result,
                        copy=copy)
    return result, path


def accuracy_table(result: dict[str, Any]) -> Table:
    """The result as a rich table: a row per curve (FP and chips), a column per n."""
    table = Table(title=f"majority-vote accuracy on {result['problems']} problems "
                        f"(temperature {result['temperature']:g})")
    table.add_column("model")
    for n in result["samples"]:
        table.add_column(f"n={n}", justify="right")
    for curve in result["curves"]:
        table.add_row(curve["label"], *(f"{value:.3f}" for value in curve["accuracy"]))
    return table

"""The lm-eval model type "afmc" (afmc.eval.lm_eval_model) on afmc-tiny compiled for aimc.

(a) loglikelihood_rolling of a text that fits one window equals afmc eval's perplexity
of it (chip and FP view), and of a longer text the sum over lm-eval's rolling windows
computed from chip.run; (b) loglikelihood of (context, continuation) pairs, batched and
padded, equals log-softmax sums of chip.run logits of each pair alone, cut to
max_length; (c) a multiple-choice task and a generate_until task, defined here over
local JSONL files, run through lm_eval.simple_evaluate with the same numbers twice, the
generations being CompiledModel.generate's cut at the stop string; sampling follows
the request's seed; (d) bad model_args are a one-line error naming the problem, also
through `afmc lm-eval`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.tasks import TaskManager
from typer.testing import CliRunner

import afmc
from afmc.cli import app
from afmc.eval.evaluate import evaluate
from afmc.eval.lm_eval_model import AfmcLM
from afmc.runtime.generation import GenerationOptions

pytestmark = pytest.mark.slow  # afmc-tiny compiled (compiled_tiny) and lm-eval tasks

TEXT = ("Analog in-memory computing stores the weights of a neural network as "
        "conductances in crossbar arrays and computes matrix-vector products where the "
        "weights lie. Programming noise makes every chip a little different, so a model "
        "is evaluated on several chip instances, each with its own seed, next to the "
        "floating-point model it was compiled from. ")
CHOICES = [
    {"question": "The analog chip computes", "answer": 0,
     "choices": [" matrix products", " zebra stripes", " nothing at all"]},
    {"question": "Each tile holds", "answer": 0, "choices": [" weights", " bananas"]},
    {"question": "The weights are stored as", "answer": 1,
     "choices": [" pictures", " conductances", " poems"]},
    {"question": "Every chip has its own", "answer": 0, "choices": [" seed", " opinion"]},
]
PROMPTS = [{"prompt": "The analog chip ", "target": "computes"},
           {"prompt": "def main(", "target": "):"},
           {"prompt": "Hello", "target": ", world"}]
STOP = " "
MAX_GEN = 12
TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
"""
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(compiled_tiny) -> Path:
    """afmc-tiny compiled for aimc with its defaults (shared, read only)."""
    return compiled_tiny.output


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multiple-choice task (afmc_choice) and a generate_until task (afmc_generate) over
    local JSONL files, in a folder for lm-eval's include path."""
    folder = tmp_path_factory.mktemp("tasks")
    for name, rows, body in [
        ("afmc_choice", CHOICES, 'output_type: multiple_choice\ndoc_to_text: "{{question}}"\n'
         'doc_to_choice: "{{choices}}"\ndoc_to_target: answer\nmetric_list:\n'
         '  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n'),
        ("afmc_generate", PROMPTS, 'output_type: generate_until\ndoc_to_text: "{{prompt}}"\n'
         'doc_to_target: "{{target}}"\ngeneration_kwargs:\n'
         f'  until: ["{STOP}"]\n  max_gen_toks: {MAX_GEN}\n  do_sample: false\n'
         'metric_list:\n  - metric: exact_match\n    aggregation: mean\n'
         '    higher_is_better: true\n')]:
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        (folder / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=data) + body,
                                             encoding="utf-8")
    return folder


def _lm(tiny: Path, extra: str = "") -> AfmcLM:
    """The model type "afmc" as lm-eval builds it from a model_args string."""
    return get_model("afmc").create_from_arg_string(f"path={tiny},seed=0{extra}")


def _requests(kind: str, arguments: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, args, index) for index, args in enumerate(arguments)]


def _logprobs(logits: np.ndarray, targets: list[int]) -> np.ndarray:
    """log softmax of logits [n, V] at targets, by float64 logsumexp."""
    logits = logits.astype(np.float64)
    top = logits.max(axis=-1)
    log_norm = top + np.log(np.exp(logits - top[:, None]).sum(axis=-1))
    return logits[np.arange(len(targets)), targets] - log_norm


def test_rolling_of_one_window_is_afmc_perplexity(tiny: Path):
    model = afmc.load(tiny)
    ids = model.tokenizer().encode(TEXT)
    report = evaluate(model, ids, [0], seq_len=len(ids))
    for extra, expected in [("", report.chips[0]), (",fp=true", report.fp)]:
        [loglikelihood] = _lm(tiny, extra).loglikelihood_rolling(
            _requests("loglikelihood_rolling", [(TEXT,)]), disable_tqdm=True)
        assert np.exp(-loglikelihood / (len(ids) - 1)) == pytest.approx(expected, rel=1e-9)
    assert report.chips[0] != pytest.approx(report.fp, rel=1e-4)  # the chip is not the FP view


def test_rolling_windows_predict_every_token_once(tiny: Path):
    """max_length 64: input windows ids[0:64], ids[64:128], ..., each position predicting
    the next token, and a last full window ending before the last token scoring the rest."""
    text = TEXT * 2
    lm = _lm(tiny, ",max_length=64")
    [loglikelihood] = lm.loglikelihood_rolling(
        _requests("loglikelihood_rolling", [(text,)]), disable_tqdm=True)
    ids = list(text.encode())
    chip, expected, predicted = afmc.load(tiny).chip(0), 0.0, 0
    while predicted < len(ids) - 1:
        start = min(predicted, len(ids) - 1 - 64)
        logits = chip.run(np.array([ids[start:start + 64]]))[0]
        fresh = start + 64 - predicted  # positions not scored by an earlier window
        targets = ids[start + 1:start + 65][-fresh:]
        expected += float(_logprobs(logits[-fresh:], targets).sum())
        predicted += fresh
    assert len(ids) > 3 * 64 and loglikelihood == pytest.approx(expected, rel=1e-9)


def test_loglikelihood_is_log_softmax_of_chip_logits(tiny: Path):
    model = afmc.load(tiny)
    greedy = model.tokenizer().decode(model.generate(list(b"The weights"),
                                                     GenerationOptions(max_new_tokens=6)).tokens)
    pairs = [("The analog chip", " computes"), ("Each tile holds", " weights"),
             ("A", " much longer continuation than its context"), (TEXT.strip(), " The end."),
             ("The weights", greedy)]
    lm = _lm(tiny, ",max_length=48,batch_size=2")
    results = lm.loglikelihood(_requests("loglikelihood", pairs), disable_tqdm=True)
    chip = model.chip(0)
    for (context, continuation), (loglikelihood, is_greedy) in zip(pairs, results, strict=True):
        ids, n = list((context + continuation).encode()), len(continuation.encode())
        window = ids[-49:]  # max_length inputs and the token the last one predicts
        logits = chip.run(np.array([window[:-1]]))[0][-n:]
        assert loglikelihood == pytest.approx(float(_logprobs(logits, window[-n:]).sum()),
                                              rel=1e-9, abs=1e-9)
        assert is_greedy == bool((logits.argmax(axis=-1) == window[-n:]).all())
    assert results[-1][1] and not results[1][1]


def _evaluate(tiny: Path, tasks: Path) -> dict:
    return simple_evaluate(model="afmc", model_args=f"path={tiny},seed=3",
                           tasks=["afmc_choice", "afmc_generate"], log_samples=True,
                           task_manager=TaskManager(include_path=str(tasks),
                                                    include_defaults=False))


def test_tasks_run_end_to_end_and_repeat(tiny: Path, tasks: Path):
    first, second = _evaluate(tiny, tasks), _evaluate(tiny, tasks)
    for name, metric in [("afmc_choice", "acc,none"), ("afmc_generate", "exact_match,none")]:
        assert first["results"][name][metric] == second["results"][name][metric]
        assert [s["filtered_resps"] for s in first["samples"][name]] == \
            [s["filtered_resps"] for s in second["samples"][name]]
    model = afmc.load(tiny)
    tokenizer = model.tokenizer()
    texts = [s["filtered_resps"][0] for s in first["samples"]["afmc_generate"]]
    expected = [tokenizer.decode(model.generate(tokenizer.encode(row["prompt"]),
                                                GenerationOptions(max_new_tokens=MAX_GEN),
                                                seed=3).tokens).split(STOP)[0]
                for row in PROMPTS]
    assert texts == expected
    exact = np.mean([text == row["target"] for text, row in zip(texts, PROMPTS, strict=True)])
    assert first["results"]["afmc_generate"]["exact_match,none"] == exact
    picks = [int(np.argmax([r[0] for r in s["filtered_resps"]]))
             for s in first["samples"]["afmc_choice"]]
    accuracy = np.mean([pick == row["answer"] for pick, row in zip(picks, CHOICES, strict=True)])
    assert first["results"]["afmc_choice"]["acc,none"] == accuracy


def test_sampling_follows_the_request_seed(tiny: Path):
    sampled = {"until": ["\n"], "max_gen_toks": 8, "do_sample": True, "temperature": 1.5,
               "top_k": 50}
    texts = _lm(tiny, ",sample_seed=5").generate_until(
        _requests("generate_until", [("The chip", sampled)] * 2), disable_tqdm=True)
    model = afmc.load(tiny)
    tokenizer = model.tokenizer()
    expected = [tokenizer.decode(model.generate(
        list(b"The chip"), GenerationOptions(8, 1.5, 50, 1.0, seed), seed=0).tokens).split(
        "\n")[0] for seed in (5, 6)]
    assert texts == expected and texts[0] != texts[1]


@pytest.mark.parametrize(("model_args", "message"), [
    ("seed=0", "afmc model_args: path is missing"),
    ("path={tiny},colour=red", "afmc model_args: unknown key(s) colour"),
    ("path={empty}", "not a compiled afmc model"),
    ("path={tiny},seed=-1", "afmc model_args: seed must be an integer >= 0, got -1"),
    ("path={tiny},read_noise=nan", "afmc model_args: read_noise must be a finite number"),
    ("path={tiny},batch_size=auto", "afmc model_args: batch_size must be an integer >= 1"),
    ("path={tiny},max_length=4096", "max_length 4096 exceeds the model's 1024 positions"),
])
def test_bad_model_args_are_one_line_errors(tiny: Path, tmp_path: Path, model_args: str,
                                            message: str):
    with pytest.raises((ValueError, OSError)) as error:
        get_model("afmc").create_from_arg_string(model_args.format(tiny=tiny, empty=tmp_path))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_cli_registers_afmc_and_reports_one_line(tiny: Path, tasks: Path):
    result = runner.invoke(app, ["lm-eval", "--model", "afmc", "--model_args",
                                 f"path={tiny},colour=red", "--tasks", "afmc_choice",
                                 "--include_path", str(tasks)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: afmc model_args: unknown key(s) colour")


def test_a_hub_task_out_of_reach_fails_at_once_pointing_at_local_tasks(monkeypatch):
    """With the Hub out of reach (HF_ENDPOINT on a closed local port) and no offline choice
    made, lm-eval runs with both offline switches set (so an uncached task fails at once
    instead of retrying for a minute), and the error huggingface_hub raises then (measured
    with lambada_openai here: OfflineModeIsEnabled, "Couldn't reach ... on the Hub") is one
    line that names the dataset and points at local tasks."""
    import lm_eval.__main__

    from afmc.eval import lm_eval_run

    class OfflineModeIsEnabled(ConnectionError):
        pass

    seen = {}

    def evaluate() -> None:
        seen.update({name: os.environ.get(name) for name in lm_eval_run._OFFLINE})
        raise OfflineModeIsEnabled("Couldn't reach 'EleutherAI/lambada_openai' on the Hub "
                                   "(OfflineModeIsEnabled)")

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for name in lm_eval_run._OFFLINE:
        monkeypatch.setenv(name, "")  # not chosen (restored after the test)
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", evaluate)
    assert not lm_eval_run.hub_reachable(timeout=1.0)
    result = runner.invoke(app, ["lm-eval", "--model", "afmc", "--tasks", "lambada_openai"])
    assert seen == {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: a task's data is not here and the Hugging Face Hub cannot be reached "
        "(Couldn't reach 'EleutherAI/lambada_openai' on the Hub (OfflineModeIsEnabled)): "
        "use a task over local files instead: --include_path DIR with a task YAML reading "
        "JSON/JSONL (docs/lm-eval.md, 'A task over local files')")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a choice made: no probe, switches kept
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "")
    seen.clear()
    runner.invoke(app, ["lm-eval", "--model", "afmc", "--tasks", "lambada_openai"])
    assert seen == {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": ""}

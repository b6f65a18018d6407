"""afmc synth: training text sampled from afmc-tiny, its layout, determinism and resume.

A shard depends only on (seed, shard index, options), so a run killed with
SIGKILL mid-way and resumed must give the bytes of an uninterrupted run; the
sampling options must reach generate (top_k=1 is greedy decoding). Torch runs
on one thread here, in the subprocess too: the same thread count everywhere
keeps the floating point, hence the samples, identical, and one thread is fast
for this tiny model on a busy machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from afmc.capture.hf import load_causal_lm
from afmc.models import resolve_model_path
from afmc.train.synth import load_token_sequences, synthesize

runner = CliRunner()
SMALL = dict(seq_len=32, shard_sequences=3, batch_size=2)  # 4 sequences: shards of 3 and 1


def _invoke(*args: object):
    from afmc.cli import app

    return runner.invoke(app, [str(a) for a in args])


def _shards(data: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted(data.glob("shard-*.npy"))]


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("synth") / "data"
    synthesize("afmc-tiny", data, 4 * 32, **SMALL)
    return data


def test_layout_dtype_and_record(reference):
    shards = [np.load(reference / f"shard-{i:05d}.npy") for i in range(2)]
    assert [s.shape for s in shards] == [(3, 32), (1, 32)]
    assert all(s.dtype == np.int32 and s.min() >= 0 and s.max() < 256 for s in shards)
    assert len(_shards(reference)) == 2 and not list(reference.glob(".*"))
    record = json.loads((reference / "synth.json").read_text())
    assert record == {
        "model": "afmc-tiny", "tokens": 128, "seq_len": 32, "seed": 0, "temperature": 1.0,
        "top_k": 50, "top_p": 1.0, "shard_sequences": 3, "batch_size": 2,
        "prompt_tokens": None, "vocab_size": 256, "sequences": 4, "shards": 2, "complete": True,
    }
    ids = load_token_sequences(reference)
    assert ids.dtype == np.int64 and np.array_equal(ids, np.concatenate(shards))
    assert len({row.tobytes() for row in ids}) == 4  # sampled, not one repeated sequence


def test_same_seed_same_data_other_seed_differs(reference, tmp_path):
    synthesize("afmc-tiny", tmp_path / "again", 128, **SMALL)
    assert _shards(tmp_path / "again") == _shards(reference)
    synthesize("afmc-tiny", tmp_path / "seed1", 128, seed=1, **SMALL)
    other = load_token_sequences(tmp_path / "seed1")
    assert other.shape == (4, 32) and not np.array_equal(other, load_token_sequences(reference))


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_bytes(tmp_path):
    options = ["--tokens", 8 * 48, "--seq-len", 48, "--shard-sequences", 1, "--batch-size", 1,
               "--seed", 7]
    data = tmp_path / "killed"
    command = [sys.executable, "-c", "from afmc.cli import app; app()", "synth", "afmc-tiny",
               "-o", data, *options]
    process = subprocess.Popen([str(a) for a in command], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while not (data / "shard-00000.npy").exists() and process.poll() is None:
            assert time.monotonic() < deadline, "no shard written within 60 s"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert 1 <= len(_shards(data)) < 8
    assert json.loads((data / "synth.json").read_text())["complete"] is False
    with pytest.raises(ValueError, match="incomplete; rerun afmc synth to finish it"):
        load_token_sequences(data)
    (data / ".shard-00007.npy.tmp").write_bytes(b"half a shard")  # as if killed mid-write

    resumed = _invoke("synth", "afmc-tiny", "-o", data, *options)
    assert resumed.exit_code == 0, resumed.output
    assert "kept from an earlier run" in resumed.stdout
    synthesize("afmc-tiny", tmp_path / "whole", 8 * 48, seq_len=48, shard_sequences=1,
               batch_size=1, seed=7)
    assert len(_shards(data)) == 8 and _shards(data) == _shards(tmp_path / "whole")
    assert sorted(p.name for p in data.iterdir()) == sorted(
        p.name for p in (tmp_path / "whole").iterdir())
    assert load_token_sequences(data).shape == (8, 48)


def test_other_options_are_refused_in_one_line_and_force_starts_over(reference, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(reference, data)
    options = ["--tokens", 128, "--seq-len", 32, "--shard-sequences", 3, "--batch-size", 2]
    line = _one_error_line(_invoke("synth", "afmc-tiny", "-o", data, *options, "--top-k", 3))
    assert "top_k 3 differs from 50 in synth.json" in line and "--force" in line
    assert _shards(data) == _shards(reference)
    result = _invoke("synth", "afmc-tiny", "-o", data, *options, "--top-k", 3, "--force")
    assert result.exit_code == 0, result.output
    assert json.loads((data / "synth.json").read_text())["top_k"] == 3
    assert _shards(data) != _shards(reference)


@pytest.mark.parametrize(("args", "needle"), [
    (["nope", "--tokens", 8], "model not found"),
    (["afmc-tiny", "--tokens", 0], "--tokens must be positive"),
    (["afmc-tiny", "--tokens", 8, "--top-p", 0], "--top-p must lie in (0, 1]"),
    (["afmc-tiny", "--tokens", 8, "--top-p", 1.5], "--top-p must lie in (0, 1]"),
    (["afmc-tiny", "--tokens", 8, "--temperature", 0], "--temperature must be positive"),
    (["afmc-tiny", "--tokens", 8, "--top-k", -1], "--top-k must be >= 0"),
])
def test_bad_input_is_one_error_line(args, needle, tmp_path):
    line = _one_error_line(_invoke("synth", *args, "-o", tmp_path / "data"))
    assert needle in line
    assert not (tmp_path / "data").exists()


def test_top_k_1_is_greedy_decoding(tmp_path):
    prompt = list(b"def ")
    synthesize("afmc-tiny", tmp_path / "greedy", 2 * 24, seq_len=24, top_k=1, batch_size=2,
               prompt_tokens=prompt)
    ids = load_token_sequences(tmp_path / "greedy")
    model = load_causal_lm(resolve_model_path("afmc-tiny"))
    with torch.inference_mode():
        greedy = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=20)
    assert np.array_equal(ids, greedy.numpy().repeat(2, axis=0))
    assert json.loads((tmp_path / "greedy" / "synth.json").read_text())["prompt_tokens"] == prompt

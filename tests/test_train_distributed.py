"""afmc train under torchrun: two CPU processes (gloo; DistributedDataParallel, or FSDP2 with
training.engine=fsdp) on afmc-tiny.

Rules checked:
- every process holds the same weights, input ranges and range-initialisation counters
  after every optimizer step, with weight noise on (each process draws its own noise);
- the input ranges initialised from data are the statistics of the global batch (all
  processes), so they equal a one-process run's;
- with the noise off, 2 processes give the weights of 1 process with the same global batch,
  with and without gradient accumulation (to float tolerance: reductions differ in order);
- gradient accumulation equals the whole batch in one pass where the training rules are
  per optimizer step (see test_gradient_accumulation_equals_the_whole_batch for the two
  that are not);
- sharded (fsdp): the processes agree on every range after every step, the student
  gathered from the shards equals one process's and DDP's (noise off, to float
  tolerance, with gradient accumulation and clipping too), its checkpoint is the gathered
  student, and a run stopped after its first step and resumed ends with the weights of
  the uninterrupted one, bit for bit; fsdp on one process is refused before any output.

record_runs trains once per configuration and records the process's student state after
every step (it wraps trainer.clip_weights, which every process calls with the unwrapped
student at the end of every optimizer step); each torchrun process runs it through a
driver script, and the one-process runs run it in the test process meanwhile.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

# torchrun processes (module fixture); built once, on one worker (make test: --dist loadgroup)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group(__name__),
]

# Run by each process of torchrun: record_runs of this file.
DRIVER = """
import importlib.util
import json
import sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("train_distributed", {test_file!r})
module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.record_runs(Path(sys.argv[1]), json.loads(sys.argv[2]))
module.dist.destroy_process_group()
"""
RECORDED = ("input_range", "range_init_steps")


def record_runs(out: Path, runs: dict[str, dict[str, Any]]) -> None:
    """Train afmc-tiny on stdlib:train into out/NAME for each {NAME: training section}, and
    save this process's record to out/NAME-RANK.pt: the student state after the last step
    ("final"), the RECORDED tensors after every step ("ranges") and the losses."""
    from torch.distributed.tensor import DTensor

    from afmc.config import config_from_dict
    from afmc.train import trainer

    clip_weights = trainer.clip_weights
    try:
        for name, training in runs.items():
            states: list[dict[str, torch.Tensor]] = []

            def snapshot(model: torch.nn.Module, sigma: float,
                         states: list[dict[str, torch.Tensor]] = states) -> None:
                clip_weights(model, sigma)  # a sharded student's tensors gathered whole
                states.append({k: (v.full_tensor() if isinstance(v, DTensor) else v)
                               .detach().clone() for k, v in model.state_dict().items()})

            trainer.clip_weights = snapshot
            training = dict(training)
            interrupted = training.pop(INTERRUPTED, False)
            config = config_from_dict({"training": training})
            if interrupted:  # stop after the first step (its checkpoint), then resume
                trainer.train("afmc-tiny", "stdlib:train", out / name, config, max_seconds=0.0)
            result = trainer.train("afmc-tiny", "stdlib:train", out / name, config,
                                   resume=interrupted)
            assert len(states) == result.steps, "trainer.clip_weights is not called every step"
            rank = dist.get_rank() if dist.is_initialized() else 0
            ranges = [{k: v for k, v in state.items() if k.endswith(RECORDED)}
                      for state in states]
            torch.save({"final": states[-1], "ranges": ranges, "losses": result.losses},
                       out / f"{name}-{rank}.pt")
    finally:
        trainer.clip_weights = clip_weights


BASE = {"steps": 3, "seq_len": 32, "batch_size": 4, "checkpoint_every": 3,
        "range_init_batches": 2}
CLEAN = {**BASE, "weight_noise": 0.0, "read_noise": 0.0}
INTERRUPTED = "interrupted"  # a run's key (not a training option): stop, then resume
SHARDED = {**CLEAN, "engine": "fsdp"}
RUNS_2 = {  # run by 2 processes
    "noisy": BASE,
    "clean": CLEAN,
    "accumulated": {**CLEAN, "grad_accumulation": 2},
    "clipped": {**CLEAN, "range_init_batches": 0},  # ranges stay 1: inputs clipped
    "fsdp": SHARDED,
    "fsdp-accumulated": {**SHARDED, "grad_accumulation": 2, "grad_clip": 1e-3},
    "fsdp-noisy": {**BASE, "engine": "fsdp"},
    "fsdp-resumed": {**SHARDED, INTERRUPTED: True},
}
RUNS_1 = {  # run by 1 process
    "clean": CLEAN,
    "accumulated": {**CLEAN, "grad_accumulation": 2},
    "clipped": {**CLEAN, "range_init_batches": 0},
    "whole": {**CLEAN, "range_init_batches": 0, "range_decay": 0.0},
    "split": {**CLEAN, "range_init_batches": 0, "range_decay": 0.0, "grad_accumulation": 2},
    "accumulated-clipped": {**CLEAN, "grad_accumulation": 2, "grad_clip": 1e-3},
}
TIMEOUT = 400


def _torchrun(folder: Path, script: Path, runs: dict[str, Any]) -> subprocess.Popen:
    """Start `script` in 2 CPU processes (one thread each) with torchrun."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node", "2", str(script), str(folder),
                             json.dumps(runs)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(process: subprocess.Popen) -> None:
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"distributed training did not finish in {TIMEOUT} s:\n{output[-4000:]}")
    assert process.returncode == 0, output[-4000:]


@dataclass
class Runs:
    """The training outputs under root/p{processes}/{run}, and each process's record:
    records[(processes, run)][rank] = {"final": state, "ranges": [per step], "losses"}."""

    root: Path
    records: dict[tuple[int, str], list[dict[str, Any]]]

    def __getitem__(self, key: tuple[int, str]) -> list[dict[str, Any]]:
        return self.records[key]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    """Every run of RUNS_2 (torchrun, 2 processes) and, in this process meanwhile, RUNS_1."""
    root = tmp_path_factory.mktemp("distributed")
    script = root / "driver.py"
    script.write_text(DRIVER.format(test_file=__file__), encoding="utf-8")
    process = _torchrun(root / "p2", script, RUNS_2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun processes
    try:
        record_runs(root / "p1", RUNS_1)
    finally:
        torch.set_num_threads(threads)
        _finish(process)
    plan = {2: RUNS_2, 1: RUNS_1}
    return Runs(root, {(n, name): [torch.load(root / f"p{n}" / f"{name}-{rank}.pt")
                                   for rank in range(n)]
                       for n, runs in plan.items() for name in runs})


def _assert_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                   exact: bool) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", list(RUNS_2))
def test_processes_hold_identical_weights_and_ranges(runs: Runs, name: str):
    rank0, rank1 = runs[(2, name)]
    assert rank0["losses"] == rank1["losses"] and len(rank0["losses"]) == 3
    for step0, step1 in zip(rank0["ranges"], rank1["ranges"], strict=True):
        _assert_states(step0, step1, exact=True)
    _assert_states(rank0["final"], rank1["final"], exact=True)
    assert any(key.endswith("input_range") for key in rank0["final"])
    # the record is the student process 0 checkpointed at the last step
    published = runs.root / "p2" / name / "checkpoints" / "step-0000003"
    _assert_states(load_file(published / "model.safetensors"), rank0["final"], exact=True)


def test_initialised_ranges_are_the_global_batch_statistics(runs: Runs):
    """After range_init_batches (2) steps every range has been initialised twice, from the
    statistics all-reduced over the processes: the same as one process on the whole batch."""
    for name in ("noisy", "clean"):
        for rank in runs[(2, name)]:
            initialised = rank["ranges"][1]
            counters = [v for k, v in initialised.items() if k.endswith("range_init_steps")]
            assert counters and all(bool((c == 2).all()) for c in counters)
            ranges = [v for k, v in initialised.items() if k.endswith("input_range")]
            assert all(bool((r != 1).all()) for r in ranges)  # moved from the initial 1
    for two, one in zip(runs[(2, "clean")][0]["ranges"][:2], runs[(1, "clean")][0]["ranges"][:2],
                        strict=True):
        _assert_states(two, one, exact=False)


@pytest.mark.parametrize("name", ["clean", "accumulated"])
def test_two_processes_equal_one_with_noise_off(runs: Runs, name: str):
    two, one = runs[(2, name)][0], runs[(1, name)][0]
    _assert_states(two["final"], one["final"], exact=False)
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)


def test_gradient_accumulation_equals_the_whole_batch(runs: Runs):
    """grad_accumulation 2 equals one pass over the batch when the per-forward range
    initialisation is off (it counts micro-batches)."""
    whole, split = runs[(1, "whole")][0], runs[(1, "split")][0]
    _assert_states(whole["final"], split["final"], exact=False)
    assert whole["losses"] == pytest.approx(split["losses"], rel=1e-5)
    # with the initialisation on, the first step's ranges differ (1 forward against 2)
    differs = runs[(1, "clean")][0]["ranges"][0], runs[(1, "accumulated")][0]["ranges"][0]
    assert not all(torch.equal(differs[0][k], differs[1][k]) for k in differs[0])


def test_two_processes_equal_one_with_clipped_inputs(runs: Runs):
    """Ranges at 1 clip many inputs; whether the decay applies (more than range_min_unclipped
    of the inputs unclipped) is decided on the global batch (apply_range_decay)."""
    _assert_states(runs[(2, "clipped")][0]["final"], runs[(1, "clipped")][0]["final"],
                   exact=False)


@pytest.mark.parametrize(("sharded", "one"), [("fsdp", "clean"),
                                              ("fsdp-accumulated", "accumulated-clipped")])
def test_sharded_equals_one_process_and_ddp_with_noise_off(runs: Runs, sharded: str, one: str):
    two, single = runs[(2, sharded)][0], runs[(1, one)][0]
    _assert_states(two["final"], single["final"], exact=False)
    assert two["losses"] == pytest.approx(single["losses"], rel=1e-5)
    if sharded == "fsdp":
        _assert_states(two["final"], runs[(2, "clean")][0]["final"], exact=False)


def test_sharded_resume_is_exact(runs: Runs):
    """Stopped after step 1 (checkpoint with the full optimizer state), resumed to step 3:
    the uninterrupted sharded run's student, bit for bit, on both processes."""
    for rank in (0, 1):
        _assert_states(runs[(2, "fsdp-resumed")][rank]["final"],
                       runs[(2, "fsdp")][rank]["final"], exact=True)
    assert runs[(2, "fsdp-resumed")][0]["losses"] == runs[(2, "fsdp")][0]["losses"]


def test_sharded_on_one_process_is_refused(tmp_path):
    from afmc.config import config_from_dict
    from afmc.train import trainer

    with pytest.raises(ValueError, match="training.engine=fsdp .* at least 2"):
        trainer.train("afmc-tiny", "stdlib:train", tmp_path / "out",
                      config_from_dict({"training": SHARDED}))
    assert not (tmp_path / "out").exists()

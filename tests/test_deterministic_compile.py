"""One compile, one file (issue 21): the same model, data and options give the same bytes.

afmc-tiny is compiled twice per target into two directories, the first with torch on
one thread and the second on two, so that a result that follows the thread count
(a whole-tensor torch sum is split per thread) would show. Every file written is
byte-identical (model.onnx, model.onnx.data when the weights are stored beside it,
int8's reference.onnx, ...), except afmc.json, which is identical but for the wall time
of each step (passes[i].seconds): the one field of the record that depends on the run.
The ONNX metadata (the record without "passes") holds no time and no output path.
The sums that did follow the thread count (the fidelity check's per-layer errors, in
the metadata; --verify's output drift) are checked on their own on a tensor where
torch's sum does.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

import afmc
from afmc.compiler.fidelity import sum_of_squares
from afmc.compiler.lowering import read_metadata
from afmc.config import load_config
from afmc.io.layout import MODEL_FILE, RECORD_FILE
from afmc.passes.verify import output_drift

RUN_DEPENDENT = ("passes", "seconds")  # passes[i].seconds: wall time of step i
OVERRIDES = ["calibration.max_tokens=1024"]  # fewer calibration windows: a faster compile


def _compile(target: str, out: Path, threads: int) -> Path:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return afmc.compile("afmc-tiny", target, load_config(None, OVERRIDES), output=out).output
    finally:
        torch.set_num_threads(before)


def _files(out: Path) -> dict[str, bytes]:
    return {str(path.relative_to(out)): path.read_bytes()
            for path in sorted(out.rglob("*")) if path.is_file()}


def _without_run_dependent(record: dict) -> dict:
    record = copy.deepcopy(record)
    section, field = RUN_DEPENDENT
    for step in record[section]:
        assert isinstance(step.pop(field), float)
    return record


@pytest.mark.slow
@pytest.mark.parametrize("target", ["aimc", "int8"])
def test_same_input_and_options_give_the_same_files(target, tmp_path):
    first = _compile(target, tmp_path / "first", threads=1)
    second = _compile(target, tmp_path / "second", threads=2)
    files, again = _files(first), _files(second)
    assert sorted(files) == sorted(again)
    assert MODEL_FILE in files and RECORD_FILE in files
    different = [name for name in files if name != RECORD_FILE and files[name] != again[name]]
    assert not different, f"{target}: differ between two compiles: {different}"

    record, other = (json.loads(files[RECORD_FILE]), json.loads(again[RECORD_FILE]))
    assert _without_run_dependent(record) == _without_run_dependent(other)
    assert record["fidelity"] == other["fidelity"]  # measured on threads: in the file too
    metadata = read_metadata(first / MODEL_FILE)
    assert "passes" not in metadata
    assert str(tmp_path) not in json.dumps(metadata) + files[RECORD_FILE].decode()


def test_fidelity_and_verify_sums_do_not_depend_on_the_thread_count():
    """A whole-tensor torch sum of >= 32768 elements is split per thread; the fidelity
    check's sums (written into the ONNX metadata) and --verify's output drift (afmc.json)
    must not be."""
    # [batch, tokens, outputs] of a 576-wide layer: torch's own (x.double() ** 2).sum()
    # gives 14455966.090339571 on 1 and 3 threads, ...573 on 2 and 4 (torch 2.13, CPU)
    x = torch.randn(2, 256, 576, generator=torch.Generator().manual_seed(0)) * 7
    before = torch.get_num_threads()
    try:
        sums, drifts = [], []
        for threads in (1, 2, 3, 4):
            torch.set_num_threads(threads)
            sums.append(sum_of_squares(x))
            drifts.append(output_drift(lambda y: y * 1.001, (x,), x))
    finally:
        torch.set_num_threads(before)
    assert len(set(sums)) == 1 and len(set(drifts)) == 1
    assert drifts[0] == pytest.approx(1e-3, rel=1e-4)  # float32 rounding of y * 1.001
    assert sums[0] == pytest.approx(math.fsum(float(v) ** 2 for v in x.double().flatten()),
                                    rel=1e-12)

"""Progress where the output is not a terminal (afmc.console.progress_lines), --quiet/--verbose, and
the Python API's progress and quiet libraries (issue 23 item 2)."""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings

import pytest
from rich.console import Console
from typer.testing import CliRunner

from afmc.cli import app, screen
from afmc.console import progress_lines
from afmc.console.progress_lines import LineProgress, LineStatus, seconds_text
from afmc.console.quiet import libraries_quiet


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _console() -> Console:
    return Console(record=True, width=200, force_terminal=False)


def _lines(console: Console) -> list[str]:
    return console.export_text(clear=False).splitlines()


def test_seconds_are_written_for_people():
    assert [seconds_text(s) for s in (4.4, 59.6, 185, 3725)] == [
        "4 s", "1 min 0 s", "3 min 5 s", "1 h 02 min"]


def test_a_task_prints_after_5_s_then_every_30_s_with_an_estimate_and_a_last_line():
    clock, console = Clock(), _console()
    with LineProgress(console, clock) as bar:
        task = bar.add_task("chips", total=10)
        clock.now += 4
        bar.update(task, completed=1)  # within the first 5 s: silent
        assert _lines(console) == []
        clock.now += 6  # 10 s, 2 of 10 done: 40 s left at that rate
        bar.update(task, completed=2)
        clock.now += 10
        bar.advance(task)  # 10 s after the last line: silent
        clock.now += 25
        bar.advance(task)  # 35 s after it: 4 of 10 at 45 s, 67.5 s left
        clock.now += 5
        bar.update(task, completed=10)
    assert _lines(console) == [
        "chips: 2/10 (20%), 10 s elapsed, about 40 s left",
        "chips: 4/10 (40%), 45 s elapsed, about 1 min 8 s left",
        "chips: 10/10, 50 s",
    ]


def test_a_short_task_stays_silent_and_an_open_count_has_no_estimate():
    clock, console = Clock(), _console()
    with LineProgress(console, clock) as bar:
        short = bar.add_task("fp", total=3)
        clock.now += 2
        bar.update(short, completed=3)
        count = bar.add_task("tokens")
        clock.now += 7
        bar.update(count, completed=512)
    assert _lines(console) == ["tokens: 512, 7 s elapsed", "tokens: 512, 7 s"]


def test_a_status_prints_a_long_phase_without_updates():
    """The ticker prints the current phase once it has run 5 s, though no update came."""
    clock, console = Clock(), _console()
    with LineStatus(console, "compiling", clock, tick=0.01) as status:
        status.update("compiling: calibrate")
        clock.now += 6
        deadline = time.monotonic() + 5
        while not _lines(console) and time.monotonic() < deadline:
            time.sleep(0.01)
        clock.now += 10
        status.update("compiling: lower")
    assert _lines(console) == ["compiling: calibrate (6 s elapsed)",
                               "compiling: lower (16 s elapsed)", "compiling: done, 16 s"]


def test_a_status_that_fails_is_not_done():
    """A phase that ends in an error prints no "done" line after what it printed."""
    clock, console = Clock(), _console()
    with pytest.raises(ValueError), LineStatus(console, "compiling", clock, tick=60) as status:
        clock.now += 6
        status.update("compiling: capture")
        raise ValueError("bad input")
    assert _lines(console) == ["compiling: capture (6 s elapsed)"]


def test_a_status_whose_count_moves_on_is_one_phase():
    """A description that differs only in its numbers (calibrate's batches) is the same
    phase: one line at once, then one per 30 s, not one per batch."""
    clock, console = Clock(), _console()
    with LineStatus(console, "compiling", clock, tick=60) as status:
        clock.now += 6
        for batch in range(1, 9):
            status.update(f"compiling: calibrate: batch {batch}/8")
            clock.now += 5
        status.update("compiling: lower")
    assert _lines(console) == ["compiling: calibrate: batch 1/8 (6 s elapsed)",
                               "compiling: calibrate: batch 7/8 (36 s elapsed)",
                               "compiling: lower (46 s elapsed)", "compiling: done, 46 s"]


def test_libraries_quiet_gives_the_callers_settings_back():
    os.environ.pop("TRANSFORMERS_VERBOSITY", None)
    exporter = logging.getLogger("torch.onnx._internal.exporter._registration")
    exporter.setLevel(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with libraries_quiet():
            assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
            assert exporter.level == logging.ERROR
            warnings.warn("inside", FutureWarning, stacklevel=1)
        warnings.warn("after", FutureWarning, stacklevel=1)
        with libraries_quiet(verbose=True):
            warnings.warn("verbose", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["after", "verbose"]
    assert "TRANSFORMERS_VERBOSITY" not in os.environ and exporter.level == logging.INFO
    exporter.setLevel(logging.NOTSET)


def test_quiet_and_verbose_exclude_each_other():
    result = CliRunner().invoke(app, ["-q", "-v", "targets"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --quiet and --verbose exclude each other"


@pytest.mark.slow
def test_eval_in_a_log_prints_progress_lines_and_quiet_prints_none(compiled_tiny, tmp_path,
                                                                   monkeypatch):
    """afmc eval with stderr not a terminal: plain lines with elapsed time; -q: none, the
    results on stdout unchanged."""
    out = tmp_path / "tiny"
    shutil.copytree(compiled_tiny.output, out)
    monkeypatch.setattr(progress_lines, "FIRST_LINE_AFTER", 0.0)
    monkeypatch.setattr(progress_lines, "LINE_EVERY", 0.0)
    arguments = ["eval", str(out), "--text", "stdlib:heldout", "--seeds", "2", "--max-tokens",
                 "512"]
    try:
        loud = CliRunner().invoke(app, arguments)
        quiet = CliRunner().invoke(app, ["-q", *arguments])
    finally:
        screen.err.quiet = False
    assert loud.exit_code == 0 and quiet.exit_code == 0, loud.stderr + quiet.stderr
    lines = [line for line in loud.stderr.splitlines() if "elapsed" in line]
    assert any(line.startswith("chips: 1/3 (33%)") and "left" in line for line in lines), \
        loud.stderr
    assert not [line for line in quiet.stderr.splitlines() if "elapsed" in line]
    assert quiet.stdout.splitlines()[-3:] == loud.stdout.splitlines()[-3:]


@pytest.mark.slow
def test_the_api_shows_the_steps_unless_told_not_to(tmp_path, monkeypatch, capsys):
    """afmc.compile(progress=True) (the default) writes the steps to stderr as lines when it
    is not a terminal; progress=False writes nothing there; a callable gets every step, and
    calibrate's batches as it takes them."""
    import torch

    import afmc

    monkeypatch.setattr(progress_lines, "FIRST_LINE_AFTER", 0.0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    example = (torch.randn(2, 16),)
    afmc.compile(model, "aimc", example_inputs=example, output=tmp_path / "loud")
    loud = capsys.readouterr().err
    assert "compiling: calibrate (" in loud and "compiling: done," in loud
    steps: list[str] = []
    afmc.compile(model, "aimc", example_inputs=example, output=tmp_path / "callback",
                 progress=steps.append)
    afmc.compile(model, "aimc", example_inputs=example, output=tmp_path / "silent",
                 progress=False)
    assert "compiling" not in capsys.readouterr().err
    assert steps[0] == "capture" and "calibrate" in steps and steps[-1] == "write"
    counts = [step for step in steps if step.startswith("calibrate: batch ")]
    total = counts[-1].rsplit("/", 1)[1]
    assert counts == [f"calibrate: batch {n}/{total}" for n in range(1, int(total) + 1)]
    assert steps.index("calibrate") < steps.index(counts[0])

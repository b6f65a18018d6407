"""The two consoles of a command: results on standard output, progress and notes of
the work on standard error, and the progress drawn there: rich bars and a spinner in a
terminal, plain lines with the elapsed time and an estimate elsewhere (afmc.console.progress_lines);
nothing on standard error with --quiet."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from afmc.console.progress_lines import LineProgress, LineStatus


@dataclass
class Screen:
    """Where a command prints: `out` its results, `err` its progress; `verbose`: the
    libraries' own messages are shown too (afmc.console.quiet)."""

    out: Console = field(default_factory=Console)
    err: Console = field(default_factory=lambda: Console(stderr=True))
    verbose: bool = False

    def progress(self) -> Progress | LineProgress:
        """A transient progress bar (description, bar, done/total, time) on `err`, or
        progress lines when `err` is not a terminal."""
        if not self.err.is_terminal:
            return LineProgress(self.err)
        return Progress("[progress.description]{task.description}", BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=self.err,
                        transient=True)

    def status(self, description: str) -> AbstractContextManager[Any]:
        """A named phase (``.update(description)``): a spinner in a terminal, else lines."""
        if not self.err.is_terminal:
            return LineStatus(self.err, description)
        return self.err.status(description)

    @contextlib.contextmanager
    def bar_from_first_report(self, description: str) -> Iterator[Callable[[int, int], None]]:
        """A progress callback (done, total) whose bar appears at the first report, after
        the checks, so that an error prints alone."""
        bar = self.progress()
        task = bar.add_task(description, total=None)

        def progress(done: int, total: int) -> None:
            bar.start()
            bar.update(task, completed=done, total=total)

        try:
            yield progress
        finally:
            if bar.live.is_started:
                bar.stop()

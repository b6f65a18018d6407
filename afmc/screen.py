"""The two consoles of a command: results on standard output, progress and notes of
the work on standard error, and the progress bars drawn there."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn


@dataclass(frozen=True)
class Screen:
    """Where a command prints: `out` its results, `err` its progress."""

    out: Console = field(default_factory=Console)
    err: Console = field(default_factory=lambda: Console(stderr=True))

    def progress(self) -> Progress:
        """A transient progress bar (description, bar, done/total, time) on `err`."""
        return Progress("[progress.description]{task.description}", BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=self.err,
                        transient=True)

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

"""Progress for output that is not a terminal (a pipe, a log file): plain lines.

Rules (what a log reader sees of work that takes a while):
- A task prints nothing during its first FIRST_LINE_AFTER seconds; a step shorter than
  that stays silent, as a bar would have come and gone.
- Then a line at most every LINE_EVERY seconds: ``description: done/total (p%), 12 s
  elapsed, about 30 s left`` (the estimate from the rate so far; without a total, the
  count and the elapsed time only), and one last line when a task that ran FIRST_LINE_AFTER
  or longer ends (its count reaches the total, or the progress stops):
  ``description: done/total, 42 s``.
- A status (a named phase, e.g. the compile's current pass) prints its description with
  the elapsed time whenever the phase changes after the first FIRST_LINE_AFTER seconds,
  and then at most every LINE_EVERY seconds. Descriptions that differ only in their
  numbers are one phase ("calibrate: batch 3/8" and "calibrate: batch 4/8"): a count
  moving on prints at the pace of LINE_EVERY, not once per batch.

`LineProgress` answers the part of rich.progress.Progress that afmc's commands use
(add_task, update, advance, start, stop, the context manager, live.is_started), so a
command draws a bar in a terminal and writes lines elsewhere with the same code.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from rich.console import Console

FIRST_LINE_AFTER = 5.0
_NUMBERS = re.compile(r"\d+")  # a status's counts: not a new phase
LINE_EVERY = 30.0


def seconds_text(seconds: float) -> str:
    """12 s, 3 min 5 s, 1 h 02 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    started: float = field(default_factory=time.monotonic)
    printed_at: float | None = None
    finished: bool = False


class LineProgress:
    """Plain progress lines on `console` (module rules); `clock` is time.monotonic."""

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.clock = clock
        self.tasks: list[_Task] = []
        self.live = SimpleNamespace(is_started=False)

    def __enter__(self) -> LineProgress:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.live.is_started = True

    def stop(self) -> None:
        """End every task (the last line of each that ran long enough)."""
        for task in self.tasks:
            self._finish(task)
        self.live.is_started = False

    def add_task(self, description: str, total: float | None = None, **_: Any) -> int:
        self.tasks.append(_Task(description, total, started=self.clock()))
        return len(self.tasks) - 1

    def update(self, task_id: int, *, completed: float | None = None, total: float | None = None,
               description: str | None = None, advance: float | None = None, **_: Any) -> None:
        task = self.tasks[task_id]
        if total is not None:
            task.total = total
        if description is not None:
            task.description = description
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        if task.finished:
            return
        if task.total and task.completed >= task.total:
            self._finish(task)
        else:
            self._maybe_print(task)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def _maybe_print(self, task: _Task) -> None:
        now = self.clock()
        if now - task.started < FIRST_LINE_AFTER:
            return
        if task.printed_at is not None and now - task.printed_at < LINE_EVERY:
            return
        task.printed_at = now
        self.console.print(self._line(task, now), highlight=False, markup=False)

    def _line(self, task: _Task, now: float) -> str:
        elapsed = now - task.started
        if not task.total:
            return f"{task.description}: {task.completed:g}, {seconds_text(elapsed)} elapsed"
        share = task.completed / task.total
        line = (f"{task.description}: {task.completed:g}/{task.total:g} ({share:.0%}), "
                f"{seconds_text(elapsed)} elapsed")
        if 0 < share < 1:
            line += f", about {seconds_text(elapsed * (1 - share) / share)} left"
        return line

    def _finish(self, task: _Task) -> None:
        if task.finished:
            return
        task.finished = True
        if task.printed_at is None and self.clock() - task.started < FIRST_LINE_AFTER:
            return
        done = f"{task.completed:g}/{task.total:g}" if task.total else f"{task.completed:g}"
        self.console.print(f"{task.description}: {done}, "
                           f"{seconds_text(self.clock() - task.started)}",
                           highlight=False, markup=False)
        task.printed_at = None


class LineStatus:
    """A named phase as plain lines (module rules): `update(description)`; a background
    ticker prints the current description during a long phase that sends no update."""

    def __init__(self, console: Console, description: str,
                 clock: Callable[[], float] = time.monotonic, tick: float = 1.0) -> None:
        self.console = console
        self.clock = clock
        self.tick = tick
        self.started = clock()
        self.name = self.description = description
        self.printed: tuple[str, float] | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._ticker = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LineStatus:
        self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._ticker.join()
        if self.printed is not None and exc[0] is None:  # a phase that failed is not done
            self.console.print(f"{self.name}: done, "
                               f"{seconds_text(self.clock() - self.started)}",
                               highlight=False, markup=False)

    def update(self, description: str) -> None:
        self.description = description
        self._maybe_print()

    def _run(self) -> None:
        while not self._stopped.wait(self.tick):
            self._maybe_print()

    def _maybe_print(self) -> None:
        with self._lock:
            now, description = self.clock(), self.description
            if now - self.started < FIRST_LINE_AFTER:
                return
            phase = _NUMBERS.sub("#", description)
            if self.printed is not None and self.printed[0] == phase \
                    and now - self.printed[1] < LINE_EVERY:
                return
            self.printed = (phase, now)
            self.console.print(f"{description} ({seconds_text(now - self.started)} elapsed)",
                               highlight=False, markup=False)

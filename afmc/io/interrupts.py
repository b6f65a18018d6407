"""SIGINT and SIGTERM as exceptions, so that a block's cleanup runs when afmc is stopped.

Rules, while `signals_raise()` is active in the main thread:

- SIGTERM raises `Terminated` (a SystemExit with code 143, the shell's code for
  a process ended by SIGTERM) at the next Python instruction of the main thread;
  SIGINT raises KeyboardInterrupt as usual. Either unwinds through `finally`
  and `except BaseException` blocks, which is what lets a staging directory be
  removed.
- A handler the program installed itself is called instead of raising; a signal
  the program ignores stays ignored; the previous handlers come back when the
  block ends.
- Inside `deferred()` (a step that must not be cut in half, such as publishing
  an output directory), a signal is held and acted on when the step ends.
- A signal whose exception Python dropped (it arrived inside a finalizer, a
  `__del__`, where exceptions are printed as "Exception ignored" and lost) is
  raised again when the next `deferred()` step begins, so an interrupted compile
  does not go on to publish its output.
- Outside the main thread `signals_raise()` changes nothing (Python delivers
  signals to the main thread only).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(SystemExit):
    """SIGTERM arrived while `signals_raise()` was active."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


class _Held:
    """The depth of nested `deferred()` blocks and the first signal held meanwhile; the
    signal whose exception was raised and has not left `signals_raise()`'s block."""

    depth = 0
    signum: int | None = None
    raised: int | None = None


def _raise(signum: int, frame: FrameType | None, previous: object) -> None:
    if callable(previous) and previous is not signal.default_int_handler:
        previous(signum, frame)
        return
    _Held.raised = signum
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt


@contextmanager
def signals_raise() -> Iterator[None]:
    """SIGINT and SIGTERM raise in the main thread while the block runs (module rules)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    installed = {}
    for signum in SIGNALS:
        previous = signal.getsignal(signum)
        if previous is None or previous == signal.SIG_IGN:
            continue  # a handler not set from Python cannot be restored; ignored stays ignored

        def handler(signum: int, frame: FrameType | None, previous: object = previous) -> None:
            if _Held.depth:
                _Held.signum = _Held.signum or signum
                return
            _raise(signum, frame, previous)

        installed[signum] = previous
        signal.signal(signum, handler)
    try:
        yield
    except BaseException:
        _Held.raised = None  # the signal's exception (if any) is on its way out
        raise
    finally:
        for signum, previous in installed.items():
            signal.signal(signum, previous)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM (under `signals_raise`) until the block ends, then act on them;
    first raise a signal whose exception was dropped (module rules)."""
    if _Held.raised is not None:
        signum, _Held.raised = _Held.raised, None
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt
    _Held.depth += 1
    try:
        yield
    finally:
        _Held.depth -= 1
        if not _Held.depth and _Held.signum is not None:
            signum, _Held.signum = _Held.signum, None
            handler = signal.getsignal(signum)
            if callable(handler):
                handler(signum, None)

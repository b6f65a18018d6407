"""Errors raised by the capture front ends."""

from __future__ import annotations


class CaptureError(Exception):
    """A model could not be loaded or traced into a graph.

    The message is one line that names what failed: the file, the architecture,
    or the module and operation that torch.export could not trace.
    """


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, shortened to `limit` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."

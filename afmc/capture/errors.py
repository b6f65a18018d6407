"""Errors raised by the capture front ends."""

from __future__ import annotations


class CaptureError(Exception):
    """A model could not be loaded or traced into a graph.

    The message is one line that names what failed: the file, the architecture,
    or the module and operation that torch.export could not trace.
    """

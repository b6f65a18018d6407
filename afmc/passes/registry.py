"""Passes registered by name, so the CLI and the Python API can list, select and order them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Level = Literal["fx", "onnx"]


@dataclass(frozen=True)
class PassInfo:
    """A registered pass: its name, the graph level it runs on, one line of what it does."""

    name: str
    level: Level
    summary: str
    factory: Callable[..., object]


PASSES: dict[str, PassInfo] = {}


def register_pass(name: str, level: Level) -> Callable[[type], type]:
    """Class decorator: register a pass under `name`; its summary is its docstring's first line."""

    def decorate(cls: type) -> type:
        if name in PASSES:
            raise ValueError(f"pass {name!r} is registered twice")
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        PASSES[name] = PassInfo(name, level, summary, cls)
        return cls

    return decorate


def get_pass(name: str) -> PassInfo:
    """The registered pass `name`; an unknown name is an error that lists the known ones."""
    try:
        return PASSES[name]
    except KeyError:
        known = ", ".join(sorted(PASSES))
        raise KeyError(f"unknown pass {name!r} (known: {known})") from None

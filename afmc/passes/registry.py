"""Passes registered by name, so the CLI and the Python API can list, select and order them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Level = Literal["fx", "onnx"]


@dataclass(frozen=True)
class PassInfo:
    """A registered pass: its name, the graph level it runs on, one line of what it does.

    uses_calibration: the factory takes the calibration batches (`batches=`).
    reports_progress: the factory takes `progress=`, called with the count of batches done.
    """

    name: str
    level: Level
    summary: str
    factory: Callable[..., object]
    uses_calibration: bool = False
    reports_progress: bool = False


PASSES: dict[str, PassInfo] = {}


def register_pass(name: str, level: Level, uses_calibration: bool = False,
                  reports_progress: bool = False) -> Callable[[type], type]:
    """Class decorator: register a pass under `name`; its summary is its docstring's first line."""

    def decorate(cls: type) -> type:
        if name in PASSES:
            raise ValueError(f"pass {name!r} is registered twice")
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        PASSES[name] = PassInfo(name, level, summary, cls, uses_calibration,
                                reports_progress)
        return cls

    return decorate


def get_pass(name: str) -> PassInfo:
    """The registered pass `name`; an unknown name is an error that lists the known ones."""
    try:
        return PASSES[name]
    except KeyError:
        known = ", ".join(sorted(PASSES))
        raise KeyError(f"unknown pass {name!r} (known: {known})") from None


PassSpec = str | Callable[..., object]


def resolve_passes(default: tuple[str, ...], passes: list[PassSpec] | None,
                   skip: list[str] | tuple[str, ...] = (), level: Level = "fx") -> list[PassSpec]:
    """The pass list of a compile: `passes` (names or pass objects) or the target's default,
    less the names in `skip`. Unknown names, and skips naming no pass of the list, are errors.
    """
    chosen = list(default if passes is None else passes)
    for spec in chosen:
        if isinstance(spec, str):
            info = get_pass(spec)
            if info.level != level:
                graph = "ONNX models" if info.level == "onnx" else "the torch program"
                raise ValueError(f"pass {spec!r} runs on {graph}, not on this input")
    names = {spec for spec in chosen if isinstance(spec, str)}
    for name in skip:
        get_pass(name)
        if name not in names:
            raise ValueError(f"--skip {name}: not among the passes of this compile "
                             f"({', '.join(sorted(names))})")
    return [spec for spec in chosen if not (isinstance(spec, str) and spec in skip)]


def registered_name(pass_object: object) -> str:
    """The name `pass_object`'s class is registered under; its class name if it is not."""
    cls = type(pass_object)
    return next((info.name for info in PASSES.values() if info.factory is cls), cls.__name__)


def pass_name(spec: PassSpec) -> str:
    """How timings, checks and errors name a pass: its registered name, or its class's."""
    return spec if isinstance(spec, str) else type(spec).__name__


def build_pass(spec: PassSpec, config: Any, batches: Callable[[], Any],
               progress: Callable[[int], None] | None = None) -> Any:
    """The pass `spec` names, built for one compile: with `batches()` (the calibration
    batches at the pass's graph level) when it uses them and `progress` when it reports
    it; a pass object is returned as it is."""
    if not isinstance(spec, str):
        return spec
    info = get_pass(spec)
    arguments: dict[str, Any] = {"batches": batches()} if info.uses_calibration else {}
    if info.reports_progress and progress is not None:
        arguments["progress"] = progress
    return info.factory(config, **arguments)

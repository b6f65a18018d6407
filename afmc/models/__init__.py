"""Models that ship with afmc, and resolution of a model argument to a directory."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent

BUILTIN_MODELS: dict[str, Path] = {
    "afmc-tiny": _HERE / "afmc-tiny",
}


def resolve_model_path(name_or_path: str) -> Path:
    """The directory of a built-in model name, or ``name_or_path`` as an existing directory.

    Raises ``FileNotFoundError`` when it is neither.
    """
    if name_or_path in BUILTIN_MODELS:
        return BUILTIN_MODELS[name_or_path]
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        builtins = ", ".join(sorted(BUILTIN_MODELS))
        raise FileNotFoundError(
            f"model not found: {name_or_path} is not a directory nor a built-in model ({builtins})"
        )
    return path

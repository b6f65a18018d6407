"""Text for calibration and evaluation: a file, or a built-in corpus (stdlib:SPLIT)."""

from __future__ import annotations

from pathlib import Path

BUILTIN_TEXTS = ("stdlib:train", "stdlib:heldout", "stdlib:calibration")


def read_text(source: str | Path) -> str:
    """The text of `source`; a missing or empty file is an error naming it."""
    if str(source) in BUILTIN_TEXTS:
        from afmc.data.corpus import stdlib_text

        return stdlib_text(str(source).split(":")[1])
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: text file not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ValueError(f"{path}: text file is empty")
    return text

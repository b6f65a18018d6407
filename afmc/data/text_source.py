"""Text for calibration and evaluation: a file, or a built-in corpus (stdlib:SPLIT).

A text file must be UTF-8 without NUL bytes (afmc.io.input_files): random or binary
bytes are an error naming the file and the first bad byte, never silently
replaced. A missing, empty or whitespace-only file, a directory, and an unknown
``stdlib:`` name are errors naming it.
"""

from __future__ import annotations

from pathlib import Path

from afmc.io.input_files import read_utf8_text

BUILTIN_TEXTS = ("stdlib:train", "stdlib:heldout", "stdlib:calibration")


def read_text(source: str | Path) -> str:
    """The text of `source` (see the module rules)."""
    if str(source) in BUILTIN_TEXTS:
        from afmc.data.corpus import stdlib_text

        return stdlib_text(str(source).split(":")[1])
    path = Path(source)
    if str(source).startswith("stdlib:") and not path.exists():
        raise ValueError(f"{source}: unknown built-in text (known: {', '.join(BUILTIN_TEXTS)})")
    text = read_utf8_text(path, "text file")
    if not text.strip():
        raise ValueError(f"{path}: text file is empty")
    return text

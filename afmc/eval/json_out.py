"""Results written as JSON: checked before the work, written atomically after it.

The directory of the file must exist (checked first, so a long evaluation does
not end in an error); the file is written to a temporary file in that directory
and moved over the target with os.replace, so a reader never sees half a file.
write_text_atomic does the same for any text (the report page).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def check_json_path(path: Path) -> None:
    """A ValueError naming `path` unless its directory exists and it is not a directory."""
    if not path.parent.is_dir():
        raise ValueError(f"{path}: directory does not exist")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory")


def write_json(path: Path, data: Any) -> None:
    """Write `data` to `path` as indented JSON, atomically (rules in the module docstring)."""
    check_json_path(path)
    write_text_atomic(path, json.dumps(data, indent=2))


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary file beside it and os.replace."""
    path = Path(path)
    handle, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(staged, 0o666 & ~mask)  # mkstemp makes it private; as a plain write would
        os.replace(staged, path)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise

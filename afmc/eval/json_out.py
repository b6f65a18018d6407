"""Results written as JSON: checked before the work, written atomically after it.

The directory of the file must exist (checked first, so a long evaluation does
not end in an error); the file is written to a temporary file in that directory
and moved over the target with os.replace, so a reader never sees half a file.
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
    handle, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(data, file, indent=2)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(staged, 0o666 & ~mask)  # mkstemp makes it private; as a plain write would
        os.replace(staged, path)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise

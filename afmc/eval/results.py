"""The result files of `afmc eval` in OUT/eval: one JSON file per mode and settings.

Rules (docs/evaluation.md, "Where the results go"):
- A result is written to OUT/eval/KIND-LABEL-HASH.json. KIND is what the file holds
  (`KINDS`: the mode), LABEL a few settings to read at a glance (noise model,
  chips, ...), HASH the first 8 hex digits of the SHA-256 of every setting that
  changes the result (JSON, keys sorted), which the file holds as "settings". Runs
  with different settings sit side by side; a rerun with the same settings
  replaces its own file.
- A result is checked against its kind's schema (afmc.eval.result_models, the one
  `afmc report` reads it with) before it is written.
- `--json PATH` gets a copy of the same JSON.
- The file is written atomically (afmc.eval.json_out): a reader never sees half a
  file, and the folder is made when missing.
- A JSON file of OUT/eval whose name begins with a kind (up to the first "-" or
  ".json") is that kind's result; others are no results of afmc eval.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from afmc.eval.json_out import write_json
from afmc.eval.result_models import SCHEMAS, validated
from afmc.io.layout import EVAL_DIR

KINDS = ("seeds", "embedding", "inputs", "drift", "sensitivity", "test_time_compute")
_UNSAFE = re.compile(r"[^A-Za-z0-9._]+")


def result_name(kind: str, label: Sequence[str], settings: dict[str, Any]) -> str:
    """KIND-LABEL-HASH.json (module rules); in a label part every character but letters,
    digits, "." and "_" becomes "_" (so "-" only separates the parts)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    parts = [kind, *(_UNSAFE.sub("_", part).strip("_") or "_" for part in label), digest]
    return "-".join(parts) + ".json"


def write_result(out_dir: Path, kind: str, label: Sequence[str], settings: dict[str, Any],
                 result: dict[str, Any], copy: Path | None = None) -> Path:
    """Write `result` of `kind` with its `settings` to OUT/eval (module rules), and the
    same JSON to `copy` when given (--json); the result file's path."""
    folder = Path(out_dir) / EVAL_DIR
    folder.mkdir(exist_ok=True)
    path = folder / result_name(kind, label, settings)
    data = {"kind": kind, **result, "settings": settings}
    schema, what = SCHEMAS[kind]
    validated(path, json.loads(json.dumps(data)), schema, what)  # as a reader will see it
    write_json(path, data)
    if copy is not None:
        write_json(copy, data)
    return path


def result_kind(path: Path) -> str | None:
    """The kind of the result file `path` by its name, or None (module rules)."""
    if path.suffix != ".json":
        return None
    kind = path.stem.split("-", 1)[0]
    return kind if kind in KINDS else None


def result_files(out_dir: Path) -> dict[str, list[Path]]:
    """The result files of OUT/eval by kind, each list sorted by name."""
    found: dict[str, list[Path]] = {kind: [] for kind in KINDS}
    folder = Path(out_dir) / EVAL_DIR
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        kind = result_kind(path)
        if kind is not None:
            found[kind].append(path)
    return found

"""The files the report page reads, checked against their schemas (docs/tile-mapping.md).

Rules:
- The evaluation results live in OUT/eval (afmc.io.layout.EVAL_DIR), one file per
  mode and settings, each written by `afmc eval` and named by afmc.eval.results
  (KIND-LABEL-HASH.json; the older drift.json, sensitivity.json and
  test_time_compute.json are read too). Every file of a kind is read, in the order
  of their names; a kind without files reads as an empty list (the page says how
  to make one).
- A file that is present must be a JSON object of its schema: its "kind", every
  field the page shows, with the right types; fields the page does not show may
  be absent or anything. The error is one line naming the file, the first field
  at fault (dotted path, list positions counted from 0) and what is wrong.
- In test_time_compute.json every curve holds one accuracy per "samples" entry.
- afmc.json (RecordFacts) is read leniently, as `afmc report` reads records of
  older compiles: source, target, summary, passes, ... may be absent (the page
  says "not recorded"); a field that is present must have its type.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from afmc.eval.result_models import SCHEMAS, validated
from afmc.eval.results import result_files
from afmc.io.input_files import read_json_object


class _Facts(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class PassTime(_Facts):
    name: str
    seconds: float
    modified: bool | None = None


class RecordFacts(_Facts):
    """What the page shows of afmc.json besides its layers and tile maps."""

    source: str | None = None
    target: str | None = None
    runtime: str | None = None
    afmc_version: str | None = None
    calibration: str | None = None
    tokenizer: str | None = None
    config: dict[str, dict[str, Any]]
    summary: dict[str, Any] | None = None
    passes: list[PassTime] | None = None


@dataclass(frozen=True)
class Found:
    """One result file of OUT/eval and what it holds."""

    path: Path
    result: Any  # the schema of its kind (SCHEMAS)


def read_eval_results(out_dir: Path) -> dict[str, list[Found]]:
    """Every result file of OUT/eval by kind (module rules)."""
    files = result_files(out_dir)
    return {kind: [Found(path, validated(path, read_json_object(path, what), schema, what))
                   for path in files[kind]]
            for kind, (schema, what) in SCHEMAS.items()}

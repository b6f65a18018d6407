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
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from afmc.eval.results import result_files
from afmc.io.input_files import read_json_object


class _Schema(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    settings: dict[str, Any] = {}  # what keyed the file (afmc.eval.results); older: none


class SeedsResult(_Schema):
    """seeds: the perplexity of a text per chip, next to the FP view."""

    kind: Literal["seeds"]
    tokens: int
    fp: float
    noise_free: float | None
    chips: dict[str, float]
    mean: float
    std: float | None  # the sample std (ddof=1) over the chips; None (null): one chip
    digital: str | None = None


class EmbeddingChip(_Schema):
    relative_error: float
    cosine: float


class EmbeddingResult(_Schema):
    """embedding: an encoder's embedding error against the FP view per chip."""

    kind: Literal["embedding"]
    windows: int
    chips: dict[str, EmbeddingChip]
    mean: float
    std: float | None
    digital: str | None = None


class OutputsSpread(_Schema):
    accuracy: float | None
    outputs: dict[str, dict[str, float | None]]


class InputsResult(_Schema):
    """inputs: the error of every output against the FP view over the chips."""

    kind: Literal["inputs"]
    samples: int
    outputs: list[str]
    fp_accuracy: float | None
    mean: OutputsSpread
    std: OutputsSpread
    digital: str | None = None


class DriftChip(_Schema):
    seed: int
    time_s: float
    value: float


class DriftPoint(_Schema):
    time_s: float
    mean: float
    std: float | None  # the sample std (ddof=1) over the chips; None (null): one chip
    chips: int


class DriftResult(_Schema):
    """drift.json: the metric of every chip at every time after programming."""

    kind: Literal["drift"]
    metric: Literal["perplexity", "relative_error"]
    noise: dict[str, Any]
    read_noise: float
    times_s: list[float]
    fp: float | None
    chips: list[DriftChip]
    summary: list[DriftPoint]


class LayerSensitivity(_Schema):
    name: str
    sqnr_db: float | None  # None: no error at all (infinite SQNR)
    relative_error: float
    value: float
    delta: float


class CumulativePoint(_Schema):
    analog_layers: int
    added: str
    value: float


class SensitivityResult(_Schema):
    """sensitivity.json: the metric with one layer analog at a time, and layers added
    one by one in order of increasing harm."""

    kind: Literal["sensitivity"]
    metric: Literal["perplexity", "relative_error"]
    seed: int
    fp: float | None
    all_analog: float
    layers: list[LayerSensitivity]
    cumulative: list[CumulativePoint]
    budget: float | None
    keep_digital: list[str]


class AccuracyCurve(_Schema):
    label: str
    seed: int | None
    accuracy: list[float]


class TtcResult(_Schema):
    """test_time_compute.json: task accuracy against the number of samples voted on."""

    kind: Literal["test_time_compute"]
    task: str
    problems: int
    vote: str
    temperature: float
    samples: list[int]
    curves: list[AccuracyCurve]

    @model_validator(mode="after")
    def _one_accuracy_per_sample_count(self) -> TtcResult:
        for index, curve in enumerate(self.curves):
            if len(curve.accuracy) != len(self.samples):
                raise ValueError(
                    f"curves.{index}.accuracy: {len(curve.accuracy)} values for "
                    f"{len(self.samples)} sample counts"
                )
        return self


class PassTime(_Schema):
    name: str
    seconds: float
    modified: bool | None = None


class RecordFacts(_Schema):
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


Schema = TypeVar("Schema", bound=_Schema)


def validated(path: Path, data: dict[str, Any], schema: type[Schema], what: str) -> Schema:
    """`data` (read from `path`) as `schema`; a one-line ValueError naming the first fault."""
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        where = f"{field}: " if field else ""
        raise ValueError(f"{path}: not a valid {what} ({where}{message})") from None


SCHEMAS: dict[str, tuple[type[_Schema], str]] = {
    "seeds": (SeedsResult, "seeds result"),
    "embedding": (EmbeddingResult, "embedding result"),
    "inputs": (InputsResult, "inputs result"),
    "drift": (DriftResult, "drift result"),
    "sensitivity": (SensitivityResult, "sensitivity result"),
    "test_time_compute": (TtcResult, "test-time-compute result"),
}


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

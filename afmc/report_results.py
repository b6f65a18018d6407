"""The files the report page reads, checked against their schemas (docs/tile-mapping.md).

Rules:
- The evaluation results live in OUT/eval (afmc.layout.EVAL_DIR): drift.json,
  sensitivity.json and test_time_compute.json, each written by `afmc eval`. A
  file that is absent reads as None (the page says how to make it).
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

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from afmc.input_files import read_json_object
from afmc.layout import EVAL_DIR

DRIFT_FILE = "drift.json"
SENSITIVITY_FILE = "sensitivity.json"
TEST_TIME_COMPUTE_FILE = "test_time_compute.json"


class _Schema(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


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


def read_result(path: Path, schema: type[Schema], what: str) -> Schema | None:
    """The result in `path` as `schema`, or None when the file is absent."""
    if not path.exists():
        return None
    return validated(path, read_json_object(path, what), schema, what)


class EvalResults(BaseModel):
    """The evaluation results of one output directory; None where not evaluated yet."""

    model_config = ConfigDict(frozen=True)

    drift: DriftResult | None
    sensitivity: SensitivityResult | None
    test_time_compute: TtcResult | None


def read_eval_results(out_dir: Path) -> EvalResults:
    """Read OUT/eval's result files (module rules)."""
    folder = Path(out_dir) / EVAL_DIR
    return EvalResults(
        drift=read_result(folder / DRIFT_FILE, DriftResult, "drift result"),
        sensitivity=read_result(
            folder / SENSITIVITY_FILE, SensitivityResult, "sensitivity result"
        ),
        test_time_compute=read_result(
            folder / TEST_TIME_COMPUTE_FILE, TtcResult, "test-time-compute result"
        ),
    )

"""The schemas of `afmc eval`'s result files (OUT/eval/KIND-LABEL-HASH.json), defined once.

`afmc eval` checks every result against its kind's schema before writing it
(afmc.eval.results.write_result), and `afmc report` reads the files through the same
schemas (afmc.report.results), so what one writes the other reads. A schema lists the
fields the report shows, with their types; other fields may be present. The error of a
file that does not fit is one line naming the file, the first field at fault (dotted
path, list positions counted from 0) and what is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator


class ResultSchema(BaseModel):
    """What every result file holds besides its own fields."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    settings: dict[str, Any] = {}  # what keyed the file (afmc.eval.results); older: none


class SeedsResult(ResultSchema):
    """seeds: the perplexity of a text per chip, next to the FP view."""

    kind: Literal["seeds"]
    tokens: int
    fp: float
    noise_free: float | None
    chips: dict[str, float]
    mean: float
    std: float | None  # the sample std (ddof=1) over the chips; None (null): one chip
    digital: str | None = None


class EmbeddingChip(ResultSchema):
    relative_error: float
    cosine: float


class EmbeddingResult(ResultSchema):
    """embedding: an encoder's embedding error against the FP view per chip."""

    kind: Literal["embedding"]
    windows: int
    chips: dict[str, EmbeddingChip]
    mean: float
    std: float | None
    digital: str | None = None


class OutputsSpread(ResultSchema):
    accuracy: float | None
    outputs: dict[str, dict[str, float | None]]


class InputsResult(ResultSchema):
    """inputs: the error of every output against the FP view over the chips."""

    kind: Literal["inputs"]
    samples: int
    outputs: list[str]
    fp_accuracy: float | None
    mean: OutputsSpread
    std: OutputsSpread
    digital: str | None = None


class DriftChip(ResultSchema):
    seed: int
    time_s: float
    value: float


class DriftPoint(ResultSchema):
    time_s: float
    mean: float
    std: float | None  # the sample std (ddof=1) over the chips; None (null): one chip
    chips: int


class DriftResult(ResultSchema):
    """drift.json: the metric of every chip at every time after programming."""

    kind: Literal["drift"]
    metric: Literal["perplexity", "relative_error"]
    noise: dict[str, Any]
    read_noise: float
    times_s: list[float]
    fp: float | None
    chips: list[DriftChip]
    summary: list[DriftPoint]


class LayerSensitivity(ResultSchema):
    name: str
    sqnr_db: float | None  # None: no error at all (infinite SQNR)
    relative_error: float
    value: float
    delta: float


class CumulativePoint(ResultSchema):
    analog_layers: int
    added: str
    value: float


class SensitivityResult(ResultSchema):
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


class AccuracyCurve(ResultSchema):
    label: str
    seed: int | None
    accuracy: list[float]


class TtcResult(ResultSchema):
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


Schema = TypeVar("Schema", bound=BaseModel)


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


SCHEMAS: dict[str, tuple[type[ResultSchema], str]] = {
    "seeds": (SeedsResult, "seeds result"),
    "embedding": (EmbeddingResult, "embedding result"),
    "inputs": (InputsResult, "inputs result"),
    "drift": (DriftResult, "drift result"),
    "sensitivity": (SensitivityResult, "sensitivity result"),
    "test_time_compute": (TtcResult, "test-time-compute result"),
}

"""Per-layer sensitivity of an aimc output, and which layers to keep digital
(afmc eval --sensitivity).

Rules:
- A layer's chip is chip `seed` with only that layer analog (CompiledModel.chip's
  analog_layers): its programmed weights, DAC and ADC, every other analog layer
  computed in floating point on its stored weights. A layer's programmed weights
  are the ones it has on the full chip `seed`. Every chip is a point (seed, layers)
  of an eval.sweep: with `jobs` they run in parallel, with a `log` a rerun takes
  the points it holds.
- Scores against the FP view on the same data: for a language model, the perplexity
  of the token windows and, over all windows' logits, the relative L2 error
  ||y - y_fp|| / ||y_fp|| and SQNR = -20 log10(relative error) dB
  (perplexity.PerplexityScorer with the FP logits); for any other model (tensor
  inputs), the relative error of all outputs flattened together
  (tensor_eval.OutputErrorScorer), which is then also the metric.
- Harm: delta = perplexity - FP perplexity, or the relative error itself; layers
  are ranked by increasing delta (ties keep the record's layer order).
- Cumulative curve: the first k layers of the ranking analog, k = 1..n; the first
  point is the chip of the first layer alone (not run again), the last the
  all-analog chip, reported as all_analog.
- Budget b (a fraction; --budget 1% is 0.01): a point is within it when
  perplexity / FP - 1 <= b, or relative error <= b. The suggestion is the largest k
  whose cumulative point is within the budget (0 when none is): the first k layers
  go analog, the rest are kept digital.
- The keep-digital file is the output's compiled configuration (record "config")
  whose placement.rules begin with one exact-name rule `place: digital` per kept
  layer, followed by the compiled rules: `afmc compile --config FILE` on the same
  model places exactly those layers digital and the others as before.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from afmc.console.tables import Column, FittedTable, layer_names
from afmc.eval.scoring import Score, Scorer
from afmc.eval.sweep import Point, run_sweep
from afmc.runtime.compiled import CompiledModel
from afmc.runtime.noise import NoiseConfig

RULES_FILE = "keep-digital.yaml"
SENSITIVITY_LOG = "sensitivity.jsonl"
_PERCENT = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?\d+)?)\s*%?\s*")


@dataclass
class LayerSensitivity:
    """The scores of the chip with only this layer analog."""

    name: str
    sqnr_db: float
    relative_error: float
    value: float
    delta: float


@dataclass
class CumulativePoint:
    """The metric with the first `analog_layers` layers of the ranking analog."""

    analog_layers: int
    added: str
    value: float


@dataclass
class SensitivityReport:
    """Layers ranked by increasing harm, the cumulative curve and the suggestion."""

    metric: str
    seed: int
    fp: float | None
    layers: list[LayerSensitivity]
    cumulative: list[CumulativePoint]
    budget: float | None = None
    keep_digital: list[str] = field(default_factory=list)

    @property
    def all_analog(self) -> float:
        return self.cumulative[-1].value

    def to_json(self) -> dict[str, Any]:
        """The report in the sensitivity result's schema (an infinite SQNR is null)."""
        layers = [{**asdict(layer), "sqnr_db": layer.sqnr_db if math.isfinite(layer.sqnr_db)
                   else None} for layer in self.layers]
        return {"kind": "sensitivity", "metric": self.metric, "seed": self.seed,
                "fp": self.fp, "all_analog": self.all_analog, "layers": layers,
                "cumulative": [asdict(point) for point in self.cumulative],
                "budget": self.budget, "keep_digital": self.keep_digital}


def parse_budget(text: str) -> float:
    """--budget as a fraction: a percentage >= 0, the % sign optional ("1%", "0.5")."""
    match = _PERCENT.fullmatch(text)
    if not match or not math.isfinite(float(match.group(1))):
        raise ValueError(f"--budget {text!r}: give a percentage >= 0, e.g. 1%")
    return float(match.group(1)) / 100


def check_sensitivity(model: CompiledModel) -> list[str]:
    """The analog layer names of `model`; a ValueError unless it is an aimc output with
    analog layers."""
    if not model.varies_by_seed:
        raise ValueError(f"--sensitivity: {model.out_dir}: the {model.target} target has no "
                         "analog chips; per-layer sensitivity needs an aimc output")
    names = [layer["name"] for layer in model.record["layers"] if layer.get("onnx_weight")]
    if not names:
        raise ValueError(f"--sensitivity: {model.out_dir} has no analog layers")
    return names


def harm(score: Score, fp: float | None) -> float:
    """How much a chip's score is worse than the FP view's (module rules)."""
    return score.value - fp if fp is not None else score.value


def measure_sensitivity(model: CompiledModel, scorer: Scorer, seed: int, *,
                        noise: NoiseConfig | None = None, read_noise: float = 0.0,
                        jobs: int = 1, log: Path | None = None,
                        progress: Callable[[int, int], None] | None = None
                        ) -> SensitivityReport:
    """Every layer alone, then the cumulative curve (module rules); one chip alive at a
    time unless `jobs` > 1. `progress(done, total)` after each of the 2n - 1 chips."""
    names = check_sensitivity(model)
    total = 2 * len(names) - 1
    done = 0

    def on_point(*_: object) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    sweep = partial(run_sweep, model, scorer, noise=noise, read_noise=read_noise, jobs=jobs,
                    log=log, on_point=on_point)
    alone = sweep([Point(seed, layers=(name,)) for name in names])
    layers = [LayerSensitivity(point.layers[0], score.sqnr_db, score.relative_error,
                               score.value, harm(score, scorer.fp))
              for point, score in alone.items()]
    layers.sort(key=lambda layer: layer.delta)
    ranked = tuple(layer.name for layer in layers)
    more = sweep([Point(seed, layers=ranked[:k]) for k in range(2, len(ranked) + 1)])
    values = [alone[Point(seed, layers=ranked[:1])].value,
              *(score.value for score in more.values())]
    cumulative = [CumulativePoint(k, name, value)
                  for k, (name, value) in enumerate(zip(ranked, values, strict=True), start=1)]
    return SensitivityReport(scorer.metric, seed, scorer.fp, layers, cumulative)


def analog_prefix(values: Sequence[float], fp: float | None, budget: float) -> int:
    """The largest k whose cumulative value values[k - 1] is within `budget` of the FP
    view (module rules), 0 when none is."""
    within = [k for k, value in enumerate(values, start=1)
              if (value / fp - 1 if fp is not None else value) <= budget]
    return max(within, default=0)


def suggest(report: SensitivityReport, budget: float) -> list[str]:
    """Set the report's budget and the layers it keeps digital; returns those layers."""
    k = analog_prefix([point.value for point in report.cumulative], report.fp, budget)
    report.budget = budget
    report.keep_digital = [layer.name for layer in report.layers[k:]]
    return report.keep_digital


def keep_digital_config(record: dict[str, Any], keep_digital: Sequence[str]) -> dict[str, Any]:
    """The compiled configuration with one exact-name digital rule per kept layer ahead
    of the compiled placement rules (module rules)."""
    config = dict(record["config"])
    placement = dict(config.get("placement", {}))
    placement["rules"] = [{"name": name, "place": "digital"} for name in keep_digital] + list(
        placement.get("rules", []))
    config["placement"] = placement
    return config


def write_rules(path: Path, record: dict[str, Any], keep_digital: Sequence[str]) -> None:
    """Write the keep-digital configuration as YAML to `path`."""
    header = (f"# afmc eval --sensitivity: {len(keep_digital)} layer(s) kept digital; "
              "use with afmc compile --config\n")
    path.write_text(header + yaml.safe_dump(keep_digital_config(record, keep_digital),
                                            sort_keys=False))


def ranking_table(report: SensitivityReport) -> FittedTable:
    """The ranking as a table that fits the terminal: each layer alone, the cumulative value
    once it and the layers above it are analog, and with a budget the suggested placement."""
    lm = report.fp is not None
    names = layer_names([layer.name for layer in report.layers])
    columns = [Column("#"), Column("layer", "name", "left"),
               *(Column(header) for header in ("SQNR dB", "rel. error",
                                               *(("perplexity", "delta") if lm else ()),
                                               "cumulative")),
               *((Column("place", justify="left"),) if report.budget is not None else ())]
    rows = []
    for index, (layer, point) in enumerate(zip(report.layers, report.cumulative, strict=True),
                                           start=1):
        place = "digital" if layer.name in report.keep_digital else "analog"
        rows.append([str(index), names.show(layer.name), f"{layer.sqnr_db:.2f}",
                     f"{layer.relative_error:.4g}",
                     *((f"{layer.value:.4f}", f"{layer.delta:+.4f}") if lm else ()),
                     f"{point.value:.4f}" if lm else f"{point.value:.4g}",
                     *((place,) if report.budget is not None else ())])
    return FittedTable(columns, rows, f"analog layers alone on chip {report.seed}, by "
                       "increasing harm", ["cumulative: this layer and those above it analog",
                                           *names.notes], keys=2)

"""Accuracy of chip instances over time after programming (afmc eval --drift).

Rules:
- The noise model is chosen at evaluation: `eval_noise` starts from the compiled
  one and applies --noise and --gdc; drift times need a model that drifts
  (pcm-drift, which --drift selects when --noise is not given, reram-wan2022 or
  reram-cmo; afmc.runtime.noise.AIHWKIT_MODELS).
- Every chip seed is read at every time (eval.sweep: the same seed is the same chip
  over time); the metric is the perplexity of a language model's token windows, or
  for any other model the relative error of its outputs against the FP view.
- Per time: mean and sample standard deviation (ddof=1; null for one chip) over the
  chips (afmc.eval.spread); the report is written as an OUT/eval result file
  (afmc.eval.results; schema in docs/evaluation.md), its points as they finish to
  OUT/eval/drift.jsonl, from which an interrupted sweep resumes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from afmc.eval.scoring import Score, Scorer
from afmc.eval.spread import json_number, sample_std
from afmc.eval.sweep import Point, run_sweep
from afmc.runtime.compiled import CompiledModel
from afmc.runtime.noise import AIHWKIT_MODELS, NoiseConfig, NoiseModel

DRIFT_LOG = "drift.jsonl"
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}
_TIME = re.compile(r"(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)([smhdwy]?)")


def parse_times(text: str) -> list[float]:
    """Drift times from "0,3600,1d,1y" (seconds, or with a unit s m h d w y; 1y = 365 d),
    in the order given, without repeats; a ValueError naming --drift otherwise."""
    times: list[float] = []
    for item in text.split(","):
        match = _TIME.fullmatch(item.strip())
        if not match:
            raise ValueError(f"--drift {text!r}: {item.strip()!r} is not a time in seconds "
                             "(or with a unit s, m, h, d, w, y), e.g. 0,3600,1d,1y")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
        if not math.isfinite(seconds):
            raise ValueError(f"--drift {text!r}: {item.strip()!r} is not finite")
        if seconds not in times:
            times.append(seconds)
    return times


def eval_noise(model: CompiledModel, name: NoiseModel | None, gdc: bool | None,
               drifting: bool) -> NoiseConfig:
    """The evaluation's noise model (module rules); ValueError naming the option."""
    noise = model.noise
    if name is None and drifting:
        name = "pcm-drift"
    if name is not None:
        noise = noise.model_copy(update={"model": name})
    if drifting and noise.model not in AIHWKIT_MODELS:
        raise ValueError(f"--drift: the {noise.model} noise model does not drift; "
                         f"use --noise {', '.join(AIHWKIT_MODELS)}")
    if gdc is not None:
        if noise.model not in AIHWKIT_MODELS:
            raise ValueError(f"--gdc/--no-gdc: global drift compensation belongs to the "
                             f"{', '.join(AIHWKIT_MODELS)} noise models, not {noise.model}")
        noise = noise.model_copy(update={"drift_compensation": gdc})
    return NoiseConfig.model_validate(noise.model_dump())


@dataclass
class DriftReport:
    """Values per (chip seed, time) and the FP view's value (None for relative error)."""

    metric: str
    noise: NoiseConfig
    read_noise: float
    times: list[float]
    seeds: list[int]
    fp: float | None
    values: dict[tuple[int, float], float]

    def at(self, time_s: float) -> list[float]:
        return [self.values[(seed, time_s)] for seed in self.seeds]

    def summary(self) -> list[dict[str, Any]]:
        return [{"time_s": t, "mean": float(np.mean(self.at(t))),
                 "std": json_number(sample_std(self.at(t))), "chips": len(self.seeds)}
                for t in self.times]

    def to_json(self) -> dict[str, Any]:
        return {"kind": "drift", "metric": self.metric,
                "noise": self.noise.model_dump(exclude={"drift_time_s"}),
                "read_noise": self.read_noise, "times_s": self.times, "fp": self.fp,
                "chips": [{"seed": seed, "time_s": t, "value": self.values[(seed, t)]}
                          for seed in self.seeds for t in self.times],
                "summary": self.summary()}


def evaluate_drift(model: CompiledModel, scorer: Scorer, seeds: list[int], times: list[float],
                   noise: NoiseConfig, *, read_noise: float = 0.0, jobs: int = 1,
                   log: Path | None = None,
                   on_point: Callable[[Point, Score, bool], None] | None = None
                   ) -> DriftReport:
    """Every chip seed at every time (module rules); `log` is the resume file."""
    if not model.varies_by_seed:
        raise ValueError(f"--drift: the {model.target} target has no analog chips to drift")
    points = [Point(seed, time_s) for seed in seeds for time_s in times]
    scores = run_sweep(model, scorer, points, noise=noise, read_noise=read_noise, jobs=jobs,
                       log=log, on_point=on_point)
    return DriftReport(scorer.metric, noise, read_noise, times, seeds, scorer.fp,
                       {(seed, time_s): score.value
                        for (seed, time_s, _), score in scores.items()})

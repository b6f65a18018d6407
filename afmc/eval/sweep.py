"""Chips of one compiled model, scored: the one loop over chips of every evaluation,
in parallel and resumable.

Rules:
- A point is (seed, time, layers): chip `seed` (None: the stored weights, no programming
  noise) programmed with the evaluation's noise model, read `time` seconds after
  programming (``NoiseConfig.drift_time_s``; None: the model's own setting), with only
  the analog layers `layers` analog (a tuple of layer names, CompiledModel.chip's
  analog_layers; None: all of them). The same seed at every time is the same chip: its
  programming and drift draws come from the same streams, so its accuracy over time is
  one device's trajectory; a layer keeps its programmed weights in every subset.
- A scorer (eval.scoring.Scorer) maps a chip to a Score; a value that is not finite is
  scored as infinite.
- With ``jobs`` > 1 the points run in that many worker processes (spawned: onnxruntime
  is not fork-safe), each opening the output once and giving every chip cores / jobs
  threads; results come back in completion order.
- With a ``log`` (JSON lines), every finished point is appended at once as
  {"key", "seed", "time_s", "value"}, with "layers" for a layer subset and the Score's
  "relative_error" and "details" where it has them; a later sweep with the same key
  (the scorer's metric and data, the noise model, the read noise, the hardware counts)
  skips the points the log holds, so an interrupted sweep resumes where it stopped.
  Lines of other keys are left as they are, and a torn last line (a killed writer) is
  ignored. Lines written before layer subsets and Scores (the four keys only) read as
  points of all layers with a bare value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

from afmc.eval.scoring import Score, Scorer
from afmc.runtime.compiled import CompiledModel
from afmc.runtime.noise import NoiseConfig


class Point(NamedTuple):
    """One chip of a sweep (module rules)."""

    seed: int | None
    time_s: float | None = None
    layers: tuple[str, ...] | None = None


def noise_at(noise: NoiseConfig, time_s: float | None) -> NoiseConfig:
    """`noise` read `time_s` seconds after programming (None: as configured)."""
    return noise if time_s is None else noise.model_copy(update={"drift_time_s": float(time_s)})


def sweep_key(scorer: Scorer, noise: NoiseConfig, read_noise: float,
              hardware: dict[str, int] | None = None) -> str:
    """What makes two sweeps' points interchangeable: data, noise model, read noise, and
    the chips' hardware counts (CompiledModel.hardware_counts: keyed only when given and
    not 1, so the logs of unsliced single-device chips keep their keys)."""
    counts = {name: value for name, value in (hardware or {}).items() if value != 1}
    settings = json.dumps({"metric": scorer.metric, "read_noise": read_noise,
                           "noise": noise.model_dump(exclude={"drift_time_s"}), **counts},
                          sort_keys=True).encode()
    return hashlib.sha256(settings + scorer.fingerprint()).hexdigest()[:16]


def logged_points(log: Path, key: str) -> dict[Point, Score]:
    """The points of sweep `key` that `log` already holds (module rules)."""
    done: dict[Point, Score] = {}
    if not log.exists():
        return done
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn line from an interrupted write
        if isinstance(entry, dict) and entry.get("key") == key:
            layers = entry.get("layers")
            point = Point(entry["seed"], entry["time_s"], None if layers is None
                          else tuple(layers))
            done[point] = Score(float(entry["value"]), entry.get("relative_error"),
                                entry.get("details", {}))
    return done


def _line(key: str, point: Point, score: Score) -> dict[str, Any]:
    """A point's log entry (module rules)."""
    entry: dict[str, Any] = {"key": key, "seed": point.seed, "time_s": point.time_s}
    if point.layers is not None:
        entry["layers"] = list(point.layers)
    entry["value"] = score.value
    if score.relative_error is not None:
        entry["relative_error"] = score.relative_error
    if score.details:
        entry["details"] = score.details
    return entry


def _append(log: Path, key: str, point: Point, score: Score) -> None:
    """One point as a line of its own, after a torn last line if there is one."""
    line = json.dumps(_line(key, point, score))
    with log.open("a+b") as file:
        torn = False
        if file.tell() > 0:
            file.seek(-1, os.SEEK_END)
            torn = file.read(1) != b"\n"
        file.write((b"\n" if torn else b"") + line.encode() + b"\n")
        file.flush()
        os.fsync(file.fileno())


def run_sweep(model: CompiledModel, scorer: Scorer, points: Iterable[Point], *,
              noise: NoiseConfig | None = None, read_noise: float = 0.0, jobs: int = 1,
              log: Path | None = None,
              on_point: Callable[[Point, Score, bool], None] | None = None
              ) -> dict[Point, Score]:
    """Score every point (module rules); `on_point(point, score, from_log)` as each ends.

    Returns the scores in the order of `points` (each point once)."""
    noise = noise or model.noise
    points = list(dict.fromkeys(Point(*point) for point in points))
    key = sweep_key(scorer, noise, read_noise, model.hardware_counts())
    done = logged_points(log, key) if log else {}
    results = {point: done[point] for point in points if point in done}
    for point, score in results.items():
        if on_point:
            on_point(point, score, True)
    todo = [point for point in points if point not in results]

    def finished(point: Point, score: Score) -> None:
        results[point] = score
        if log:
            _append(log, key, point, score)
        if on_point:
            on_point(point, score, False)

    if jobs <= 1 or len(todo) <= 1:
        for point in todo:
            finished(point, _score(model, scorer, point, noise, read_noise, None))
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)),
                                 mp_context=get_context("spawn"), initializer=_open_worker,
                                 initargs=(str(model.out_dir), scorer, threads,
                                           model.hardware_counts())) as pool:
            futures = {pool.submit(_score_in_worker, point, noise, read_noise): point
                       for point in todo}
            for future in as_completed(futures):
                finished(futures[future], future.result())
    return {point: results[point] for point in points}


def _score(model: CompiledModel, scorer: Scorer, point: Point, noise: NoiseConfig,
           read_noise: float, threads: int | None) -> Score:
    chip = model.chip(point.seed, read_noise=read_noise, noise=noise_at(noise, point.time_s),
                      threads=threads, analog_layers=point.layers)
    score = scorer(chip)
    return score if math.isfinite(score.value) else dataclasses.replace(score, value=math.inf)


_WORKER: dict[str, Any] = {}


def _open_worker(out_dir: str, scorer: Scorer, threads: int,
                 hardware: dict[str, int]) -> None:
    _WORKER.update(model=CompiledModel(out_dir, **hardware), scorer=scorer, threads=threads)


def _score_in_worker(point: Point, noise: NoiseConfig, read_noise: float) -> Score:
    return _score(_WORKER["model"], _WORKER["scorer"], point, noise, read_noise,
                  _WORKER["threads"])

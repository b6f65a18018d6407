"""Chip instances x drift times of one compiled model, scored, in parallel and resumable.

Rules:
- A point is (seed, time): chip `seed` (None: the stored weights, no programming
  noise) programmed with the evaluation's noise model, read `time` seconds after
  programming (``NoiseConfig.drift_time_s``; None: the model's own setting). The same
  seed at every time is the same chip: its programming and drift draws come from the
  same streams, so its accuracy over time is one device's trajectory.
- A scorer maps a chip to one number: the perplexity of token windows (language
  models) or the relative error of every output against the FP view's outputs on the
  given inputs (any model; all outputs flattened together).
- With ``jobs`` > 1 the points run in that many worker processes (spawned: onnxruntime
  is not fork-safe), each opening the output once and giving every chip cores / jobs
  threads; results come back in completion order.
- With a ``log`` (JSON lines), every finished point is appended at once as
  {"key", "seed", "time_s", "value"}; a later sweep with the same key (the scorer's
  data, the noise model, the read noise) skips the points the log holds, so an
  interrupted sweep resumes where it stopped. Lines of other keys are left as they
  are, and a torn last line (a killed writer) is ignored.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from afmc.data.model_inputs import ModelInputs
from afmc.eval.perplexity import perplexity
from afmc.eval.tensor_eval import model_outputs, output_error
from afmc.runtime.chip import Chip
from afmc.runtime.compiled import CompiledModel
from afmc.runtime.noise import NoiseConfig

Point = tuple[int | None, float | None]  # (seed, drift time in s)


@dataclass(frozen=True)
class PerplexityScorer:
    """Perplexity of `windows` ([n, T] token ids) on a chip."""

    windows: np.ndarray
    batch_size: int = 8
    metric = "perplexity"

    def __call__(self, chip: Chip) -> float:
        return perplexity(chip.run, self.windows, batch_size=self.batch_size)

    def fingerprint(self) -> bytes:
        return self.windows.tobytes() + str(self.windows.shape).encode()


@dataclass(frozen=True)
class OutputErrorScorer:
    """Relative L2 error of all outputs of a chip on `inputs` against `reference`, the FP
    view's outputs (tensor_eval.output_error over the flattened outputs)."""

    inputs: ModelInputs
    reference: tuple[np.ndarray, ...]
    metric = "relative_error"

    def __call__(self, chip: Chip) -> float:
        got = _flat(model_outputs(chip, self.inputs).values())
        return output_error(got, _flat(self.reference)).relative_error

    def fingerprint(self) -> bytes:
        return b"".join(array.tobytes() for array in self.reference)

    @classmethod
    def against_fp(cls, model: CompiledModel, inputs: ModelInputs) -> OutputErrorScorer:
        """The scorer whose reference is `model`'s FP view on `inputs`."""
        return cls(inputs, tuple(model_outputs(model.fp_view(), inputs).values()))


def _flat(outputs: Iterable[np.ndarray]) -> np.ndarray:
    """All outputs as one vector, each flattened, in output order."""
    return np.concatenate([output.ravel() for output in outputs])


Scorer = PerplexityScorer | OutputErrorScorer


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


def logged_points(log: Path, key: str) -> dict[Point, float]:
    """The points of sweep `key` that `log` already holds (module rules)."""
    done: dict[Point, float] = {}
    if not log.exists():
        return done
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn line from an interrupted write
        if isinstance(entry, dict) and entry.get("key") == key:
            done[(entry["seed"], entry["time_s"])] = float(entry["value"])
    return done


def _append(log: Path, key: str, point: Point, value: float) -> None:
    """One point as a line of its own, after a torn last line if there is one."""
    line = json.dumps({"key": key, "seed": point[0], "time_s": point[1], "value": value})
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
              on_point: Callable[[Point, float, bool], None] | None = None
              ) -> dict[Point, float]:
    """Score every point (module rules); `on_point(point, value, from_log)` as each ends.

    Returns the values in the order of `points`."""
    noise = noise or model.noise
    points = list(dict.fromkeys(points))
    key = sweep_key(scorer, noise, read_noise, model.hardware_counts())
    done = logged_points(log, key) if log else {}
    results = {point: done[point] for point in points if point in done}
    for point, value in results.items():
        if on_point:
            on_point(point, value, True)
    todo = [point for point in points if point not in results]

    def finished(point: Point, value: float) -> None:
        results[point] = value
        if log:
            _append(log, key, point, value)
        if on_point:
            on_point(point, value, False)

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
           read_noise: float, threads: int | None) -> float:
    seed, time_s = point
    chip = model.chip(seed, read_noise=read_noise, noise=noise_at(noise, time_s),
                      threads=threads)
    value = scorer(chip)
    return value if math.isfinite(value) else math.inf


_WORKER: dict[str, Any] = {}


def _open_worker(out_dir: str, scorer: Scorer, threads: int,
                 hardware: dict[str, int]) -> None:
    _WORKER.update(model=CompiledModel(out_dir, **hardware), scorer=scorer, threads=threads)


def _score_in_worker(point: Point, noise: NoiseConfig, read_noise: float) -> float:
    return _score(_WORKER["model"], _WORKER["scorer"], point, noise, read_noise,
                  _WORKER["threads"])

"""The spread over chips is the sample standard deviation (ddof=1) everywhere afmc reports
mean +- std (afmc.eval.spread, issue 21): the helpers against numpy, the reports that use
them (perplexity, encoder, tensor and drift evaluations), and one chip (no sample std:
NaN in Python, null in JSON, "n/a" in text)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from afmc.eval.drift import DriftReport
from afmc.eval.embedding import EmbeddingError, EmbeddingReport
from afmc.eval.evaluate import EvalReport
from afmc.eval.result_models import DriftPoint
from afmc.eval.spread import json_number, mean_std, sample_std, spread_label, std_text
from afmc.eval.tensor_eval import ChipScores, OutputError, TensorEvalReport
from afmc.runtime.noise import NoiseConfig

VALUES = [41.45, 39.15, 43.33, 42.19, 40.02]


def test_sample_std_is_numpy_ddof_1():
    assert sample_std(VALUES) == pytest.approx(np.std(VALUES, ddof=1), rel=1e-12)
    assert sample_std(VALUES) == pytest.approx(np.std(VALUES) * math.sqrt(5 / 4), rel=1e-12)
    assert mean_std(VALUES) == pytest.approx((np.mean(VALUES), np.std(VALUES, ddof=1)))
    assert sample_std(iter([1.0, 2.0])) == pytest.approx(math.sqrt(0.5))


def test_one_chip_has_no_sample_std_and_equal_values_have_none_to_spread():
    assert math.isnan(sample_std([3.0])) and math.isnan(sample_std([]))
    mean, std = mean_std([3.0])
    assert mean == 3.0 and math.isnan(std)
    assert mean_std([math.inf, math.inf]) == (math.inf, 0.0)  # exact match on every chip
    assert sample_std([2.5, 2.5, 2.5]) == 0.0
    assert json_number(math.nan) is None and json_number(math.inf) is None
    assert json_number(0.25) == 0.25
    assert std_text(math.nan) == "n/a" and std_text(None) == "n/a"
    assert std_text(0.123456) == "0.1235" and std_text(1.0, 2) == "1.00"
    assert spread_label(5) == "sample std over 5 chips"
    assert spread_label(1) == "1 chip, no sample std"


def test_eval_reports_give_the_sample_std_over_chips():
    report = EvalReport(tokens=10, fp=30.0, chips=dict(enumerate(VALUES)))
    assert report.mean == pytest.approx(np.mean(VALUES))
    assert report.std == pytest.approx(np.std(VALUES, ddof=1))
    assert math.isnan(EvalReport(tokens=10, fp=30.0, chips={0: 41.0}).std)

    errors = [0.1, 0.12, 0.09]
    encoder = EmbeddingReport(windows=4, chips={seed: EmbeddingError(error, 0.99)
                                                for seed, error in enumerate(errors)})
    assert encoder.std == pytest.approx(np.std(errors, ddof=1))

    tensors = TensorEvalReport(samples=8, outputs=["y"], fp_accuracy=0.5, chips={
        seed: ChipScores({"y": OutputError(error, -20 * math.log10(error), 0.9)}, accuracy)
        for seed, (error, accuracy) in enumerate(zip(errors, [0.5, 0.25, 0.5], strict=True))})
    assert tensors.spread("y", "relative_error") == pytest.approx(
        (np.mean(errors), np.std(errors, ddof=1)))
    assert tensors.accuracy_spread()[1] == pytest.approx(np.std([0.5, 0.25, 0.5], ddof=1))
    written = json.loads(json.dumps(tensors.to_json()))
    assert written["std"]["outputs"]["y"]["relative_error"] == pytest.approx(
        np.std(errors, ddof=1))
    one = TensorEvalReport(samples=8, outputs=["y"], chips={0: tensors.chips[0]})
    assert json.loads(json.dumps(one.to_json()))["std"]["outputs"]["y"]["relative_error"] is None


def test_drift_summary_gives_the_sample_std_and_null_for_one_chip():
    times = [0.0, 3600.0]
    values = {(seed, t): 10.0 + seed + t / 3600 * seed ** 2 for seed in range(3) for t in times}
    report = DriftReport("perplexity", NoiseConfig(model="pcm-drift"), 0.0, times, [0, 1, 2],
                         9.0, values)
    for row in report.summary():
        chips = [values[(seed, row["time_s"])] for seed in range(3)]
        assert row["std"] == pytest.approx(np.std(chips, ddof=1))
        assert row["chips"] == 3
        DriftPoint.model_validate(row)
    single = DriftReport("perplexity", NoiseConfig(model="pcm-drift"), 0.0, times, [0], 9.0,
                         {point: value for point, value in values.items() if point[0] == 0})
    rows = json.loads(json.dumps(single.to_json()))["summary"]
    assert [row["std"] for row in rows] == [None, None]  # valid JSON: no NaN
    assert DriftPoint.model_validate(rows[0]).std is None

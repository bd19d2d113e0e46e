"""Scores against the truth and against persistence, and of the intervals, per horizon, on tiny frames with hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bts.model.evaluation import dvc_metrics, evaluate, interval_metrics, regression_metrics, residual_histogram, score, scores_by, worst


def test_regression_metrics_known_values():
    metrics = regression_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 6.0]))
    # errors 0, 0, 0, 2: rmse sqrt(4 / 4), mae 2 / 4, r2 1 - 4 / 5, mape mean(0, 0, 0, 2 / 4) in percent
    assert metrics == pytest.approx({"rmse": 1.0, "mae": 0.5, "r2": 0.2, "mape": 12.5})


def test_regression_metrics_take_lists_and_series():
    assert regression_metrics([3, -1], pd.Series([0, 3])) == pytest.approx({"rmse": 3.5355339, "mae": 3.5, "r2": -2.125, "mape": 250.0})


def test_r2_is_nan_when_the_target_is_constant():
    metrics = regression_metrics(np.array([2.0, 2.0]), np.array([1.0, 3.0]))
    assert math.isnan(metrics["r2"])
    assert metrics["rmse"] == 1.0 and metrics["mae"] == 1.0 and metrics["mape"] == 50.0


def test_mape_is_absent_when_every_target_is_zero():
    metrics = regression_metrics(np.array([0.0, 0.0]), np.array([1.0, 3.0]))
    assert set(metrics) == {"rmse", "mae", "r2"}
    assert metrics["rmse"] == pytest.approx(math.sqrt(5)) and metrics["mae"] == 2.0


def test_mape_is_over_the_non_zero_targets_only():
    metrics = regression_metrics(np.array([0.0, 2.0, 4.0]), np.array([1.0, 3.0, 2.0]))
    assert metrics["mape"] == pytest.approx(50.0)  # (1/2 + 2/4) / 2; the zero target's error counts elsewhere only
    assert metrics["mae"] == pytest.approx(4 / 3)


def frame_of(target, lag_1, split="test", parameter_id=122, station_id=1161114004, predicted=None, half_width=1.0) -> pd.DataFrame:
    """Examples of horizon 1: target_h1, lag_1 and keys, with the model's forecast_h1 (predicted, default the target)
    and an interval of half_width around it."""
    n = len(target)
    predicted = np.asarray(target if predicted is None else predicted, dtype=float)
    return pd.DataFrame(
        {
            "target_h1": np.asarray(target, dtype=float),
            "lag_1": np.asarray(lag_1, dtype=float),
            "split": [split] * n if isinstance(split, str) else split,
            "parameter_id": [parameter_id] * n if isinstance(parameter_id, int) else parameter_id,
            "station_id": [station_id] * n if isinstance(station_id, int) else station_id,
            "forecast_h1": predicted,
            "lower_h1": predicted - half_width,
            "upper_h1": predicted + half_width,
        }
    )


def h1(frame: pd.DataFrame) -> dict:
    return score(frame, [1], 0.9)["h1"]


def test_score_holds_model_persistence_skill_and_interval_scores():
    # persistence is off by 1 everywhere, the model by 0.5
    frame = frame_of(target=[1.0, 2.0, 3.0, 4.0], lag_1=[0.0, 1.0, 2.0, 3.0], predicted=[1.5, 2.5, 3.5, 4.5])
    scores = score(frame, [1], 0.9)
    assert scores["rows"] == 4 and list(scores) == ["rows", "h1"]
    h = scores["h1"]
    assert h["rmse"] == 0.5 and h["persistence_rmse"] == 1.0
    assert h["mae"] == 0.5 and h["persistence_mae"] == 1.0
    assert h["skill"] == 0.5  # 1 - 0.5 / 1
    assert h["coverage"] == 1.0 and h["mean_width"] == 2.0 and h["winkler"] == 2.0  # every reading inside: the width alone
    assert set(h) == {
        *("rmse", "mae", "r2", "mape"),
        *("persistence_rmse", "persistence_mae", "persistence_r2", "persistence_mape"),
        "skill",
        *("coverage", "mean_width", "winkler"),
    }


def test_interval_metrics_count_readings_inside_and_penalize_misses_by_their_distance():
    # intervals [0, 2] around 1; readings at 1 (inside), 2 (on the bound: inside), 3 (1 above) and -1 (1 below)
    metrics = interval_metrics(np.array([1.0, 2.0, 3.0, -1.0]), np.zeros(4), np.full(4, 2.0), coverage=0.9)
    assert metrics["coverage"] == 0.5 and metrics["mean_width"] == 2.0
    assert metrics["winkler"] == pytest.approx(2.0 + (2 / 0.1) * (0 + 0 + 1 + 1) / 4)  # width + 2/alpha * distance, averaged


def test_each_horizon_is_scored_against_its_own_target():
    frame = frame_of(target=[1.0, 2.0], lag_1=[0.0, 1.0]).assign(
        target_h5=[5.0, 6.0], forecast_h5=[4.0, 7.0], lower_h5=[3.0, 6.5], upper_h5=[4.5, 8.0]
    )
    scores = score(frame, [1, 5], 0.8)
    assert list(scores) == ["rows", "h1", "h5"]
    assert scores["h1"]["rmse"] == 0.0 and scores["h5"]["rmse"] == 1.0
    assert scores["h5"]["persistence_rmse"] == 5.0 and scores["h5"]["skill"] == 0.8
    assert scores["h5"]["coverage"] == 0.0  # 5 lies above [3, 4.5], 6 below [6.5, 8]
    assert scores["h5"]["mean_width"] == 1.5


def test_score_skill_is_negative_when_the_model_is_worse_than_persistence():
    frame = frame_of(target=[1.0, 2.0], lag_1=[0.0, 1.0], predicted=[3.0, 4.0])
    assert h1(frame)["skill"] == -1.0  # rmse 2 vs 1


def test_score_rounds_to_six_decimals():
    frame = frame_of(target=[3.0, 3.0, 3.0], lag_1=[0.0, 0.0, 0.0], predicted=[3.0, 3.0, 4.0])
    scores = h1(frame)
    assert scores["rmse"] == 0.57735  # sqrt(1/3) = 0.5773502...
    assert scores["skill"] == 0.807550  # 1 - 0.5773502 / 3


def test_skill_is_nan_when_persistence_is_perfect():
    frame = frame_of(target=[1.0, 2.0, 3.0], lag_1=[1.0, 2.0, 3.0], predicted=[1.0, 2.0, 4.0])
    scores = h1(frame)
    assert scores["persistence_rmse"] == 0.0
    assert math.isnan(scores["skill"])


def test_evaluate_reports_present_splits_only_with_per_parameter_scores():
    frame = frame_of(
        target=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        lag_1=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        split=["train", "train", "test", "test", "test", "test"],
        parameter_id=[122, 122, 122, 122, 111, 111],
        predicted=[1.0, 2.0, 3.5, 4.5, 5.0, 6.0],
    )
    frame.index = [10, 11, 12, 13, 14, 15]
    report = evaluate(frame, ["train", "valid", "test"], [1], 0.9)
    assert list(report) == ["train", "train_by_parameter", "train_by_station", "test", "test_by_parameter", "test_by_station"]
    assert report["train"]["h1"]["rmse"] == 0.0 and report["train"]["h1"]["skill"] == 1.0
    assert report["test"]["h1"]["rmse"] == pytest.approx(math.sqrt(0.5 / 4), abs=1e-6)
    assert list(report["test_by_parameter"]) == ["111", "122"]
    assert report["test_by_parameter"]["111"]["h1"]["rmse"] == 0.0
    assert report["test_by_parameter"]["122"]["h1"]["rmse"] == 0.5
    assert report["test_by_parameter"]["122"] == score(frame.loc[[12, 13]], [1], 0.9)


def two_stations() -> pd.DataFrame:
    """Persistence off by 1 everywhere; the model off by 0.5 on station 11 and by 2 on station 23, on valid and test alike."""
    target = np.arange(1.0, 9.0)
    station = np.array([23, 11, 11, 23, 11, 23, 11, 23])
    return frame_of(
        target=target,
        lag_1=target - 1,
        split=["valid", "valid", "valid", "valid", "test", "test", "test", "test"],
        station_id=list(station),
        predicted=target + np.where(station == 11, 0.5, 2.0),
    )


def test_evaluate_scores_each_station_of_each_split():
    frame = two_stations()
    report = evaluate(frame, ["valid", "test"], [1], 0.9)
    for split in ["valid", "test"]:
        assert list(report[f"{split}_by_station"]) == ["11", "23"]  # in order of the id, as strings (JSON keys)
        assert report[f"{split}_by_station"]["11"]["h1"]["skill"] == 0.5  # 1 - 0.5 / 1
        assert report[f"{split}_by_station"]["23"]["h1"]["skill"] == -1.0  # 1 - 2 / 1
        assert report[f"{split}_by_station"]["23"]["h1"]["persistence_rmse"] == 1.0
        part = frame[frame["split"] == split]
        assert report[f"{split}_by_station"]["23"] == score(part[part["station_id"] == 23], [1], 0.9)


def test_the_worst_station_skill_shows_what_the_pooled_skill_hides():
    frame = two_stations()
    report = evaluate(frame, ["test"], [1], 0.9)
    assert report["test"]["h1"]["worst_station_skill"] == -1.0
    assert report["test"]["h1"]["skill"] > report["test"]["h1"]["worst_station_skill"]
    assert set(report["test"]["h1"]) == {*score(frame, [1], 0.9)["h1"], "worst_station_skill"}


def test_holdout_stations_are_scored_apart():
    frame = frame_of(
        target=[1.0, 2.0, 3.0],
        lag_1=[0.0, 1.0, 2.0],
        split=["test", "holdout", "holdout"],
        station_id=[11, 42, 42],
        predicted=[1.0, 2.5, 3.5],
    )
    report = evaluate(frame, ["test", "holdout"], [1], 0.9)
    assert list(report["holdout_by_station"]) == ["42"] and list(report["test_by_station"]) == ["11"]
    assert report["holdout"]["h1"]["worst_station_skill"] == report["holdout_by_station"]["42"]["h1"]["skill"] == 0.5


def test_worst_is_the_lowest_defined_skill_of_the_horizon():
    by_station = {"11": {"h1": {"skill": 0.3}}, "23": {"h1": {"skill": float("nan")}}, "42": {"h1": {"skill": -0.1}}}
    assert worst(by_station, 1) == ("42", -0.1)
    station, skill = worst({"11": {"h1": {"skill": float("nan")}}}, 1)
    assert station is None and math.isnan(skill)
    assert worst({}, 1)[0] is None


def test_worst_station_skill_is_nan_when_persistence_is_perfect_everywhere():
    frame = frame_of(target=[1.0, 2.0], lag_1=[1.0, 2.0], station_id=[11, 23], predicted=[1.5, 2.0])
    report = evaluate(frame, ["test"], [1], 0.9)
    assert math.isnan(report["test"]["h1"]["worst_station_skill"])


def test_scores_by_groups_rows_by_a_key_in_order():
    frame = two_stations()
    frame.index = frame.index + 100
    grouped = scores_by(frame, "station_id", [1], 0.9)
    assert list(grouped) == ["11", "23"]
    assert grouped["11"]["h1"]["rmse"] == 0.5 and grouped["23"]["h1"]["rmse"] == 2.0


def test_dvc_metrics_hold_each_split_and_its_stations_rows_and_main_scores_per_horizon():
    frame = two_stations()
    report = evaluate(frame, ["valid", "test", "holdout"], [1], 0.9)
    metrics = dvc_metrics(report, ["valid", "test", "holdout"])
    assert list(metrics) == ["valid", "test", "valid_by_station", "test_by_station"]  # no holdout examples: no holdout entries
    assert metrics["test"] == report["test"]
    assert metrics["test_by_station"] == {
        station: {"rows": 2, "h1": {key: scores["h1"][key] for key in ("rmse", "persistence_rmse", "skill", "coverage")}}
        for station, scores in report["test_by_station"].items()
    }


def test_evaluate_with_no_requested_split_present_is_empty():
    frame = frame_of(target=[1.0, 2.0], lag_1=[1.0, 1.0], split="train")
    assert evaluate(frame, ["valid", "test"], [1], 0.9) == {}


def test_residual_histogram_has_symmetric_bins_and_counts_every_residual():
    residuals = np.array([-3.0, -1.0, 0.0, 0.5, 2.0, 10.0])  # 10 lies beyond the 99% quantile: clipped into the last bin
    histogram = residual_histogram(residuals, bins=5)
    assert list(histogram.columns) == ["residual", "count"]
    assert len(histogram) == 5
    centers = histogram["residual"].to_numpy()
    np.testing.assert_array_equal(centers, -centers[::-1])
    assert (np.diff(centers) > 0).all()
    assert histogram["count"].sum() == len(residuals)
    assert histogram["count"].iloc[-1] == 1  # the clipped outlier


def test_residual_histogram_default_bins_and_all_zero_residuals():
    histogram = residual_histogram(np.zeros(4))
    assert len(histogram) == 41
    assert histogram["residual"].iloc[-1] == -histogram["residual"].iloc[0] == 0.9756  # 41 bins over (-1, 1), not a zero-width range
    assert histogram["count"].sum() == 4
    assert histogram.loc[histogram["residual"] == 0, "count"].tolist() == [4]  # odd bins: zero is a bin center

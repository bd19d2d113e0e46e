"""The forecasters: every model kind forecasts the change over persistence (in the sensor's unit or the series' step scale),
deterministically, shrinks toward persistence where out-of-fold forecasts do not hold up, and survives skops; the
multi-horizon forecaster fits one per horizon and puts a split-conformal interval around each forecast."""

from __future__ import annotations

import io
import re
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
import skops.io
from skops.io.exceptions import UntrustedTypesFoundException
from threadpoolctl import threadpool_limits

from bts.data import features as featurize
from bts.model import forecasters
from bts.model.forecasters import (
    MultiHorizonForecaster,
    PersistenceResidualRegressor,
    build_estimator,
    build_model,
    feature_matrix,
    interval_scale,
    relative_lags,
    scaled_lags,
    skops_trusted_types,
    step_scale,
)
from bts.params import MODEL_KINDS, TARGETS, TrainParams, load_params
from tests.conftest import PROJECT

FEATURES = [
    *[f"lag_{k}" for k in range(1, 7)],
    *[f"gap_{k}_seconds" for k in range(1, 6)],
    "step_scale",
    "offset_in_steps",
    "range_position",
]
ROWS = 120


def train_params(kind: str, **updates) -> TrainParams:
    return load_params(PROJECT / "params.yaml").train.model_copy(update={"model": kind, **updates})


def feature_frame(rows: int = ROWS, seed: int = 0) -> pd.DataFrame:
    """Series-like lags around 20 (lag_1 latest), gaps in seconds, and the recent window's scale, offset and position."""
    rng = np.random.default_rng(seed)
    walk = 20 + np.cumsum(rng.choice([-0.5, 0.0, 0.5], size=rows + 6))
    lags = {f"lag_{k}": walk[6 - k + 1 : 6 - k + 1 + rows] for k in range(1, 7)}
    gaps = {f"gap_{k}_seconds": rng.integers(0, 600, rows).astype(float) for k in range(1, 6)}
    window = {
        "step_scale": rng.uniform(0.3, 0.6, rows),
        "offset_in_steps": rng.normal(0, 2, rows),
        "range_position": rng.uniform(0, 1, rows),
    }
    return pd.DataFrame({**lags, **gaps, **window})[FEATURES]


def momentum_target(frame: pd.DataFrame) -> pd.Series:
    return frame["lag_1"] + 0.5 * (frame["lag_1"] - frame["lag_2"])


@pytest.fixture(scope="module", autouse=True)
def one_openmp_thread():
    """hist_gradient_boosting on 120 rows: OpenMP threads only cost time here, and much more on a busy machine."""
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return feature_frame()


@pytest.fixture(scope="module", params=MODEL_KINDS)
def fitted(request, frame) -> PersistenceResidualRegressor:
    return build_estimator(train_params(request.param)).fit(frame, momentum_target(frame))


def test_the_synthetic_frame_has_the_feature_columns(frame):
    assert list(frame.columns) == FEATURES
    assert (frame["lag_2"] - frame["lag_1"]).abs().max() <= 0.5  # neighbouring readings of one walk


def test_the_scale_column_is_the_one_featurize_writes():
    assert forecasters.SCALE_COLUMN == featurize.SCALE_COLUMN


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize(("target", "scale_column"), [("change", None), ("scaled_change", "step_scale")])
def test_build_model_gives_an_unfitted_persistence_residual_regressor(kind, target, scale_column):
    model = build_estimator(train_params(kind, target=target))
    assert isinstance(model, PersistenceResidualRegressor)
    assert not hasattr(model, "estimator_")
    assert model.scale_column == scale_column


def test_the_project_default_forecasts_the_scaled_change():
    assert load_params(PROJECT / "params.yaml").train.target == "scaled_change"
    assert TARGETS == ("change", "scaled_change")


def test_predictions_are_lag_1_plus_the_predicted_change_in_step_scale_units(fitted, frame):
    predicted = fitted.predict(frame)
    change = fitted.estimator_.predict(scaled_lags(frame.to_numpy(), FEATURES)) * frame["step_scale"].to_numpy()
    np.testing.assert_allclose(predicted, frame["lag_1"].to_numpy() + change, rtol=0, atol=1e-12)
    assert np.abs(change).max() > 0  # the model learned some change, so the sum is not trivially lag_1
    assert fitted.shrinkage_ == 1.0  # no folds, no shrinkage


def test_the_estimator_is_fitted_on_the_change_over_persistence(fitted, frame):
    """Each model fits the momentum target better than persistence does."""
    target = momentum_target(frame).to_numpy()
    model_rmse = np.sqrt(np.mean((fitted.predict(frame) - target) ** 2))
    persistence_rmse = np.sqrt(np.mean((frame["lag_1"].to_numpy() - target) ** 2))
    assert model_rmse < persistence_rmse
    assert list(fitted.feature_names_in_) == FEATURES


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("offset", [0.0, 2.5])
def test_a_target_of_lag_1_plus_a_constant_is_forecast_as_such(kind, offset, frame):
    """A target equal to lag_1 (offset 0) is persistence: the model predicts lag_1, whatever its scale."""
    model = build_estimator(train_params(kind, target="change")).fit(frame, frame["lag_1"] + offset)
    np.testing.assert_allclose(model.predict(frame), frame["lag_1"].to_numpy() + offset, rtol=0, atol=1e-6)
    shifted = frame.assign(**{f"lag_{k}": frame[f"lag_{k}"] + 1000 for k in range(1, 7)})  # another sensor's scale
    np.testing.assert_allclose(model.predict(shifted), shifted["lag_1"].to_numpy() + offset, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("steps", [0.0, 1.5])
def test_a_target_of_lag_1_plus_steps_of_its_scale_is_forecast_as_such(kind, steps, frame):
    """A change of a fixed number of steps (0: persistence) is learnt as such in the scaled_change target."""
    model = build_estimator(train_params(kind)).fit(frame, frame["lag_1"] + steps * frame["step_scale"])
    np.testing.assert_allclose(model.predict(frame), frame["lag_1"] + steps * frame["step_scale"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_a_station_in_another_unit_and_level_gets_the_same_forecast_in_its_own(kind, frame):
    """Learnt at one scale, the scaled model forecasts a series 10 times larger at level + 200 as 10 x forecast + 200."""
    model = build_estimator(train_params(kind)).fit(frame, momentum_target(frame))
    other = frame.assign(**{f"lag_{k}": 10 * frame[f"lag_{k}"] + 200 for k in range(1, 7)}, step_scale=10 * frame["step_scale"])
    np.testing.assert_allclose(model.predict(other), 10 * model.predict(frame) + 200, rtol=0, atol=1e-8)


def test_the_unscaled_change_does_not_carry_over_to_larger_steps(frame):
    """Why the scaled target exists: a tree learnt on steps of 0.5 cannot forecast changes of 5."""
    model = build_estimator(train_params("hist_gradient_boosting", target="change")).fit(frame, momentum_target(frame))
    other = frame.assign(**{f"lag_{k}": 10 * frame[f"lag_{k}"] for k in range(1, 7)}, step_scale=10 * frame["step_scale"])
    change = model.predict(other) - other["lag_1"].to_numpy()
    assert np.abs(change).max() < np.abs(momentum_target(other) - other["lag_1"]).max() / 2


def test_rows_without_a_seen_change_are_forecast_as_persistence(frame):
    flat = frame.assign(step_scale=np.where(np.arange(len(frame)) % 3 == 0, 0.0, frame["step_scale"]))
    target = momentum_target(flat) + np.where(flat["step_scale"] == 0, 1e6, 0.0)  # wild targets on those rows: not fitted
    model = build_estimator(train_params("ridge")).fit(flat, target)
    predicted = model.predict(flat)
    still = flat["step_scale"].to_numpy() == 0
    np.testing.assert_array_equal(predicted[still], flat["lag_1"].to_numpy()[still])
    assert np.abs(predicted[~still] - flat["lag_1"].to_numpy()[~still]).max() < 5  # the 1e6 rows did not pull the fit


def test_step_scale_comes_from_the_column_or_else_from_the_lags():
    features = pd.DataFrame({"lag_1": [10.0, 5.0, 7.0], "lag_2": [12.0, 5.0, 7.0], "lag_3": [11.0, 5.0, 7.0]})
    # |10-12|, |12-11|; flat lags: no change seen
    np.testing.assert_array_equal(step_scale(features.to_numpy(), features.columns), [1.5, 0.0, 0.0])
    scaled = features.assign(step_scale=[2.0, -1.0, np.nan])
    np.testing.assert_array_equal(step_scale(scaled.to_numpy(), scaled.columns), [2.0, 0.0, 0.0])


def test_scaled_lags_are_differences_from_lag_1_in_steps_without_the_sensor_unit_columns():
    features = pd.DataFrame(
        {"lag_1": [10.0, 20.0], "lag_2": [9.0, 21.5], "lag_3": [7.0, 20.0], "gap_1_seconds": [5.0, 6.0], "step_scale": [0.5, 0.0]}
    )
    original = features.copy()
    expected = pd.DataFrame({"lag_2": [-2.0, 0.0], "lag_3": [-6.0, 0.0], "gap_1_seconds": [5.0, 6.0]})  # scale 0: no steps
    np.testing.assert_array_equal(scaled_lags(features.to_numpy(), features.columns), expected.to_numpy())
    pd.testing.assert_frame_equal(features, original)  # the input is not modified


def test_shrinkage_pulls_a_change_that_does_not_hold_out_of_fold_to_persistence(frame):
    """Noise the lags cannot explain: each fold's forecast fails on the others, so the shrunk model is close to persistence."""
    noise = pd.Series(np.random.default_rng(5).normal(0, 1, len(frame)))
    plain = build_estimator(train_params("hist_gradient_boosting")).fit(frame, frame["lag_1"] + noise)
    shrunk = build_estimator(train_params("hist_gradient_boosting", shrinkage_folds=4)).fit(frame, frame["lag_1"] + noise)
    assert 0 <= shrunk.shrinkage_ < 0.3
    persistence = frame["lag_1"].to_numpy()
    assert np.abs(shrunk.predict(frame) - persistence).mean() < 0.3 * np.abs(plain.predict(frame) - persistence).mean()


def test_shrinkage_keeps_a_change_that_holds_out_of_fold(frame):
    model = build_estimator(train_params("ridge", shrinkage_folds=4)).fit(frame, momentum_target(frame))
    assert 0.8 < model.shrinkage_ <= 1.0
    unshrunk = build_estimator(train_params("ridge")).fit(frame, momentum_target(frame))
    np.testing.assert_allclose(model.predict(frame) - frame["lag_1"], model.shrinkage_ * (unshrunk.predict(frame) - frame["lag_1"]))


def test_relative_lags_subtracts_lag_1_from_the_older_lags():
    features = pd.DataFrame({"lag_1": [10.0, 20.0], "lag_2": [9.0, 21.5], "lag_3": [7.0, 20.0], "gap_1_seconds": [5.0, 6.0]})
    original = features.copy()
    relative = relative_lags(features.to_numpy(), features.columns)
    expected = pd.DataFrame({"lag_1": [10.0, 20.0], "lag_2": [-1.0, 1.5], "lag_3": [-3.0, 0.0], "gap_1_seconds": [5.0, 6.0]})
    np.testing.assert_array_equal(relative, expected.to_numpy())
    pd.testing.assert_frame_equal(features, original)  # the input is not modified


def dumped(model: PersistenceResidualRegressor) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_same_seed_gives_the_same_model_bytes(kind, frame):
    target = momentum_target(frame)
    first = dumped(build_estimator(train_params(kind)).fit(frame, target))
    second = dumped(build_estimator(train_params(kind)).fit(frame, target))
    assert first == second


def test_skops_round_trip_predicts_the_same(fitted, frame):
    data = skops.io.dumps(fitted)
    loaded = skops.io.loads(data, trusted=skops_trusted_types(fitted))
    assert type(loaded) is PersistenceResidualRegressor
    np.testing.assert_array_equal(loaded.predict(frame), fitted.predict(frame))


def test_skops_trusted_types_are_only_this_package_and_scikit_learn(fitted):
    trusted = skops_trusted_types(fitted)
    assert "bts.model.forecasters.PersistenceResidualRegressor" in trusted
    assert [name for name in trusted if not name.startswith(("bts.", "sklearn."))] == []


def test_skops_round_trip_of_the_unscaled_model_predicts_the_same(frame):
    model = build_estimator(train_params("ridge", target="change", shrinkage_folds=3)).fit(frame, momentum_target(frame))
    loaded = skops.io.loads(skops.io.dumps(model), trusted=skops_trusted_types(model))
    np.testing.assert_array_equal(loaded.predict(frame), model.predict(frame))


def test_skops_refuses_to_load_the_model_without_trusted_types(fitted):
    data = skops.io.dumps(fitted)
    with pytest.raises(UntrustedTypesFoundException, match=re.escape("bts.model.forecasters.PersistenceResidualRegressor")):
        skops.io.loads(data, trusted=[])


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["missing", "infinite"])
def test_a_missing_or_infinite_feature_is_refused_not_forecast(fitted, frame, value):
    rows = frame.head(3).copy()
    rows.loc[rows.index[1], "lag_2"] = value
    with pytest.raises(ValueError, match=r"NaN|infinity"):
        fitted.predict(rows)


# -- several horizons, with intervals -----------------------------------------------------------------------------------


def noisy_targets(frame: pd.DataFrame, horizons: list[int], seed: int) -> np.ndarray:
    """Per horizon h: lag_1 plus noise of spread sqrt(h) step scales: a series' error grows with how far ahead it looks."""
    rng = np.random.default_rng(seed)
    scale = frame["step_scale"].to_numpy()
    return np.column_stack([frame["lag_1"].to_numpy() + rng.normal(0, 1, len(frame)) * scale * np.sqrt(h) for h in horizons])


def wide_frame(rows: int, seed: int) -> pd.DataFrame:
    """feature_frame with step scales spread over two orders of magnitude (quiet and busy series side by side)."""
    frame = feature_frame(rows, seed)
    return frame.assign(step_scale=np.random.default_rng(seed + 1).uniform(0.05, 5.0, rows))


def calibrated(horizons: list[int], coverage: float = 0.9, kind: str = "ridge") -> MultiHorizonForecaster:
    fit_rows, calibration_rows = wide_frame(400, 1), wide_frame(2000, 2)
    model = build_model(train_params(kind, interval_coverage=coverage), horizons)
    return model.fit(fit_rows, noisy_targets(fit_rows, horizons, 1)).calibrate(
        calibration_rows, noisy_targets(calibration_rows, horizons, 2)
    )


def test_the_forecast_has_a_value_and_bounds_per_horizon_in_one_frame():
    model = calibrated([1, 5, 15])
    rows = wide_frame(50, 3).set_axis(range(100, 150))
    forecast = model.predict(rows)
    expected = [f"{kind}_h{h}" for h in (1, 5, 15) for kind in ("forecast", "lower", "upper")]
    assert list(forecast.columns) == expected and list(forecast.index) == list(rows.index)
    for h in (1, 5, 15):
        assert (forecast[f"lower_h{h}"] <= forecast[f"forecast_h{h}"]).all()
        assert (forecast[f"forecast_h{h}"] <= forecast[f"upper_h{h}"]).all()


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_each_horizon_is_forecast_by_the_estimator_fitted_on_its_own_target(kind, frame):
    """The horizons share one check of the rows and one build of their scaled features: the numbers are each model's own."""
    targets = noisy_targets(frame, [1, 4], 5)
    model = build_model(train_params(kind), [1, 4]).fit(frame, targets)
    for i in range(2):
        alone = build_estimator(train_params(kind)).fit(frame, targets[:, i])
        np.testing.assert_array_equal(model.forecasts(feature_matrix(frame, FEATURES))[:, i], alone.predict(frame))


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_a_checked_matrix_is_forecast_as_the_frame_is_whatever_the_frame_column_order(kind):
    """predict_matrix (what bts serve gives a checked request) and predict (what MLflow gives a frame) agree to the bit;
    a frame is read by its column names, and scikit-learn sees arrays alone (no warning about feature names)."""
    model = calibrated([1, 5], kind=kind)
    rows = wide_frame(30, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        forecast = model.predict(rows[FEATURES[::-1]])
        np.testing.assert_array_equal(model.predict_matrix(rows.to_numpy()), forecast.to_numpy())
    with pytest.raises(ValueError, match=r"lack the column.*step_scale"):
        model.predict(rows.drop(columns="step_scale"))


@pytest.mark.parametrize("coverage", [0.8, 0.9])
def test_the_intervals_hold_the_coverage_on_examples_neither_fitted_nor_calibrated_on(coverage):
    horizons = [1, 5, 15]
    model = calibrated(horizons, coverage)
    fresh = wide_frame(4000, 9)
    actual = noisy_targets(fresh, horizons, 9)
    forecast = model.predict(fresh)
    for i, h in enumerate(horizons):
        inside = (forecast[f"lower_h{h}"] <= actual[:, i]) & (actual[:, i] <= forecast[f"upper_h{h}"])
        assert abs(inside.mean() - coverage) < 0.03, (h, inside.mean())


def test_the_interval_scale_is_the_step_scale_plus_the_recent_drift_per_step():
    rows = pd.DataFrame({"lag_1": [10.0, 10.0, 5.0], "lag_2": [9.0, 10.0, 5.0], "lag_3": [7.0, 10.0, 5.0], "step_scale": [1.5, 0.5, 0.0]})
    np.testing.assert_allclose(interval_scale(rows.to_numpy(), rows.columns), [1.5 + 3.0 / 2, 0.5, 0.0])  # 0: a series that did not move


def test_the_interval_width_follows_the_series_scale_and_grows_with_the_horizon():
    """A quiet series gets a narrow interval, a busy one a wide one: the width is a fixed multiple of its scale."""
    model = calibrated([1, 5, 15])
    rows = wide_frame(200, 4)
    forecast = model.predict(rows)
    widths = {h: (forecast[f"upper_h{h}"] - forecast[f"lower_h{h}"]).to_numpy() for h in (1, 5, 15)}
    for h, width in widths.items():
        np.testing.assert_allclose(width / interval_scale(rows.to_numpy(), rows.columns), 2 * model.radius_[[1, 5, 15].index(h)])
    assert model.radius_[0] < model.radius_[1] < model.radius_[2]
    assert (widths[1] < widths[5]).all() and (widths[5] < widths[15]).all()


def test_rows_of_a_series_that_did_not_move_get_the_interval_of_such_rows_in_the_sensor_unit():
    fit_rows = wide_frame(400, 1)
    calibration_rows = wide_frame(600, 2)
    still = calibration_rows.index[:300]
    calibration_rows.loc[still, "step_scale"] = 0.0
    calibration_rows.loc[still, [f"lag_{k}" for k in range(2, 7)]] = calibration_rows.loc[still, ["lag_1"] * 5].to_numpy()
    targets = noisy_targets(calibration_rows.assign(step_scale=0.7), [1], 2)  # still rows still move a little
    model = build_model(train_params("ridge"), [1]).fit(fit_rows, noisy_targets(fit_rows, [1], 1)).calibrate(calibration_rows, targets)
    forecast = model.predict(calibration_rows.head(5))
    np.testing.assert_allclose(forecast["upper_h1"] - forecast["forecast_h1"], model.quiet_radius_[0])
    assert np.all(np.isfinite(model.quiet_radius_)) and model.quiet_radius_[0] > 0


def test_too_few_still_rows_take_the_quantile_of_every_calibration_error():
    fit_rows, calibration_rows = wide_frame(400, 1), wide_frame(600, 2)
    still = calibration_rows.index[:3]  # 3 rows cannot reach 90%
    calibration_rows.loc[still, "step_scale"] = 0.0
    calibration_rows.loc[still, [f"lag_{k}" for k in range(2, 7)]] = calibration_rows.loc[still, ["lag_1"] * 5].to_numpy()
    model = build_model(train_params("ridge"), [1]).fit(fit_rows, noisy_targets(fit_rows, [1], 1))
    model.calibrate(calibration_rows, noisy_targets(calibration_rows.assign(step_scale=1.0), [1], 2))
    forecasts = model.forecasts(feature_matrix(calibration_rows, FEATURES))
    errors = np.abs(noisy_targets(calibration_rows.assign(step_scale=1.0), [1], 2)[:, 0] - forecasts[:, 0])
    rank = int(np.ceil(0.9 * (len(errors) + 1)))  # split conformal's finite-sample quantile
    assert model.quiet_radius_[0] == pytest.approx(np.sort(errors)[rank - 1])


def test_too_few_calibration_examples_for_the_coverage_is_an_error_naming_the_horizon():
    fit_rows, few = wide_frame(400, 1), wide_frame(5, 2)
    model = build_model(train_params("ridge", interval_coverage=0.9), [1, 5]).fit(fit_rows, noisy_targets(fit_rows, [1, 5], 1))
    with pytest.raises(
        ValueError, match=r"^5 calibration example\(s\) are too few for an interval of coverage 0.9 at horizon 1: it needs at least 10$"
    ):
        model.calibrate(few, noisy_targets(few, [1, 5], 2))


def test_a_forecaster_without_intervals_refuses_to_predict(frame):
    model = build_model(train_params("ridge"), [1]).fit(frame, noisy_targets(frame, [1], 0))
    with pytest.raises(ValueError, match="calibrate it"):
        model.predict(frame)


def test_targets_of_the_wrong_shape_are_refused(frame):
    with pytest.raises(ValueError, match=r"expected targets of shape \(120, 2\) \(one column per horizon\), got \(120, 1\)"):
        build_model(train_params("ridge"), [1, 5]).fit(frame, noisy_targets(frame, [1], 0))


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_the_calibrated_forecaster_survives_skops_and_is_deterministic(kind):
    first, second = calibrated([1, 5], kind=kind), calibrated([1, 5], kind=kind)
    assert dumped(first) == dumped(second)
    loaded = skops.io.loads(skops.io.dumps(first), trusted=skops_trusted_types(first))
    assert "bts.model.forecasters.MultiHorizonForecaster" in skops_trusted_types(first)
    rows = wide_frame(30, 7)
    pd.testing.assert_frame_equal(loaded.predict(rows), first.predict(rows), check_exact=True)


def station_frame(stations: int, rows_each: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """wide_frame rows of several stations, each with errors of its own size: stations are not alike."""
    frame = wide_frame(stations * rows_each, seed)
    station = np.repeat(np.arange(stations), rows_each)
    return frame, station


def test_with_calibration_folds_each_calibration_example_is_scored_by_a_model_that_never_saw_its_station():
    fit_rows, fit_station = station_frame(4, 150, 1)
    calibration_rows, calibration_station = station_frame(4, 300, 2)
    targets = noisy_targets(fit_rows, [1, 5], 1)
    calibration_targets = noisy_targets(calibration_rows, [1, 5], 2)
    model = build_model(train_params("ridge", calibration_folds=2), [1, 5]).fit(fit_rows, targets, fit_station)
    folds = [list(fold) for fold, _ in model._out_of_fold]
    assert folds == [[0, 1], [2, 3]]  # stations cut into 2 folds
    expected = model.forecasts(feature_matrix(calibration_rows, FEATURES))
    for fold in ([0, 1], [2, 3]):  # what calibrate must score each calibration row with
        rest = ~np.isin(fit_station, fold)
        alone = build_model(train_params("ridge"), [1, 5]).fit(fit_rows[rest], targets[rest])
        rows = np.isin(calibration_station, fold)
        expected[rows] = alone.forecasts(feature_matrix(calibration_rows[rows], FEATURES))
    model.calibrate(calibration_rows, calibration_targets, calibration_station)
    scale = interval_scale(calibration_rows.to_numpy(), FEATURES)
    for i in range(2):
        scores = np.sort(np.abs(calibration_targets[:, i] - expected[:, i]) / scale)
        assert model.radius_[i] == pytest.approx(scores[int(np.ceil(0.9 * (len(scores) + 1))) - 1])
    assert model._out_of_fold == []  # dropped: the packaged model carries the fitted horizons only
    assert "_out_of_fold" not in skops_trusted_types(model)


def test_without_stations_or_folds_the_model_itself_scores_the_calibration_examples():
    fit_rows, fit_station = station_frame(3, 150, 1)
    calibration_rows, _ = station_frame(3, 300, 2)
    targets, calibration_targets = noisy_targets(fit_rows, [1], 1), noisy_targets(calibration_rows, [1], 2)
    plain = build_model(train_params("ridge", calibration_folds=0), [1]).fit(fit_rows, targets, fit_station)
    assert plain._out_of_fold == []
    one_station = build_model(train_params("ridge", calibration_folds=2), [1]).fit(fit_rows, targets, np.zeros(len(fit_rows)))
    assert one_station._out_of_fold == []  # a single station cannot be left out
    for model in (plain, one_station):
        model.calibrate(calibration_rows, calibration_targets)
        matrix = feature_matrix(calibration_rows, FEATURES)
        scores = np.sort(np.abs(calibration_targets[:, 0] - model.forecasts(matrix)[:, 0]) / interval_scale(matrix, FEATURES))
        assert model.radius_[0] == pytest.approx(scores[int(np.ceil(0.9 * (len(scores) + 1))) - 1])

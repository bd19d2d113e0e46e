"""The forecasters: every model kind forecasts the change over persistence (in the sensor's unit or the series' step scale),
deterministically, shrinks toward persistence where out-of-fold forecasts do not hold up, and survives skops."""

from __future__ import annotations

import io
import re

import joblib
import numpy as np
import pandas as pd
import pytest
import skops.io
from skops.io.exceptions import UntrustedTypesFoundException
from threadpoolctl import threadpool_limits

from bts.data import features as featurize
from bts.model import forecasters
from bts.model.forecasters import PersistenceResidualRegressor, build_model, relative_lags, scaled_lags, skops_trusted_types, step_scale
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
    return build_model(train_params(request.param)).fit(frame, momentum_target(frame))


def test_the_synthetic_frame_has_the_feature_columns(frame):
    assert list(frame.columns) == FEATURES
    assert (frame["lag_2"] - frame["lag_1"]).abs().max() <= 0.5  # neighbouring readings of one walk


def test_the_scale_column_is_the_one_featurize_writes():
    assert forecasters.SCALE_COLUMN == featurize.SCALE_COLUMN


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize(
    ("target", "first_step", "scale_column"), [("change", "relative_lags", None), ("scaled_change", "scaled_lags", "step_scale")]
)
def test_build_model_gives_an_unfitted_persistence_residual_regressor(kind, target, first_step, scale_column):
    model = build_model(train_params(kind, target=target))
    assert isinstance(model, PersistenceResidualRegressor)
    assert not hasattr(model, "estimator_")
    assert model.estimator.steps[0][0] == first_step
    assert model.scale_column == scale_column


def test_the_project_default_forecasts_the_scaled_change():
    assert load_params(PROJECT / "params.yaml").train.target == "scaled_change"
    assert TARGETS == ("change", "scaled_change")


def test_predictions_are_lag_1_plus_the_predicted_change_in_step_scale_units(fitted, frame):
    predicted = fitted.predict(frame)
    change = fitted.estimator_.predict(frame) * frame["step_scale"].to_numpy()
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
    model = build_model(train_params(kind, target="change")).fit(frame, frame["lag_1"] + offset)
    np.testing.assert_allclose(model.predict(frame), frame["lag_1"].to_numpy() + offset, rtol=0, atol=1e-6)
    shifted = frame.assign(**{f"lag_{k}": frame[f"lag_{k}"] + 1000 for k in range(1, 7)})  # another sensor's scale
    np.testing.assert_allclose(model.predict(shifted), shifted["lag_1"].to_numpy() + offset, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("steps", [0.0, 1.5])
def test_a_target_of_lag_1_plus_steps_of_its_scale_is_forecast_as_such(kind, steps, frame):
    """A change of a fixed number of steps (0: persistence) is learnt as such in the scaled_change target."""
    model = build_model(train_params(kind)).fit(frame, frame["lag_1"] + steps * frame["step_scale"])
    np.testing.assert_allclose(model.predict(frame), frame["lag_1"] + steps * frame["step_scale"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_a_station_in_another_unit_and_level_gets_the_same_forecast_in_its_own(kind, frame):
    """Learnt at one scale, the scaled model forecasts a series 10 times larger at level + 200 as 10 x forecast + 200."""
    model = build_model(train_params(kind)).fit(frame, momentum_target(frame))
    other = frame.assign(**{f"lag_{k}": 10 * frame[f"lag_{k}"] + 200 for k in range(1, 7)}, step_scale=10 * frame["step_scale"])
    np.testing.assert_allclose(model.predict(other), 10 * model.predict(frame) + 200, rtol=0, atol=1e-8)


def test_the_unscaled_change_does_not_carry_over_to_larger_steps(frame):
    """Why the scaled target exists: a tree learnt on steps of 0.5 cannot forecast changes of 5."""
    model = build_model(train_params("hist_gradient_boosting", target="change")).fit(frame, momentum_target(frame))
    other = frame.assign(**{f"lag_{k}": 10 * frame[f"lag_{k}"] for k in range(1, 7)}, step_scale=10 * frame["step_scale"])
    change = model.predict(other) - other["lag_1"].to_numpy()
    assert np.abs(change).max() < np.abs(momentum_target(other) - other["lag_1"]).max() / 2


def test_rows_without_a_seen_change_are_forecast_as_persistence(frame):
    flat = frame.assign(step_scale=np.where(np.arange(len(frame)) % 3 == 0, 0.0, frame["step_scale"]))
    target = momentum_target(flat) + np.where(flat["step_scale"] == 0, 1e6, 0.0)  # wild targets on those rows: not fitted
    model = build_model(train_params("ridge")).fit(flat, target)
    predicted = model.predict(flat)
    still = flat["step_scale"].to_numpy() == 0
    np.testing.assert_array_equal(predicted[still], flat["lag_1"].to_numpy()[still])
    assert np.abs(predicted[~still] - flat["lag_1"].to_numpy()[~still]).max() < 5  # the 1e6 rows did not pull the fit


def test_step_scale_comes_from_the_column_or_else_from_the_lags():
    features = pd.DataFrame({"lag_1": [10.0, 5.0, 7.0], "lag_2": [12.0, 5.0, 7.0], "lag_3": [11.0, 5.0, 7.0]})
    np.testing.assert_array_equal(step_scale(features), [1.5, 0.0, 0.0])  # |10-12|, |12-11|; flat lags: no change seen
    np.testing.assert_array_equal(step_scale(features.assign(step_scale=[2.0, -1.0, np.nan])), [2.0, 0.0, 0.0])


def test_scaled_lags_are_differences_from_lag_1_in_steps_without_the_sensor_unit_columns():
    features = pd.DataFrame(
        {"lag_1": [10.0, 20.0], "lag_2": [9.0, 21.5], "lag_3": [7.0, 20.0], "gap_1_seconds": [5.0, 6.0], "step_scale": [0.5, 0.0]}
    )
    original = features.copy()
    expected = pd.DataFrame({"lag_2": [-2.0, 0.0], "lag_3": [-6.0, 0.0], "gap_1_seconds": [5.0, 6.0]})  # scale 0: no steps
    pd.testing.assert_frame_equal(scaled_lags(features)[expected.columns], expected)
    assert set(scaled_lags(features).columns) == set(expected.columns)
    pd.testing.assert_frame_equal(features, original)  # the input is not modified


def test_shrinkage_pulls_a_change_that_does_not_hold_out_of_fold_to_persistence(frame):
    """Noise the lags cannot explain: each fold's forecast fails on the others, so the shrunk model is close to persistence."""
    noise = pd.Series(np.random.default_rng(5).normal(0, 1, len(frame)))
    plain = build_model(train_params("hist_gradient_boosting")).fit(frame, frame["lag_1"] + noise)
    shrunk = build_model(train_params("hist_gradient_boosting", shrinkage_folds=4)).fit(frame, frame["lag_1"] + noise)
    assert 0 <= shrunk.shrinkage_ < 0.3
    persistence = frame["lag_1"].to_numpy()
    assert np.abs(shrunk.predict(frame) - persistence).mean() < 0.3 * np.abs(plain.predict(frame) - persistence).mean()


def test_shrinkage_keeps_a_change_that_holds_out_of_fold(frame):
    model = build_model(train_params("ridge", shrinkage_folds=4)).fit(frame, momentum_target(frame))
    assert 0.8 < model.shrinkage_ <= 1.0
    unshrunk = build_model(train_params("ridge")).fit(frame, momentum_target(frame))
    np.testing.assert_allclose(model.predict(frame) - frame["lag_1"], model.shrinkage_ * (unshrunk.predict(frame) - frame["lag_1"]))


def test_relative_lags_subtracts_lag_1_from_the_older_lags():
    features = pd.DataFrame({"lag_1": [10.0, 20.0], "lag_2": [9.0, 21.5], "lag_3": [7.0, 20.0], "gap_1_seconds": [5.0, 6.0]})
    original = features.copy()
    relative = relative_lags(features)
    expected = pd.DataFrame({"lag_1": [10.0, 20.0], "lag_2": [-1.0, 1.5], "lag_3": [-3.0, 0.0], "gap_1_seconds": [5.0, 6.0]})
    pd.testing.assert_frame_equal(relative, expected)
    pd.testing.assert_frame_equal(features, original)  # the input is not modified


def dumped(model: PersistenceResidualRegressor) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_same_seed_gives_the_same_model_bytes(kind, frame):
    target = momentum_target(frame)
    first = dumped(build_model(train_params(kind)).fit(frame, target))
    second = dumped(build_model(train_params(kind)).fit(frame, target))
    assert first == second


def test_skops_round_trip_predicts_the_same(fitted, frame):
    data = skops.io.dumps(fitted)
    loaded = skops.io.loads(data, trusted=skops_trusted_types(fitted))
    assert type(loaded) is PersistenceResidualRegressor
    np.testing.assert_array_equal(loaded.predict(frame), fitted.predict(frame))


def test_skops_trusted_types_are_only_this_package_and_scikit_learn(fitted):
    trusted = skops_trusted_types(fitted)
    assert "bts.model.forecasters.PersistenceResidualRegressor" in trusted
    assert "bts.model.forecasters.scaled_lags" in trusted
    assert [name for name in trusted if not name.startswith(("bts.", "sklearn."))] == []


def test_skops_round_trip_of_the_unscaled_model_predicts_the_same(frame):
    model = build_model(train_params("ridge", target="change", shrinkage_folds=3)).fit(frame, momentum_target(frame))
    loaded = skops.io.loads(skops.io.dumps(model), trusted=skops_trusted_types(model))
    assert "bts.model.forecasters.relative_lags" in skops_trusted_types(model)
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

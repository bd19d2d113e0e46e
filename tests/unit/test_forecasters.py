"""The forecasters: every model kind forecasts the change over persistence, deterministically, and survives skops."""

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

from bts.model.forecasters import PersistenceResidualRegressor, build_model, relative_lags, skops_trusted_types
from bts.params import MODEL_KINDS, TrainParams, load_params
from tests.conftest import PROJECT

FEATURES = [
    *[f"lag_{k}" for k in range(1, 7)],
    *[f"gap_{k}_seconds" for k in range(1, 6)],
    "hour_sin",
    "hour_cos",
    "day_of_week",
]
ROWS = 120


def train_params(kind: str) -> TrainParams:
    return load_params(PROJECT / "params.yaml").train.model_copy(update={"model": kind})


def feature_frame(rows: int = ROWS, seed: int = 0) -> pd.DataFrame:
    """Series-like lags around 20 (lag_1 latest), gaps in seconds, calendar features."""
    rng = np.random.default_rng(seed)
    walk = 20 + np.cumsum(rng.choice([-0.5, 0.0, 0.5], size=rows + 6))
    lags = {f"lag_{k}": walk[6 - k + 1 : 6 - k + 1 + rows] for k in range(1, 7)}
    gaps = {f"gap_{k}_seconds": rng.integers(0, 600, rows).astype(float) for k in range(1, 6)}
    hours = np.arange(rows) % 24
    calendar = {
        "hour_sin": np.sin(2 * np.pi * hours / 24),
        "hour_cos": np.cos(2 * np.pi * hours / 24),
        "day_of_week": (np.arange(rows) // 24 % 7).astype(float),
    }
    return pd.DataFrame({**lags, **gaps, **calendar})[FEATURES]


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


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_build_model_gives_an_unfitted_persistence_residual_regressor(kind):
    model = build_model(train_params(kind))
    assert isinstance(model, PersistenceResidualRegressor)
    assert not hasattr(model, "estimator_")
    assert model.estimator.steps[0][0] == "relative_lags"


def test_predictions_are_lag_1_plus_the_predicted_change(fitted, frame):
    predicted = fitted.predict(frame)
    change = fitted.estimator_.predict(frame)
    np.testing.assert_array_equal(predicted, frame["lag_1"].to_numpy() + change)
    assert np.abs(change).max() > 0  # the model learned some change, so the sum is not trivially lag_1


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
    model = build_model(train_params(kind)).fit(frame, frame["lag_1"] + offset)
    np.testing.assert_allclose(model.predict(frame), frame["lag_1"].to_numpy() + offset, rtol=0, atol=1e-6)
    shifted = frame.assign(**{f"lag_{k}": frame[f"lag_{k}"] + 1000 for k in range(1, 7)})  # another sensor's scale
    np.testing.assert_allclose(model.predict(shifted), shifted["lag_1"].to_numpy() + offset, rtol=0, atol=1e-6)


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
    assert "bts.model.forecasters.relative_lags" in trusted
    assert [name for name in trusted if not name.startswith(("bts.", "sklearn."))] == []


def test_skops_refuses_to_load_the_model_without_trusted_types(fitted):
    data = skops.io.dumps(fitted)
    with pytest.raises(UntrustedTypesFoundException, match=re.escape("bts.model.forecasters.PersistenceResidualRegressor")):
        skops.io.loads(data, trusted=[])

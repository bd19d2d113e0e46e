"""The forecasting models: scikit-learn pipelines chosen and configured by the `train` params.

Every model forecasts the change over persistence (target - lag_1) and adds
it to lag_1, so a model that learns nothing falls back to persistence instead
of below it. With `train.target: change` the change is in the sensor's unit,
learnt from lags expressed relative to lag_1. With `scaled_change` it is in
the series' own unit of change, its recent mean absolute step (the
step_scale feature, or the lags' own mean absolute step where the features
lack it; known when the forecast is made either way): stations and sensors
whose readings move in steps of different sizes then look alike to the model,
which is what lets it forecast a station it never saw. Out-of-fold shrinkage
(`train.shrinkage_folds`) pulls the forecast change toward 0, that is toward
persistence, as far as forecasts of series left out of the fit warrant.

MultiHorizonForecaster holds one such model per horizon (featurize.horizons)
and puts a calibrated interval around each forecast (split conformal on the
valid split): the package predicts every horizon, central value and bounds,
in one call.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import ElasticNet, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.utils.validation import check_array
from threadpoolctl import threadpool_limits

from bts.horizons import output_columns

if TYPE_CHECKING:
    from bts.params import TrainParams

PERSISTENCE = "lag_1"
# The feature column featurize writes as bts.data.features.SCALE_COLUMN. Repeated, not imported: a model package
# carries bts/model alone (tests/unit/test_forecasters.py keeps the two equal).
SCALE_COLUMN = "step_scale"


def _lags(features: pd.DataFrame) -> list[str]:
    """lag_1, lag_2, ... in order, newest first."""
    return sorted((c for c in features.columns if c.startswith("lag_")), key=lambda c: int(c.removeprefix("lag_")))


def _older_lags(features: pd.DataFrame) -> list[str]:
    return [c for c in _lags(features) if c != PERSISTENCE]


def relative_lags(features: pd.DataFrame) -> pd.DataFrame:
    """lag_2..lag_N as differences from lag_1 (the latest reading); other columns unchanged."""
    return features.assign(**{c: features[c] - features[PERSISTENCE] for c in _older_lags(features)})


def step_scale(features: pd.DataFrame, scale_column: str = SCALE_COLUMN) -> np.ndarray:
    """Each row's unit of change: its scale column, or without one the mean absolute step between its lags;
    0 where that is undefined or not positive (no change seen)."""
    if scale_column in features.columns:
        scale = features[scale_column].to_numpy(dtype=float)
    else:
        lags = features[_lags(features)].to_numpy(dtype=float)
        scale = np.abs(np.diff(lags, axis=1)).mean(axis=1) if lags.shape[1] > 1 else np.zeros(len(features))
    return np.where(np.isfinite(scale) & (scale > 0), scale, 0.0)


def scaled_lags(features: pd.DataFrame, scale_column: str = SCALE_COLUMN) -> pd.DataFrame:
    """lag_2..lag_N as differences from lag_1 in units of the row's step scale; lag_1 and the scale column, in the sensor's unit, dropped.

    What is left says how the series moved, not where its level lies or how big its steps are; a row whose scale
    is 0 gets differences of 0.
    """
    scale = step_scale(features, scale_column)
    safe = np.where(scale > 0, scale, 1.0)
    latest = features[PERSISTENCE].to_numpy(dtype=float)
    moved = {c: np.where(scale > 0, (features[c].to_numpy(dtype=float) - latest) / safe, 0.0) for c in _older_lags(features)}
    in_sensor_unit = [PERSISTENCE, scale_column] if scale_column in features.columns else [PERSISTENCE]
    return features.drop(columns=in_sensor_unit).assign(**moved)


class PersistenceResidualRegressor(RegressorMixin, BaseEstimator):
    """Fits `estimator` to target - lag_1 and predicts lag_1 + its forecast of that change.

    scale_column: the change is divided by this feature column (the series' unit of change; without the column, the
    lags' mean absolute step) before the fit, and the forecast multiplied by it; rows whose scale is 0 are left out
    of the fit and forecast as persistence.
    shrinkage_folds: if at least 2, the training rows are cut into that many contiguous folds (featurize writes
    examples series by series, so a fold holds series the others lack), each fold is forecast by a model fitted on
    the others, and the forecast change is multiplied by the factor in [0, 1] that fits those out-of-fold forecasts
    best (shrinkage_, 1 without folds): a change that does not carry over to unseen series is pulled to persistence.
    """

    def __init__(self, estimator: BaseEstimator, scale_column: str | None = None, shrinkage_folds: int = 0) -> None:
        self.estimator = estimator
        self.scale_column = scale_column
        self.shrinkage_folds = shrinkage_folds

    def _scale(self, X: pd.DataFrame) -> np.ndarray:
        return np.ones(len(X)) if self.scale_column is None else step_scale(X, self.scale_column)

    def fit(self, X: pd.DataFrame, y: pd.Series) -> PersistenceResidualRegressor:
        scale = self._scale(X)
        usable = scale > 0
        change = (np.asarray(y, dtype=float) - X[PERSISTENCE].to_numpy(dtype=float))[usable] / scale[usable]
        rows = X[usable]
        # One OpenMP thread: on a busy shared 2-core machine a second one spins, and a 4 s boosting fit took 35 s.
        # The fitted model is the same either way.
        with threadpool_limits(limits=1, user_api="openmp"):
            self.estimator_ = clone(self.estimator).fit(rows, change)
            self.shrinkage_ = self._out_of_fold_shrinkage(rows, change)
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        return self

    def _out_of_fold_shrinkage(self, rows: pd.DataFrame, change: np.ndarray) -> float:
        """The factor in [0, 1] by which out-of-fold forecasts of the change best fit it (least squares); 1 without folds."""
        if self.shrinkage_folds < 2 or len(rows) < self.shrinkage_folds:
            return 1.0
        forecast = np.empty_like(change)
        for fold in np.array_split(np.arange(len(rows)), self.shrinkage_folds):
            rest = np.ones(len(rows), dtype=bool)
            rest[fold] = False
            forecast[fold] = clone(self.estimator).fit(rows[rest], change[rest]).predict(rows.iloc[fold])
        energy = float(forecast @ forecast)
        return float(np.clip(forecast @ change / energy, 0.0, 1.0)) if energy > 0 else 0.0

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        # Every feature is required: a missing or infinite one is refused (a ValueError naming it, as the linear kinds
        # give), not forecast from, as boosting would, taking NaN for a value of its own.
        check_array(X, dtype="numeric", ensure_all_finite=True)
        return self.checked_predict(X, {})

    def checked_predict(self, X: pd.DataFrame, prepared: dict) -> np.ndarray:
        """predict of rows already checked; `prepared` keeps what other models of the same X may reuse (the rows with a
        scale, and their features as the pipeline's stateless first steps give them), so several horizons read X once."""
        latest = X[PERSISTENCE].to_numpy(dtype=float)
        scale = self._scale(X)
        usable = scale > 0
        change = np.zeros(len(X))
        if usable.any():
            key = ("rows", self.scale_column)
            if key not in prepared:
                prepared[key] = X if usable.all() else X[usable]
            rows = prepared[key]
            steps = self.estimator_.steps if isinstance(self.estimator_, Pipeline) else []
            if steps and all(isinstance(step, FunctionTransformer) for _, step in steps[:-1]):
                shape = (key, tuple((step.func, repr(step.kw_args)) for _, step in steps[:-1]))
                if shape not in prepared:
                    prepared[shape] = self.estimator_[:-1].transform(rows)
                forecast = steps[-1][1].predict(prepared[shape])
            else:
                forecast = self.estimator_.predict(rows)
            change[usable] = self.shrinkage_ * scale[usable] * forecast
        return latest + change


def interval_scale(features: pd.DataFrame) -> np.ndarray:
    """Each row's unit of uncertainty: its step scale plus its recent drift per step (|lag_1 - lag_N| / (N - 1)); a series
    that trends is harder to forecast steps ahead than one that only jitters by the same steps. 0 where neither is known."""
    lags = _lags(features)
    drift = np.zeros(len(features))
    if len(lags) > 1:
        drift = np.abs(features[lags[0]].to_numpy(dtype=float) - features[lags[-1]].to_numpy(dtype=float)) / (len(lags) - 1)
    scale = step_scale(features) + np.where(np.isfinite(drift), drift, 0.0)
    return np.where(np.isfinite(scale) & (scale > 0), scale, 0.0)


class MultiHorizonForecaster(BaseEstimator):
    """Forecasts every horizon in one call, each with an interval calibrated on examples the fit did not see.

    fit(X, Y, groups): one clone of `estimator` per horizon, fitted to its column of Y (the targets in horizon order).
    calibrate(X, Y, groups) sets the intervals by split conformal prediction on other examples (the valid split),
    normalized: the score of an example is its absolute error in units of its interval_scale (the series' step scale
    plus its recent drift per step), and a horizon's interval is the forecast plus or minus the `coverage` quantile of
    those scores (with the finite-sample correction) times the row's scale. A sensor that moves in small steps gets a
    narrow interval, one that moves in large steps or trends a wide one, and a station never seen is covered in its
    own units. Rows whose scale is 0 (a series that did not move over its window) form a category of their own,
    scored in the sensor's unit; with too few of them to reach the coverage, they take the quantile of every
    example's error in the sensor's unit.

    groups (the station of each row): with calibration_folds >= 2 and at least two stations, the stations are cut
    into that many folds; fit also fits each horizon on the rows of the other folds, and calibrate scores each
    calibration example with the model that never saw its station. The intervals then hold for a station the model
    never saw, not only for the stations it was fitted on (where they are a little wider than they need be).
    The quantiles are computed by crepes' ConformalRegressor. Only the radii it gives are kept (and the out-of-fold
    models are dropped), so the packaged model needs neither crepes nor the calibration examples to predict.
    predict(X): a frame with forecast_h, lower_h and upper_h of every horizon (bts.horizons names them).
    """

    def __init__(
        self, estimator: PersistenceResidualRegressor, horizons: tuple[int, ...] = (1,), coverage: float = 0.9, calibration_folds: int = 0
    ) -> None:
        self.estimator = estimator
        self.horizons = horizons
        self.coverage = coverage
        self.calibration_folds = calibration_folds

    def fit(self, X: pd.DataFrame, Y: pd.DataFrame | np.ndarray, groups: pd.Series | np.ndarray | None = None) -> MultiHorizonForecaster:
        targets = self._targets(Y, len(X))
        self.estimators_ = self._fitted(X, targets)
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.output_columns_ = output_columns(list(self.horizons))
        self.radius_ = self.quiet_radius_ = None
        self._out_of_fold: list[tuple[np.ndarray, list]] = []
        if groups is not None and self.calibration_folds >= 2:
            groups = np.asarray(groups)
            stations = np.unique(groups)
            if len(stations) >= 2:
                for fold in np.array_split(stations, min(self.calibration_folds, len(stations))):
                    rest = ~np.isin(groups, fold)
                    self._out_of_fold.append((fold, self._fitted(X[rest], targets[rest])))
        return self

    def _fitted(self, X: pd.DataFrame, targets: np.ndarray) -> list:
        return [clone(self.estimator).fit(X, targets[:, i]) for i in range(len(self.horizons))]

    def _targets(self, Y: pd.DataFrame | np.ndarray, rows: int) -> np.ndarray:
        targets = np.asarray(Y, dtype=float)
        if targets.shape != (rows, len(self.horizons)):
            raise ValueError(f"expected targets of shape ({rows}, {len(self.horizons)}) (one column per horizon), got {targets.shape}")
        return targets

    def forecasts(self, X: pd.DataFrame, estimators: list | None = None) -> np.ndarray:
        """The central forecast of every horizon: rows x horizons. X is checked once and its scaled features built once
        for all horizons (each horizon's model alone gives the same numbers)."""
        check_array(X, dtype="numeric", ensure_all_finite=True)
        prepared: dict = {}
        return np.column_stack([estimator.checked_predict(X, prepared) for estimator in (estimators or self.estimators_)])

    def calibrate(
        self, X: pd.DataFrame, Y: pd.DataFrame | np.ndarray, groups: pd.Series | np.ndarray | None = None
    ) -> MultiHorizonForecaster:
        from crepes import ConformalRegressor  # training only: the fitted model keeps the radii it gives

        forecasts = self.forecasts(X)
        if groups is not None:
            groups = np.asarray(groups)
            for fold, estimators in getattr(self, "_out_of_fold", []):
                unseen = np.isin(groups, fold)
                if unseen.any():
                    forecasts[unseen] = self.forecasts(X[unseen], estimators)
        self._out_of_fold = []
        errors = self._targets(Y, len(X)) - forecasts
        scale = interval_scale(X)
        quiet = scale <= 0
        moving = ~quiet

        def radius(residuals: np.ndarray, sigmas: np.ndarray | None) -> float:
            if not len(residuals):
                return float("inf")
            conformal = ConformalRegressor().fit(residuals, sigmas=sigmas)
            with warnings.catch_warnings():  # too few examples for the coverage: an infinite radius, checked below
                warnings.simplefilter("ignore", UserWarning)
                interval = conformal.predict_int(np.zeros(1), sigmas=None if sigmas is None else np.ones(1), confidence=self.coverage)
            return float(interval[0, 1])

        self.radius_, self.quiet_radius_ = [], []
        for i, horizon in enumerate(self.horizons):
            scaled = radius(errors[moving, i], scale[moving])
            if not np.isfinite(scaled):
                raise ValueError(
                    f"{int(moving.sum())} calibration example(s) are too few for an interval of coverage {self.coverage} "
                    f"at horizon {horizon}: it needs at least {int(np.ceil(1 / (1 - self.coverage))) - 1}"
                )
            quiet_radius = radius(errors[quiet, i], None)
            self.radius_.append(scaled)
            self.quiet_radius_.append(quiet_radius if np.isfinite(quiet_radius) else radius(errors[:, i], None))
        return self

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        if self.radius_ is None:
            raise ValueError("the forecaster has no intervals yet: calibrate it on examples it did not fit")
        forecasts = self.forecasts(X)
        scale = interval_scale(X)
        half = np.where((scale > 0)[:, None], scale[:, None] * np.asarray(self.radius_), np.asarray(self.quiet_radius_))
        output = np.empty((len(X), 3 * len(self.horizons)))
        output[:, 0::3], output[:, 1::3], output[:, 2::3] = forecasts, forecasts - half, forecasts + half
        return pd.DataFrame(output, columns=self.output_columns_, index=X.index if isinstance(X, pd.DataFrame) else None)


def _forecaster(train: TrainParams, *steps: tuple[str, BaseEstimator]) -> PersistenceResidualRegressor:
    if train.target == "scaled_change":
        prepare = ("scaled_lags", FunctionTransformer(scaled_lags, kw_args={"scale_column": SCALE_COLUMN}))
        return PersistenceResidualRegressor(Pipeline([prepare, *steps]), SCALE_COLUMN, train.shrinkage_folds)
    prepare = ("relative_lags", FunctionTransformer(relative_lags, feature_names_out="one-to-one"))
    return PersistenceResidualRegressor(Pipeline([prepare, *steps]), None, train.shrinkage_folds)


def build_model(train: TrainParams, horizons: list[int]) -> MultiHorizonForecaster:
    """An unfitted, seeded forecaster of these horizons, with intervals of train.interval_coverage."""
    return MultiHorizonForecaster(build_estimator(train), tuple(horizons), train.interval_coverage, train.calibration_folds)


def build_estimator(train: TrainParams) -> PersistenceResidualRegressor:
    """An unfitted, seeded pipeline for one horizon. Linear models scale their inputs; the scaler is fitted with them, on train only."""
    if train.model == "elasticnet":
        # The tutorial's model: alpha and l1_ratio are the knobs to tune.
        estimator = ElasticNet(alpha=train.alpha, l1_ratio=train.l1_ratio, max_iter=5000, random_state=train.seed)
        return _forecaster(train, ("scale", StandardScaler()), ("model", estimator))
    if train.model == "ridge":
        return _forecaster(train, ("scale", StandardScaler()), ("model", Ridge(alpha=train.ridge.alpha)))
    if train.model == "hist_gradient_boosting":
        options = train.hist_gradient_boosting
        estimator = HistGradientBoostingRegressor(
            max_iter=options.max_iter,
            learning_rate=options.learning_rate,
            max_leaf_nodes=options.max_leaf_nodes,
            early_stopping=False,
            random_state=train.seed,
        )
        return _forecaster(train, ("model", estimator))
    options = train.random_forest
    estimator = RandomForestRegressor(
        n_estimators=options.n_estimators,
        max_depth=options.max_depth,
        min_samples_leaf=options.min_samples_leaf,
        n_jobs=1,  # with threads, predict sums the trees in a varying order: forecasts differed in the last bit from run to run
        random_state=train.seed,
    )
    return _forecaster(train, ("model", estimator))


def skops_trusted_types(model: BaseEstimator) -> list[str]:
    """Types the skops-serialized model may load: this package's and scikit-learn's own, nothing else."""
    from skops.io import dumps, get_untrusted_types

    return [name for name in get_untrusted_types(data=dumps(model)) if name.startswith(("bts.", "sklearn."))]

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

import functools
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import ElasticNet, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_array
from threadpoolctl import threadpool_limits

from bts.horizons import output_columns

if TYPE_CHECKING:
    from bts.params import TrainParams

PERSISTENCE = "lag_1"
# The feature column featurize writes as bts.data.features.SCALE_COLUMN. Repeated, not imported: a model package
# carries bts/model alone (tests/unit/test_forecasters.py keeps the two equal).
SCALE_COLUMN = "step_scale"


def lag_columns(columns: Sequence[str]) -> list[str]:
    """lag_1, lag_2, ... in order, newest first."""
    return sorted((c for c in columns if c.startswith("lag_")), key=lambda c: int(c.removeprefix("lag_")))


@functools.lru_cache(maxsize=64)
def _positions(columns: tuple[str, ...], scale_column: str | None) -> tuple[list[int], int | None]:
    """Where the lags (newest first) and the scale column lie among the feature columns."""
    index = {name: i for i, name in enumerate(columns)}
    return [index[c] for c in lag_columns(columns)], index.get(scale_column) if scale_column else None


def step_scale(matrix: np.ndarray, columns: Sequence[str], scale_column: str = SCALE_COLUMN) -> np.ndarray:
    """Each row's unit of change: its scale column, or without one the mean absolute step between its lags;
    0 where that is undefined or not positive (no change seen)."""
    lags, scale_at = _positions(tuple(columns), scale_column)
    if scale_at is not None:
        scale = matrix[:, scale_at]
    else:
        scale = np.abs(np.diff(matrix[:, lags], axis=1)).mean(axis=1) if len(lags) > 1 else np.zeros(len(matrix))
    return np.where(np.isfinite(scale) & (scale > 0), scale, 0.0)


def relative_lags(matrix: np.ndarray, columns: Sequence[str]) -> np.ndarray:
    """lag_2..lag_N as differences from lag_1 (the latest reading); other columns unchanged."""
    lags, _ = _positions(tuple(columns), None)
    relative = matrix.copy()
    relative[:, lags[1:]] -= matrix[:, lags[:1]]
    return relative


def scaled_lags(matrix: np.ndarray, columns: Sequence[str], scale_column: str = SCALE_COLUMN) -> np.ndarray:
    """lag_2..lag_N as differences from lag_1 in units of the row's step scale; lag_1 and the scale column, in the
    sensor's unit, dropped (the other columns keep their order).

    What is left says how the series moved, not where its level lies or how big its steps are; a row whose scale
    is 0 gets differences of 0.
    """
    lags, scale_at = _positions(tuple(columns), scale_column)
    scale = step_scale(matrix, columns, scale_column)
    moving = scale > 0
    moved = matrix.copy()
    moved[:, lags[1:]] = np.where(moving[:, None], (matrix[:, lags[1:]] - matrix[:, lags[:1]]) / np.where(moving, scale, 1.0)[:, None], 0.0)
    in_sensor_unit = [lags[0]] if scale_at is None else [lags[0], scale_at]
    return np.delete(moved, in_sensor_unit, axis=1)


def feature_matrix(X: pd.DataFrame | np.ndarray, columns: Sequence[str]) -> np.ndarray:
    """X's feature columns as a float matrix in the order of `columns`, refused (ValueError) where a feature is missing
    or infinite: boosting would take NaN for a value of its own and forecast from it."""
    if isinstance(X, pd.DataFrame):
        missing = [c for c in columns if c not in X.columns]
        if missing:
            raise ValueError(f"the features lack the column(s) {', '.join(missing)}")
        X = X[list(columns)]
    return check_array(X, dtype=np.float64, ensure_all_finite=True, ensure_min_samples=0, copy=False)


class PersistenceResidualRegressor(RegressorMixin, BaseEstimator):
    """Fits `estimator` to target - lag_1 and predicts lag_1 + its forecast of that change.

    The estimator sees the lags relative to lag_1 (`relative_lags`), or with a scale column, in units of the row's
    scale with the columns in the sensor's unit dropped (`scaled_lags`): a float matrix, so a forecast of rows already
    checked (predict_matrix) costs numpy and the estimator's own predict, nothing else.
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

    def _scale(self, matrix: np.ndarray) -> np.ndarray:
        columns = self.feature_names_in_
        return np.ones(len(matrix)) if self.scale_column is None else step_scale(matrix, columns, self.scale_column)

    def _inputs(self, matrix: np.ndarray) -> np.ndarray:
        """What the estimator sees of these rows."""
        if self.scale_column is None:
            return relative_lags(matrix, self.feature_names_in_)
        return scaled_lags(matrix, self.feature_names_in_, self.scale_column)

    def fit(self, X: pd.DataFrame, y: pd.Series | np.ndarray) -> PersistenceResidualRegressor:
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        matrix = feature_matrix(X, self.feature_names_in_)
        scale = self._scale(matrix)
        usable = scale > 0
        latest = matrix[:, lag_columns(self.feature_names_in_).index(PERSISTENCE)]
        change = (np.asarray(y, dtype=float) - latest)[usable] / scale[usable]
        inputs = self._inputs(matrix[usable])
        # One OpenMP thread: on a busy shared 2-core machine a second one spins, and a 4 s boosting fit took 35 s.
        # The fitted model is the same either way.
        with threadpool_limits(limits=1, user_api="openmp"):
            self.estimator_ = clone(self.estimator).fit(inputs, change)
            self.shrinkage_ = self._out_of_fold_shrinkage(inputs, change)
        return self

    def _out_of_fold_shrinkage(self, inputs: np.ndarray, change: np.ndarray) -> float:
        """The factor in [0, 1] by which out-of-fold forecasts of the change best fit it (least squares); 1 without folds."""
        if self.shrinkage_folds < 2 or len(inputs) < self.shrinkage_folds:
            return 1.0
        forecast = np.empty_like(change)
        for fold in np.array_split(np.arange(len(inputs)), self.shrinkage_folds):
            rest = np.ones(len(inputs), dtype=bool)
            rest[fold] = False
            forecast[fold] = clone(self.estimator).fit(inputs[rest], change[rest]).predict(inputs[fold])
        energy = float(forecast @ forecast)
        return float(np.clip(forecast @ change / energy, 0.0, 1.0)) if energy > 0 else 0.0

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.predict_matrix(feature_matrix(X, self.feature_names_in_))

    def prepare(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """These rows' scales, and what the estimator sees of the rows whose scale is positive."""
        scale = self._scale(matrix)
        usable = scale > 0
        return scale, self._inputs(matrix if usable.all() else matrix[usable])

    def predict_matrix(self, matrix: np.ndarray, prepared: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """predict of rows already checked: a finite float matrix of the feature columns in feature_names_in_ order.
        prepared: what `prepare` gives for this matrix, shared by the models of one kind (the horizons' models)."""
        scale, inputs = self.prepare(matrix) if prepared is None else prepared
        usable = scale > 0
        change = np.zeros(len(matrix))
        if len(inputs):
            change[usable] = self.shrinkage_ * scale[usable] * self.estimator_.predict(inputs)
        return matrix[:, lag_columns(self.feature_names_in_).index(PERSISTENCE)] + change


def interval_scale(matrix: np.ndarray, columns: Sequence[str]) -> np.ndarray:
    """Each row's unit of uncertainty: its step scale plus its recent drift per step (|lag_1 - lag_N| / (N - 1)); a series
    that trends is harder to forecast steps ahead than one that only jitters by the same steps. 0 where neither is known."""
    lags, _ = _positions(tuple(columns), None)
    drift = np.zeros(len(matrix))
    if len(lags) > 1:
        drift = np.abs(matrix[:, lags[0]] - matrix[:, lags[-1]]) / (len(lags) - 1)
    scale = step_scale(matrix, columns) + np.where(np.isfinite(drift), drift, 0.0)
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

    def forecasts(self, matrix: np.ndarray, estimators: list | None = None) -> np.ndarray:
        """The central forecast of every horizon, rows x horizons, of a checked feature matrix (feature_names_in_ order).
        The horizons' models are of one kind: they share one build of what they see (each alone gives the same numbers)."""
        estimators = estimators or self.estimators_
        prepared = estimators[0].prepare(matrix)
        return np.column_stack([estimator.predict_matrix(matrix, prepared) for estimator in estimators])

    def calibrate(
        self, X: pd.DataFrame, Y: pd.DataFrame | np.ndarray, groups: pd.Series | np.ndarray | None = None
    ) -> MultiHorizonForecaster:
        from crepes import ConformalRegressor  # training only: the fitted model keeps the radii it gives

        matrix = feature_matrix(X, self.feature_names_in_)
        forecasts = self.forecasts(matrix)
        if groups is not None:
            groups = np.asarray(groups)
            for fold, estimators in getattr(self, "_out_of_fold", []):
                unseen = np.isin(groups, fold)
                if unseen.any():
                    forecasts[unseen] = self.forecasts(matrix[unseen], estimators)
        self._out_of_fold = []
        errors = self._targets(Y, len(X)) - forecasts
        scale = interval_scale(matrix, self.feature_names_in_)
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
        outputs = self.predict_matrix(feature_matrix(X, self.feature_names_in_))
        return pd.DataFrame(outputs, columns=self.output_columns_, index=X.index if isinstance(X, pd.DataFrame) else None)

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """predict of rows already checked (a finite float matrix of the feature columns in feature_names_in_ order):
        rows x output_columns_, with numpy and the estimators' own predict alone."""
        if self.radius_ is None:
            raise ValueError("the forecaster has no intervals yet: calibrate it on examples it did not fit")
        forecasts = self.forecasts(matrix)
        scale = interval_scale(matrix, self.feature_names_in_)
        half = np.where((scale > 0)[:, None], scale[:, None] * np.asarray(self.radius_), np.asarray(self.quiet_radius_))
        output = np.empty((len(matrix), 3 * len(self.horizons)))
        output[:, 0::3], output[:, 1::3], output[:, 2::3] = forecasts, forecasts - half, forecasts + half
        return output


def build_model(train: TrainParams, horizons: list[int]) -> MultiHorizonForecaster:
    """An unfitted, seeded forecaster of these horizons, with intervals of train.interval_coverage."""
    return MultiHorizonForecaster(build_estimator(train), tuple(horizons), train.interval_coverage, train.calibration_folds)


def build_estimator(train: TrainParams) -> PersistenceResidualRegressor:
    """An unfitted, seeded model for one horizon. Linear models scale their inputs; the scaler is fitted with them, on train only."""
    scale_column = SCALE_COLUMN if train.target == "scaled_change" else None
    return PersistenceResidualRegressor(_estimator(train), scale_column, train.shrinkage_folds)


def _estimator(train: TrainParams) -> BaseEstimator:
    if train.model == "elasticnet":
        # The tutorial's model: alpha and l1_ratio are the knobs to tune.
        model = ElasticNet(alpha=train.alpha, l1_ratio=train.l1_ratio, max_iter=5000, random_state=train.seed)
        return Pipeline([("scale", StandardScaler()), ("model", model)])
    if train.model == "ridge":
        return Pipeline([("scale", StandardScaler()), ("model", Ridge(alpha=train.ridge.alpha))])
    if train.model == "hist_gradient_boosting":
        options = train.hist_gradient_boosting
        return HistGradientBoostingRegressor(
            max_iter=options.max_iter,
            learning_rate=options.learning_rate,
            max_leaf_nodes=options.max_leaf_nodes,
            early_stopping=False,
            random_state=train.seed,
        )
    options = train.random_forest
    return RandomForestRegressor(
        n_estimators=options.n_estimators,
        max_depth=options.max_depth,
        min_samples_leaf=options.min_samples_leaf,
        n_jobs=1,  # with threads, predict sums the trees in a varying order: forecasts differed in the last bit from run to run
        random_state=train.seed,
    )


def skops_trusted_types(model: BaseEstimator) -> list[str]:
    """Types the skops-serialized model may load: this package's and scikit-learn's own, nothing else."""
    from skops.io import dumps, get_untrusted_types

    return [name for name in get_untrusted_types(data=dumps(model)) if name.startswith(("bts.", "sklearn."))]

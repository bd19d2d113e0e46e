"""The forecasting models: scikit-learn pipelines chosen and configured by the `train` params.

Every model forecasts the change over persistence: it is fitted to
target - lag_1 on lags expressed relative to lag_1, and predicts lag_1 plus
that change. Sensors on very different scales (a 220 V grid, a 27 degC room)
then share one model, and a model that learns nothing falls back to
persistence instead of below it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import ElasticNet, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

if TYPE_CHECKING:
    from bts.params import TrainParams

PERSISTENCE = "lag_1"


def relative_lags(features: pd.DataFrame) -> pd.DataFrame:
    """lag_2..lag_N as differences from lag_1 (the latest reading); other columns unchanged."""
    lags = [c for c in features.columns if c.startswith("lag_") and c != PERSISTENCE]
    return features.assign(**{c: features[c] - features[PERSISTENCE] for c in lags})


class PersistenceResidualRegressor(RegressorMixin, BaseEstimator):
    """Fits `estimator` to target - lag_1 and predicts lag_1 + its forecast of that change."""

    def __init__(self, estimator: BaseEstimator) -> None:
        self.estimator = estimator

    def fit(self, X: pd.DataFrame, y: pd.Series) -> PersistenceResidualRegressor:
        self.estimator_ = clone(self.estimator).fit(X, np.asarray(y) - X[PERSISTENCE].to_numpy())
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return X[PERSISTENCE].to_numpy(dtype=float) + self.estimator_.predict(X)


def _forecaster(*steps: tuple[str, BaseEstimator]) -> PersistenceResidualRegressor:
    relative = FunctionTransformer(relative_lags, feature_names_out="one-to-one")
    return PersistenceResidualRegressor(Pipeline([("relative_lags", relative), *steps]))


def build_model(train: TrainParams) -> PersistenceResidualRegressor:
    """An unfitted, seeded pipeline. Linear models scale their inputs; the scaler is fitted with them, on train only."""
    if train.model == "elasticnet":
        # The tutorial's model: alpha and l1_ratio are the knobs to tune.
        estimator = ElasticNet(alpha=train.alpha, l1_ratio=train.l1_ratio, max_iter=5000, random_state=train.seed)
        return _forecaster(("scale", StandardScaler()), ("model", estimator))
    if train.model == "ridge":
        return _forecaster(("scale", StandardScaler()), ("model", Ridge(alpha=train.ridge.alpha)))
    if train.model == "hist_gradient_boosting":
        options = train.hist_gradient_boosting
        estimator = HistGradientBoostingRegressor(
            max_iter=options.max_iter,
            learning_rate=options.learning_rate,
            max_leaf_nodes=options.max_leaf_nodes,
            early_stopping=False,
            random_state=train.seed,
        )
        return _forecaster(("model", estimator))
    options = train.random_forest
    estimator = RandomForestRegressor(
        n_estimators=options.n_estimators,
        max_depth=options.max_depth,
        min_samples_leaf=options.min_samples_leaf,
        n_jobs=2,
        random_state=train.seed,
    )
    return _forecaster(("model", estimator))


def skops_trusted_types(model: BaseEstimator) -> list[str]:
    """Types the skops-serialized model may load: this package's and scikit-learn's own, nothing else."""
    from skops.io import dumps, get_untrusted_types

    return [name for name in get_untrusted_types(data=dumps(model)) if name.startswith(("bts.", "sklearn."))]

"""TEMPORARY re-export while the change is in progress: use bts.horizons."""

from bts.horizons import *  # noqa: F403
from bts.horizons import (  # noqa: F401
    FORECAST,
    KINDS,
    LOWER,
    UPPER,
    headline_metric,
    label,
    metric_horizons,
    metric_name,
    output_column,
    output_columns,
    output_horizons,
    target_column,
    target_time_column,
)

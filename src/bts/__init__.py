"""BTS predictive maintenance: data, models, lineage and serving on DVC and MLflow."""

__version__ = "0.1.0"

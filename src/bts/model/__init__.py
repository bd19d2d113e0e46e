"""The forecaster, its scoring against persistence, and its packaging as a verified MLflow model."""

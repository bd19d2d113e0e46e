"""The forecaster, its scoring against persistence and evaluation plots, its training-feature profile, and its
packaging as a verified MLflow model."""

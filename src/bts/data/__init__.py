"""Readings: the sensor catalogue, simulation, schemas, ingestion, cleaning, features and dataset metadata (no MLflow)."""

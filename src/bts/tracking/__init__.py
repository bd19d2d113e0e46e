"""What a stage logs to MLflow with: the store, the tag names, and finding or opening the training run."""

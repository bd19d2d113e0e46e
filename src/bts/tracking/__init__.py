"""MLflow and git: runs, registry, lineage, reproduction, reconciliation and comparison."""

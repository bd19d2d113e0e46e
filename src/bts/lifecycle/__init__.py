"""A model's life after training, as the `bts` commands see it: registry, lineage, reproduction, comparison, reconciliation, cards.

No pipeline stage imports this package: an edit here never retrains a model or rewrites dvc.lock.
"""

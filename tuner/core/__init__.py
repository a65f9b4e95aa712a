"""The science core: data, attacks, objectives, metrics and the training loop.

Nothing here imports Ray, Optuna or MLflow; orchestration builds on this package, never the
reverse.
"""

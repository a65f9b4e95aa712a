"""How a search runs: Ray (cluster), Tune trials driven by Optuna studies, data-parallel trials, the trial worker.

Builds on `tuner.core` (what a trial computes) and writes through `tuner.outputs`.
"""

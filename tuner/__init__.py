"""robust-width-tuner: choose the adversarial-training weight lambda for a network width.

Layers, each importing only the ones above it:

- `tuner.errors`, `tuner.registry`, `tuner.files`: the foundation (no other project import);
- `models`, `tuner.core`: the science (data, attacks, objectives, metrics, the training loop); no
  Ray, Optuna or MLflow;
- `tuner.presets`, `tuner.plan`: what to run;
- `tuner.outputs`: Parquet tables and MLflow runs;
- `tuner.analysis`: the scaling rule and its figures;
- `tuner.orchestration`: Ray Tune trials driven by Optuna;
- the commands `tuner.train`, `tuner.search`, `tuner.fit` (and `tuner.cli`, what they share).
"""

"""robust-width-tuner: choose the adversarial-training weight lambda for a network width.

`tuner.core` is the science (data, attacks, objectives, metrics, the training loop) and runs on
its own; the modules beside it (presets, the train and search commands) orchestrate it.
"""

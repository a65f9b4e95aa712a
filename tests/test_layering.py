"""The science core runs on its own: no Ray, Optuna or MLflow behind `tuner.core` or `models`."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_no_orchestration_library():
    code = ("import sys, models, tuner.core.training, tuner.core.metrics, tuner.core.distributed;"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'ray', 'optuna', 'mlflow'});"
            "print(','.join(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""

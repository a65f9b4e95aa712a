"""The architecture holds: layers import only downwards, no module imports itself in a circle,
the science core runs without Ray, Optuna or MLflow, and Ray's workers import only what they run."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Each unit may import units of a lower rank, and modules of its own unit; never a higher rank,
# nor a sibling unit of the same rank.
RANKS = {
    "tuner.errors": 0, "tuner.files": 0, "tuner.registry": 0.5,
    "models": 1,
    "tuner.core": 2,
    "tuner.presets": 3, "tuner.plan": 4, "tuner.cli": 3,
    "tuner.outputs": 5,
    "tuner.analysis": 6,
    "tuner.orchestration": 7,
    "tuner.train": 8, "tuner.fit": 8, "tuner.search": 9, "tuner.evaluate": 10,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """Every project module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in ("tuner", "models")}


def graph() -> dict[str, set[str]]:
    paths = [p for package in ("tuner", "models") for p in (ROOT / package).rglob("*.py")]
    modules = {module_name(p): p for p in paths}
    return {name: {m for m in project_imports(path) if m in modules and m not in (name, "tuner")}
            for name, path in modules.items()}


def unit(module: str) -> str:
    return max((u for u in RANKS if module == u or module.startswith(u + ".")), key=len)


def test_every_module_belongs_to_a_layer():
    assert [m for m in graph() if m != "tuner" and not any(m == u or m.startswith(u + ".") for u in RANKS)] == []


def test_layers_import_only_downwards():
    wrong = sorted(f"{a} imports {b}" for a, targets in graph().items() if a != "tuner" for b in targets
                   if unit(a) != unit(b) and RANKS[unit(b)] >= RANKS[unit(a)])
    assert wrong == []


def test_no_import_circles():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_core_imports_no_orchestration_library():
    code = ("import sys, models, tuner.core.training, tuner.core.metrics, tuner.core.distributed;"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'ray', 'optuna', 'mlflow'});"
            "print(','.join(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("module, heavy", [
    # what every fresh trial worker imports: MLflow alone would cost it 0.6 s
    ("tuner.orchestration.trainable", {"optuna", "mlflow", "sklearn", "matplotlib"}),
    # what every fresh strong-evaluation worker imports: Tune alone would cost it 0.7 s
    ("tuner.orchestration.evaluation", {"ray.tune", "ray.train", "optuna", "mlflow", "sklearn", "matplotlib"}),
])
def test_ray_workers_import_only_what_they_run(module, heavy):
    code = (f"import sys, {module}; heavy = {sorted(heavy)!r};"
            "print(','.join(sorted(h for h in heavy if h in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""

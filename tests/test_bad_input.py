"""Bad input to every command: one line naming the problem and the fix, exit status 2, no traceback, and nothing
written (no run directory, no mlflow.db, no Ray started). A new case is one line of the table."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import yaml

from tests.helpers import assert_usage_error, free_port, run_command
from tuner import cli
from tuner.core import training as train
from tuner.outputs.results import TRIAL_SCHEMA
from tuner.presets import load_preset

QUICK = load_preset("quick")


def preset_file(path: Path, *, trial: dict | None = None, search: dict | None = None) -> None:
    path.write_text(yaml.safe_dump({"trial": {**QUICK.trial, **(trial or {})}, "search": {**QUICK.search, **(search or {})}}))


def fake_run(run_dir: Path, rows: list[dict]) -> None:
    """A run directory as a search leaves it: search.json and trials.parquet (checkpoints as given)."""
    run_dir.mkdir(parents=True)
    (run_dir / "search.json").write_text(json.dumps({"argv": ["--widths", "1,2", "--epochs", "1"], "name": run_dir.name}))
    full = [{name: row.get(name) for name in TRIAL_SCHEMA.names} for row in rows]
    pq.write_table(pa.Table.from_pylist(full, schema=TRIAL_SCHEMA), run_dir / "trials.parquet")


@pytest.fixture(scope="module")
def checkpoint_of_width_2(tmp_path_factory) -> Path:
    """A real checkpoint directory of a width-2 quick model (1 epoch)."""
    out = tmp_path_factory.mktemp("w2") / "trial"
    train.run_trial(train.prepare(QUICK.trial_config(width=2, lam=1.0, epochs=1)), work_dir=out, log=None)
    return out / "checkpoint"


@pytest.fixture
def workdir(tmp_path, checkpoint_of_width_2) -> Path:
    """The files the cases name, made before the command runs (anything else afterwards was written by it)."""
    preset_file(tmp_path / "epochs-ten.yaml", trial={"epochs": "ten"})
    preset_file(tmp_path / "search-typo.yaml", search={"trails": 6})
    preset_file(tmp_path / "bad-suite.yaml", search={"evaluation": {"suite": "strongest"}})
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "damaged" / "checkpoint").mkdir(parents=True)
    (tmp_path / "damaged" / "checkpoint" / "last.pt").write_bytes((checkpoint_of_width_2 / "last.pt").read_bytes()[:999])
    shutil.copytree(checkpoint_of_width_2, tmp_path / "width-2" / "checkpoint")
    row = {"trial_id": "t1", "width": 1, "lam": 1.0, "seed": 0, "replicate": 0, "status": "completed",
           "val_robust_acc": 0.5, "val_natural_acc": 0.8, "val_stability": 0.6, "method": "trades"}
    fake_run(tmp_path / "runs" / "nockpt", [row])
    fake_run(tmp_path / "runs" / "mismatch", [{**row, "checkpoint": str(checkpoint_of_width_2)}])
    for split in ("train", "test"):
        (tmp_path / "pngs" / split / "cat").mkdir(parents=True)
        (tmp_path / "pngs" / split / "cat" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return tmp_path


CASES = [
    # python -m tuner.search
    ("tuner.search", ["--widths", "1,a"], "--widths takes comma-separated positive integers"),
    ("tuner.search", ["--widths", "0"], "--widths takes comma-separated positive integers"),
    ("tuner.search", ["--widths", "1,,2"], "--widths takes comma-separated positive integers"),
    ("tuner.search", ["--widths", "1,1"], "--widths gives width 1 more than once"),
    ("tuner.search", ["--widths", "100000"], "width 100000"),
    ("tuner.search", ["--widths", "1", "--lam-range", "5,1"], "--lam-range needs 0 < LOW < HIGH"),
    ("tuner.search", ["--widths", "1", "--trials", "0"], "--trials must be >= 1"),
    ("tuner.search", ["--widths", "1", "--seeds", "0"], "--seeds must be >= 1"),
    ("tuner.search", ["--widths", "1", "--preset", "huge"], "unknown preset 'huge'"),
    ("tuner.search", ["--widths", "1", "--preset", "search-typo.yaml"], "unknown search setting(s) trails"),
    ("tuner.search", ["--widths", "1", "--preset", "epochs-ten.yaml"], "epochs must be a whole number"),
    ("tuner.search", ["--widths", "1", "--preset", "bad-suite.yaml"], "unknown attack suite 'strongest'"),
    ("tuner.search", ["--widths", "1", "--address", "127.0.0.1:1"], "no Ray cluster answers at --address 127.0.0.1:1"),
    ("tuner.search", ["--widths", "1", "--resume", "--out", "elsewhere"], "nothing to resume"),
    ("tuner.search", ["--widths", "1", "--cpus-per-trial", "100000"], "needs 100000 CPU and 0 GPU but this machine has"),
    ("tuner.search", ["--widths", "1", "--workers-per-trial", "3"], "--batch-size divisible by --workers-per-trial"),
    ("tuner.search", ["--widths", "1", "--name", ""], "--name must not be empty"),
    ("tuner.search", ["--widths", "1", "--out", "a-file"], "cannot create a run directory in"),
    ("tuner.search", ["--widths", "1", "--tracking-uri", "bogus://x"], "has no supported scheme"),
    ("tuner.search", ["--widths", "1", "--tracking-uri", "http://127.0.0.1:{port}"], "no MLflow tracking server answers"),
    ("tuner.search", ["--widths", "1", "--device", "cuda"], "device cuda is not available"),
    ("tuner.search", ["--widths", "1", "--device", "cuda:7"], "device cuda:7 is not available"),
    ("tuner.search", ["--widths", "1", "--device", "tpu"], "unknown device 'tpu'"),
    # python -m tuner.train
    ("tuner.train", ["--width", "0", "--lam", "6"], "width must be a positive integer"),
    ("tuner.train", ["--width", "1", "--lam", "-1"], "lam must be"),
    ("tuner.train", ["--width", "1", "--lam", "inf"], "lam must be"),
    ("tuner.train", ["--width", "1", "--lam", "6", "--preset", "huge"], "unknown preset 'huge'"),
    ("tuner.train", ["--width", "1", "--lam", "6", "--method", "mart"], "unknown method 'mart'"),
    ("tuner.train", ["--width", "1", "--lam", "6", "--preset", "cifar10-small", "--data-dir", "/nonexistent/cifar"],
     "no CIFAR-10 found in /nonexistent/cifar"),
    ("tuner.train", ["--width", "1", "--lam", "6", "--preset", "cifar10-small"], "--data-dir"),
    ("tuner.train", ["--width", "1", "--lam", "6", "--preset", "cifar10-small", "--data-dir", "pngs"], "could not decode"),
    ("tuner.train", ["--width", "x", "--lam", "6"], "invalid int value"),
    ("tuner.train", ["--lam", "6"], "--width"),
    ("tuner.train", ["--width", "1", "--lam", "6", "--out", "a-file"], "--out a-file is a file"),
    ("tuner.train", ["--width", "1", "--lam", "6", "--device", "tpu"], "unknown device 'tpu'"),
    ("tuner.train", ["--width", "1", "--lam", "6", "--out", "damaged"], "damaged/checkpoint/last.pt cannot be used (truncated"),
    ("tuner.train", ["--width", "1", "--lam", "6", "--out", "width-2"], "cannot be used (it holds another model than cnn width 1)"),
    # python -m tuner.evaluate
    ("tuner.evaluate", ["runs/nockpt", "--suite", "strongest"], "unknown attack suite 'strongest'"),
    ("tuner.evaluate", ["a-file"], "is not the run directory of a search"),
    ("tuner.evaluate", ["runs/nockpt"], "no completed trial with a checkpoint"),
    ("tuner.evaluate", ["runs/nockpt", "--n-examples", "0"], "--n-examples must be at least 1"),
    ("tuner.evaluate", ["runs/nockpt", "--trials", "most"], "--trials takes best, top-K"),
    ("tuner.evaluate", ["runs/mismatch"], "does not match trial t1's model"),
]


def run_in_process(command: str, args: list[str], *, cwd: Path, monkeypatch, capfd) -> subprocess.CompletedProcess:
    """`python -m command args` in this process (a subprocess per case would spend minutes importing torch and Ray)."""
    main = importlib.import_module(command).main
    monkeypatch.chdir(cwd)
    capfd.readouterr()
    environment = dict(os.environ)  # the commands set variables for their own process (MLFLOW_TRACKING_URI, RAY_*)
    try:
        with pytest.raises(SystemExit) as exited:
            cli.run(main, args)
    finally:
        os.environ.clear()
        os.environ.update(environment)
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess([command, *args], exited.value.code, out, err)


def command_line(command: str, args: list[str]) -> list[str]:
    args = [a.replace("{port}", str(free_port())) for a in args]
    if command == "tuner.search" and "--out" not in args:
        return [*args, "--out", "runs"]
    return [*args, "--epochs", "1"] if command == "tuner.train" else args


@pytest.mark.parametrize("command, args, fragment", CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(workdir, command, args, fragment, monkeypatch, capfd):
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    result = run_in_process(command, command_line(command, args), cwd=workdir, monkeypatch=monkeypatch, capfd=capfd)
    assert_usage_error(result, fragment)
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before, "something was written"
    assert not ray.is_initialized(), "Ray was started"


@pytest.mark.slow
@pytest.mark.parametrize("case", [CASES[0], CASES[-1]], ids=lambda c: c[0])
def test_a_real_process_prints_the_same_one_line(workdir, case):
    """As a user runs it: nothing else reaches stderr (import warnings, library noise) before the error line."""
    command, args, fragment = case
    assert_usage_error(run_command(command, *command_line(command, args), cwd=workdir), fragment)

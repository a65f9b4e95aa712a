"""Faults a search meets on a real machine, reproduced with the real components: interrupts, kills,
failing trials, damaged stores, an MLflow server that goes away, two searches at once.

Nothing finished is ever lost or hidden, and the search says what happened in one line.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from mlflow import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from torchvision.io import write_png

from tests.helpers import BIN, Driver, free_port, run_command
from tuner.presets import load_preset

pytestmark = pytest.mark.slow
SMALL = ["--widths", "1,2", "--trials", "2", "--seeds", "1", "--epochs", "2"]
TRIAL_LINE = r"^  w\d+ \[\d+/\d+\]"
STATE = {"completed": "COMPLETE", "early_stopped": "PRUNED", "error": "FAIL"}


def rows(run_dir: Path) -> list[dict]:
    return pq.read_table(run_dir / "trials.parquet").to_pylist()


def mlflow_runs(uri: str, name: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)


def assert_consistent(run_dir: Path, uri: str, *, expected: int) -> None:
    """One Parquet row per trial, each epoch once; the Optuna trial of every row in the matching state;
    one MLflow trial run per row, every epoch logged once; no run left RUNNING."""
    table = rows(run_dir)
    assert len(table) == expected and len({r["trial_id"] for r in table}) == expected
    epochs = [(e["trial_id"], e["epoch"]) for e in pq.read_table(run_dir / "epochs.parquet").to_pylist()]
    assert len(epochs) == len(set(epochs)) == sum(r["epochs_run"] for r in table)
    storage = JournalStorage(JournalFileBackend(str(run_dir / "optuna.journal")))
    for row in table:
        study = optuna.load_study(study_name=f"{run_dir.name}-w{row['width']}", storage=storage)
        trial = study.trials[row["optuna_trial"]]
        assert trial.state.name == STATE[row["status"]] and trial.user_attrs["ray_trial_id"] == row["trial_id"]
    runs = mlflow_runs(uri, run_dir.name)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    trial_runs = {r.data.tags["ray_trial_id"]: r for r in runs if r.data.tags.get("rwt.kind") == "trial"}
    assert sorted(trial_runs) == sorted(r["trial_id"] for r in table)
    client = MlflowClient(uri)
    for row in table:
        steps = [m.step for m in client.get_metric_history(trial_runs[row["trial_id"]].info.run_id, "val_robust_acc")]
        assert sorted(steps) == list(range(1, row["epochs_run"] + 1)), "an epoch logged twice or missing"


def listening_outside_loopback(pid: int) -> list[tuple[str, str, int]]:
    """Listening sockets of a process tree bound to anything but the loopback address."""
    found = []
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            for conn in proc.net_connections(kind="inet"):
                ip = conn.laddr.ip.removeprefix("::ffff:")
                if conn.status == psutil.CONN_LISTEN and ip not in ("127.0.0.1", "::1"):
                    found.append((proc.name(), conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            continue
    return found


def test_ctrl_c_stops_the_whole_search_then_resume_finishes_it(tmp_path):
    out, uri = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    driver = Driver([*SMALL, "--out", str(out), "--name", "cc"], cwd=tmp_path)
    try:
        driver.wait_for(TRIAL_LINE)
        # a local search listens on loopback only, every Ray service included
        assert listening_outside_loopback(driver.proc.pid) == []
        # its trial workers run at the driver's priority, not Ray's nice 15
        workers = [p for p in psutil.Process(driver.proc.pid).children(recursive=True)
                   if p.name().startswith("ray::") and "Agent" not in p.name()]
        assert workers and {p.nice() for p in workers} == {0}
        driver.signal_group(signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole foreground group
        code, stdout, stderr = driver.finish(timeout=180)
    finally:
        driver.kill()
    assert code == 130, stdout + stderr
    assert "interrupted" in stdout and f"python -m tuner.search --resume --out {out} --name cc" in stdout
    assert "scaling rule" not in stdout and not (out / "cc" / "scaling.json").exists(), "nothing is fitted"
    assert "Traceback" not in stderr
    recorded = {r["trial_id"] for r in rows(out / "cc")}
    assert 1 <= len(recorded) < 4
    assert [r.info.run_name for r in mlflow_runs(uri, "cc") if r.info.status == "RUNNING"] == []

    result = run_command("tuner.search", "--resume", "--out", str(out), "--name", "cc", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert recorded <= {r["trial_id"] for r in rows(out / "cc")}
    assert_consistent(out / "cc", uri, expected=4)


def test_a_search_killed_at_every_stage_and_resumed_each_time_ends_consistent(tmp_path):
    """SIGKILL while Ray starts, mid-trial, right after a trial finished, and during the final fit."""
    out, uri = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = ["--widths", "1,2", "--trials", "2", "--seeds", "1", "--epochs", "3", "--out", str(out), "--name", "rk"]
    resume = ["--resume", "--out", str(out), "--name", "rk"]
    for args, stage, delay in [(first, r"^search rk:", 0.0),  # the plan is printed: Ray is starting
                               (resume, r"^ray: ", 3.0),  # trials started, none finished yet
                               (resume, TRIAL_LINE, 0.0),  # a trial just finished
                               (resume, r"^search rk finished", 0.0)]:  # the final stage is running
        driver = Driver(args, cwd=tmp_path)
        try:
            reached = driver.wait_for(stage)
            time.sleep(delay)
        finally:
            driver.kill()
        if reached is None:  # the search ended before that stage: nothing left to interrupt there
            break
    result = run_command("tuner.search", *resume, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_consistent(out / "rk", uri, expected=4)


def image_folder(root: Path) -> None:
    """A real (tiny) ImageFolder tree of PNGs: 2 classes, 12 train and 4 test images each."""
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 12), ("test", 4)):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=generator)
                write_png(image, str(root / split / label / f"{i}.png"))


def test_bad_input_found_inside_every_trial_stops_the_search_in_one_line_without_retries(tmp_path):
    image_folder(tmp_path / "data")
    quick = load_preset("quick")
    (tmp_path / "folder.yaml").write_text(yaml.safe_dump(
        {"trial": {**quick.trial, "dataset": "cifar10", "augment": False},
         "search": {**quick.search, "max_retries": 3}}))
    driver = Driver(["--preset", "folder.yaml", "--widths", "1", "--trials", "2", "--seeds", "1", "--epochs", "1",
                     "--data-dir", "data", "--out", "runs", "--name", "cfg"], cwd=tmp_path)
    try:
        driver.wait_for(r"^search cfg:")  # the driver has read the data; its trials have not started
        (tmp_path / "data").rename(tmp_path / "moved")
        code, stdout, stderr = driver.finish(timeout=300)
    finally:
        driver.kill()
    assert code == 2, stdout + stderr
    assert stderr.strip().splitlines() == [f"error: no CIFAR-10 found in {tmp_path / 'data'}: pass --data-dir "
                                           f"pointing at torchvision's 'cifar-10-batches-py' folder (or its parent; "
                                           f"add --download to fetch it), or at an ImageFolder tree with "
                                           f"train/<class>/*.png and test/<class>/*.png"]
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(tmp_path / "runs" / "cfg" / "ray" / "search")).trials
    assert trials and all(t.run_metadata.num_failures == 0 for t in trials), "a trial was retried"


def test_a_search_where_no_trial_completes_exits_1_with_the_first_error(tmp_path):
    quick = load_preset("quick")
    (tmp_path / "noretry.yaml").write_text(yaml.safe_dump({"trial": quick.trial,
                                                          "search": {**quick.search, "max_retries": 0}}))
    result = run_command("tuner.search", "--preset", "noretry.yaml", "--widths", "1", "--trials", "2", "--seeds", "1", "--epochs", "1",
                         "--lam-range", "1e5,1e6", "--out", "runs", "--name", "nan", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: no trial completed (2 trial(s): 0 completed, 0 early_stopped, 2 error); "
                           "first error: ") and "diverged" in line
    assert not (tmp_path / "runs" / "nan" / "scaling.json").exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished search (and its MLflow store) to damage, one copy per test."""
    root = tmp_path_factory.mktemp("finished")
    result = run_command("tuner.search", "--widths", "1,2", "--trials", "2", "--seeds", "1", "--epochs", "1", "--out", "runs",
                         "--name", "fin", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def copy_of(finished: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished, tmp_path / "copy")
    return tmp_path / "copy"


def resume(root: Path) -> subprocess.CompletedProcess:
    return run_command("tuner.search", "--resume", "--out", "runs", "--name", "fin", cwd=root)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage, said", [
    (lambda run: (run / "trials.parquet").unlink(), "finished trial(s) were missing from trials.parquet"),
    (lambda run: truncate(run / "trials.parquet"), "trials.parquet was unreadable"),
    (lambda run: (run / "optuna.journal").unlink(), "optuna.journal was missing, damaged or behind"),
    (lambda run: truncate(run / "optuna.journal"), "optuna.journal was missing, damaged or behind"),
])
def test_resume_rebuilds_a_store_from_the_others_and_says_so(finished, tmp_path, damage, said):
    root = copy_of(finished, tmp_path)
    damage(root / "runs" / "fin")
    result = resume(root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line for line in result.stdout.splitlines() if said in line], result.stdout
    assert_consistent(root / "runs" / "fin", f"sqlite:///{root / 'mlflow.db'}", expected=4)


def test_resume_refuses_results_it_cannot_rebuild_in_one_line(finished, tmp_path):
    root = copy_of(finished, tmp_path)
    truncate(root / "runs" / "fin" / "trials.parquet")
    shutil.rmtree(root / "runs" / "fin" / "ray")
    result = resume(root)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "trials.parquet" in line and "cannot be rebuilt" in line and "restore the file from a backup" in line
    assert "ray: " not in result.stdout, "Ray was started"


def test_resume_closes_a_trial_run_no_store_kept(finished, tmp_path):
    """A driver killed after a trial reported, before Tune saved its state, leaves a RUNNING run of a ghost trial."""
    root = copy_of(finished, tmp_path)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("fin").experiment_id
    ghost = client.create_run(experiment, tags={"rwt.kind": "trial", "ray_trial_id": "ghost00"}).info.run_id
    result = resume(root)
    assert result.returncode == 0, result.stdout + result.stderr
    run = client.get_run(ghost)
    assert run.info.status == "KILLED" and run.data.tags["rwt.kind"] == "orphaned_trial" and run.data.tags["closed"]
    assert_consistent(root / "runs" / "fin", uri, expected=4)


def mlflow_server_at(root: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                             "--artifacts-destination", str(root / "artifacts")],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import urllib.request

    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)


def test_training_goes_on_while_the_mlflow_server_is_away_and_logging_catches_up(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = mlflow_server_at(tmp_path, port)
    driver = Driver(["--widths", "1,2", "--trials", "3", "--seeds", "1", "--epochs", "3", "--tracking-uri", uri, "--out", "runs",
                     "--name", "away"], cwd=tmp_path)
    try:
        driver.wait_for(TRIAL_LINE)
        server.terminate()
        server.wait(timeout=60)
        driver.wait_for(r"^warning: MLflow at .* is not answering", timeout=120)
        time.sleep(5)
        server = mlflow_server_at(tmp_path, port)
        code, stdout, stderr = driver.finish(timeout=400)
    finally:
        driver.kill()
        server.terminate()
        server.wait(timeout=60)
    assert code == 0, stdout + stderr
    assert "answers again" in stdout and "could not be logged" not in stdout
    server = mlflow_server_at(tmp_path, port)
    try:
        assert_consistent(tmp_path / "runs" / "away", uri, expected=6)
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_two_searches_started_at_once_in_one_directory_both_run(tmp_path):
    args = ["--widths", "1", "--trials", "1", "--seeds", "1", "--epochs", "1", "--out", "runs"]
    procs = [subprocess.Popen([sys.executable, "-m", "tuner.search", *args, "--name", name], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("one", "two")]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for name in ("one", "two"):
        assert len(rows(tmp_path / "runs" / name)) == 1
        assert len([r for r in mlflow_runs(uri, name) if r.data.tags.get("rwt.kind") == "trial"]) == 1

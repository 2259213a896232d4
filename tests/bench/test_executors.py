"""Sweeps on Ray (secondorder.bench.executors): same rows as local, dead workers, Ctrl-C,
a killed driver.

The Ray tests start a local Ray with 2 CPUs and are skipped when Ray is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import secondorder
from secondorder import cli
from secondorder.bench import executors
from secondorder.bench.executors import RayExecutor, make_executor
from secondorder.bench.store import Store
from secondorder.bench.sweep import Task

# Equal epochs: time-budgeted runs stop after a measured time, so their rows differ run to run.
ARGS = ["bench", "--problems", "logistic2d,rosenbrock", "--optimizers", "sgd", "adam",
        "--seeds", "2", "--budget", "1", "--grid", "quick", "--no-progress", "--equal", "epochs"]
HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="ray is not installed")


def test_executor_ray_without_ray_exits_2_with_the_install_command(tmp_path, monkeypatch,
                                                                   capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))
    assert cli.main([*ARGS, "--out", str(tmp_path), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert "--executor ray needs Ray" in err and "pip install 'secondorder[ray]'" in err
    assert not (tmp_path / "results.sqlite").exists()


def test_address_needs_the_ray_executor(tmp_path, capsys):
    assert cli.main([*ARGS, "--out", str(tmp_path), "--address", "localhost:6379"]) == 2
    assert "--address needs --executor ray" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Invalid executor: 'dask'"):
        make_executor("dask")


def _rows(db) -> list[tuple]:
    """Runs and their measurements, minus wall times and row ids."""
    with Store(db) as st:
        out = []
        for r in st.runs():
            ms = [tuple(sorted((k, v) for k, v in m.items()
                               if k not in ("wall_time", "run_id", "id")))
                  for m in st.measurements(r["id"])]
            out.append((r["problem"], r["optimizer"], str(r["hyperparameters"]), r["seed"],
                        r["status"], tuple(ms)))
        return sorted(out)


@pytest.fixture(scope="module")
def ray_local():
    if not HAS_RAY:
        pytest.skip("ray is not installed")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@needs_ray
def test_ray_sweep_gives_the_same_rows_as_the_process_pool(ray_local, tmp_path):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert cli.main([*ARGS, "--out", str(local), "--workers", "1"]) == 0
    assert cli.main([*ARGS, "--out", str(on_ray), "--executor", "ray"]) == 0
    rows = _rows(on_ray / "results.sqlite")
    assert len(rows) == 16 and all(r[4] in ("finished", "diverged") for r in rows)
    assert rows == _rows(local / "results.sqlite")
    assert "## Summary" in (on_ray / "report.md").read_text()


def _tasks(n: int) -> list[Task]:
    return [Task("k", "rosenbrock", "sgd", (("lr", 1e-4),), seed, (("epochs", 1.0),), 1, None)
            for seed in range(n)]


def _dies_once(marker_dir: str):
    def task_fn(task):
        marker = os.path.join(marker_dir, f"seed{task.seed}")
        if task.seed == 0 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker process dies, as if killed
        return executors.run_task(task)

    return task_fn


@needs_ray
@pytest.mark.parametrize("retries, expected", [(1, "finished"), (0, "failed")])
def test_a_killed_worker_is_retried_or_recorded_as_failed(ray_local, tmp_path, retries,
                                                          expected):
    db = str(tmp_path / "r.db")
    counts = RayExecutor(max_retries=retries).execute_all(db, _tasks(2),
                                                          task_fn=_dies_once(str(tmp_path)))
    with Store(db) as st:
        runs = {r["seed"]: r for r in st.runs()}
    assert runs[1]["status"] == "finished"
    assert runs[0]["status"] == expected, runs[0]
    if expected == "failed":
        assert "Worker" in runs[0]["error"] or "died" in runs[0]["error"], runs[0]["error"]
        assert counts == {"finished": 1, "failed": 1}


class _InterruptAfterFirst:
    def update(self, n: int) -> None:
        raise KeyboardInterrupt


@needs_ray
def test_ctrl_c_cancels_and_the_next_run_resumes(ray_local, tmp_path):
    db = str(tmp_path / "r.db")
    with pytest.raises(KeyboardInterrupt):
        RayExecutor().execute_all(db, _tasks(4), bar=_InterruptAfterFirst())
    with Store(db) as st:
        statuses = sorted(r["status"] for r in st.runs())
    assert statuses.count("finished") == 1 and statuses.count("running") == 3
    counts = RayExecutor().execute_all(db, _tasks(4))
    assert counts == {"skipped": 1, "finished": 3}
    with Store(db) as st:
        assert sorted(r["status"] for r in st.runs()) == ["finished"] * 4
        assert st.count("runs") == 4


def _wait_mid_sweep(db: Path, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    """Wait until ``db`` has a run in flight and one that ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the driver ended before it could be killed"
        try:
            with sqlite3.connect(db, timeout=1) as c:
                seen = {s for (s,) in c.execute("SELECT DISTINCT status FROM runs")}
            if "running" in seen and seen & {"finished", "diverged", "failed"}:
                return
        except sqlite3.OperationalError:  # no database or schema yet
            pass
        time.sleep(0.1)
    raise AssertionError(f"no run ended while another ran within {timeout} s")


@needs_ray
def test_kill_9_of_a_ray_driver_then_the_same_command_resumes(ray_local, tmp_path):
    """``kill -9`` of a ``secondorder bench --executor ray`` driver mid-sweep (on this
    module's Ray, through ``--address``) leaves finished runs complete and the runs in
    flight ``running`` without measurements, claimed by the dead driver alone; the same
    command then takes those claims over, redoes only them and writes the report."""
    db = tmp_path / "results.sqlite"
    args = ["bench", "--problems", "rosenbrock", "--optimizers", "sgd", "--grid", "quick",
            "--seeds", "2", "--budget-seconds", "1", "--no-progress", "--out", str(tmp_path),
            "--executor", "ray", "--address", ray_local.get_runtime_context().gcs_address]
    src = str(Path(secondorder.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(tmp_path / "driver.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "secondorder.cli", *args], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_mid_sweep(db, proc)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=30)
    with Store(db, readonly=True) as st:
        before = {r["id"]: r for r in st.runs()}
        killed = {i for i, r in before.items() if r["status"] == "running"}
        assert killed and len(killed) < len(before)  # killed mid-sweep
        assert not any(st.measurements(i) for i in killed)  # nothing half-written
        assert all(st.measurements(i) for i in set(before) - killed)
    assert {r["owner"].split(":")[1] for r in before.values()} == {str(proc.pid)}

    assert cli.main(args) == 0  # the same command, here, on the same Ray
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        keys = c.execute("SELECT sweep, problem, optimizer, hyperparameters, seed, budget, "
                         "settings FROM runs").fetchall()
        assert len(keys) == len(set(keys)) == 4  # 3 learning rates, 1 more seed
    with Store(db, readonly=True) as st:
        after = {r["id"]: r for r in st.runs()}
        assert all(r["status"] in ("finished", "diverged") and st.measurements(i)
                   for i, r in after.items())
    for i in killed:  # the dead driver's claims taken over by this process
        assert after[i]["attempts"] == 2
        assert after[i]["owner"].split(":")[1] == str(os.getpid())
    for i in set(before) - killed:  # finished before the kill: not redone
        assert after[i]["attempts"] == 1 and after[i]["finished"] == before[i]["finished"]
    assert "## Summary" in (tmp_path / "report.md").read_text()

"""Fault injection through the command line: concurrent sweeps on one folder, kill -9 and
resume, read-only and corrupted databases, failed runs retried once the cause is fixed.

Real processes where the fault is about processes (``python -m secondorder.cli``); the rest
in-process. Problems are tiny; ``--budget-seconds`` makes runs last long enough to overlap.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

import secondorder
from secondorder import cli
from secondorder.bench.store import Store

SRC = str(Path(secondorder.__file__).resolve().parents[1])
ROSENBROCK = ["--problems", "rosenbrock", "--optimizers", "sgd", "--grid", "quick",
              "--seeds", "1", "--no-progress", "--equal", "epochs"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _bench(args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "secondorder.cli", "bench", *args],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def _check_consistent(db: Path) -> list[dict]:
    """Every run terminal and stored once, every measurement belongs to a run."""
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert c.execute("SELECT COUNT(*) FROM measurements WHERE run_id NOT IN "
                         "(SELECT id FROM runs)").fetchone()[0] == 0
        keys = c.execute("SELECT sweep, problem, optimizer, hyperparameters, seed, budget, "
                         "settings FROM runs").fetchall()
        assert len(keys) == len(set(keys))
    with Store(db, readonly=True) as st:
        runs = st.runs()
        assert all(r["status"] in ("finished", "diverged") for r in runs)
        for r in runs:  # a finished or diverged run has its evaluations
            assert st.measurements(r["id"])
    return runs


# ------------------------------------------------------------------- concurrency
def test_two_bench_processes_on_one_folder_both_finish_and_store_each_run_once(tmp_path):
    args = [*ROSENBROCK, "--problems", "rosenbrock,logistic2d", "--budget-seconds", "0.4",
            "--workers", "1", "--out", str(tmp_path)]
    procs = [_bench(args) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    runs = _check_consistent(tmp_path / "results.sqlite")
    # 2 problems x 3 learning rates, seed 0 only; nobody ran a run another process held.
    assert len(runs) == 6 and all(r["attempts"] == 1 for r in runs)
    assert len({r["owner"] for r in runs}) in (1, 2)
    for _, err in outs:
        assert "Traceback" not in err
    assert "## Summary" in (tmp_path / "report.md").read_text()


# ------------------------------------------------------------------- kill -9 and resume
def _wait_for_running_run(db: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=1) as c:
                    if c.execute("SELECT COUNT(*) FROM runs WHERE status='running'"
                                 ).fetchone()[0]:
                        return
            except sqlite3.OperationalError:  # schema not there yet
                pass
        time.sleep(0.1)
    raise AssertionError("no run started")


def test_kill_9_of_the_bench_leaves_no_process_and_a_rerun_completes_the_sweep(tmp_path):
    db = tmp_path / "results.sqlite"
    args = [*ROSENBROCK, "--budget-seconds", "3", "--out", str(tmp_path)]
    proc = _bench([*args, "--workers", "2"])
    children: list[psutil.Process] = []
    try:
        _wait_for_running_run(db, proc)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 2  # two workers (and the resource tracker)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)  # not communicate(): orphans would hold its pipes open
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        for p in children:  # never leave a process behind, even when the test fails
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        proc.kill()
        proc.wait(timeout=30)
    with Store(db, readonly=True) as st:
        before = {r["id"]: r for r in st.runs()}
        killed = {i for i, r in before.items() if r["status"] == "running"}
        assert killed and not any(st.measurements(i) for i in killed)
    dead = {str(p.pid) for p in children} | {str(proc.pid)}
    assert all(before[i]["owner"].split(":")[1] in dead for i in killed)
    # The rerun (in this process) takes the dead workers' claims over and finishes.
    assert cli.main(["bench", *args, "--workers", "1"]) == 0
    runs = _check_consistent(db)
    assert len(runs) == 3
    assert {r["id"] for r in runs if r["attempts"] == 2} == killed
    for r in runs:
        if r["id"] in killed:  # now this process's run
            assert r["owner"].split(":")[1] == str(os.getpid())
        elif r["id"] in before:  # ended before the kill: not redone
            assert r["finished"] == before[r["id"]]["finished"] and r["attempts"] == 1
    assert "## Summary" in (tmp_path / "report.md").read_text()


# ------------------------------------------------------------------- read-only
def _set_read_only(path: Path, on: bool) -> None:
    """Permissions for a user; root ignores them, so as root the immutable attribute."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True,
                       capture_output=True)
    else:
        path.chmod((0o555 if path.is_dir() else 0o444) if on else 0o755)


def test_read_only_folders_and_databases(tmp_path, capsys):
    if os.geteuid() == 0 and shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: nothing is read-only")
    ro_folder, ro_file = tmp_path / "ro-folder", tmp_path / "ro-file"
    args = ["bench", *ROSENBROCK, "--budget", "1", "--workers", "1"]
    assert cli.main([*args, "--out", str(ro_file)]) == 0
    db = ro_file / "results.sqlite"
    ro_folder.mkdir()
    locked = [ro_folder, db]
    try:
        for path in locked:
            _set_read_only(path, True)
        before = db.read_bytes()
        capsys.readouterr()
        assert cli.main([*args, "--out", str(ro_folder)]) == 2
        assert capsys.readouterr().err == (
            f"secondorder: error: {ro_folder}: the results folder is read-only; make it "
            "writable or pass another --out\n")
        assert list(ro_folder.iterdir()) == []
        assert cli.main([*args, "--out", str(ro_file)]) == 2
        assert capsys.readouterr().err == (
            f"secondorder: error: {db}: the results database is read-only; make it writable "
            "or pass another --out\n")
        # export reads it, without switching its journal or writing anything.
        assert cli.main(["export", "--out", str(ro_file)]) == 0
        assert db.read_bytes() == before
        assert (ro_file / "export" / "runs.csv").read_text().count("\n") == 1 + 3
        # so does report (issue 10: it opens the database read-only).
        assert cli.main(["report", "--out", str(ro_file)]) == 0
        assert db.read_bytes() == before
    finally:
        for path in locked:
            _set_read_only(path, False)


# ------------------------------------------------------------------- corrupted databases
def _flip_a_leaf_page(db: Path) -> bytes:
    raw = bytearray(db.read_bytes())
    page = int.from_bytes(raw[16:18], "big")
    leaf = next(i * page for i in range(1, len(raw) // page)
                if raw[i * page] == 0x0D and int.from_bytes(raw[i * page + 3:i * page + 5],
                                                            "big") >= 10)
    for k in range(16):
        raw[leaf + 8 + k] ^= 0xFF
    db.write_bytes(bytes(raw))
    return bytes(raw)


def _populated(out: Path) -> Path:
    db = out / "results.sqlite"
    with Store(db) as st:
        for i in range(40):
            rid = st.start_run("bench", "rosenbrock", "sgd", {"lr": i}, 0, {"epochs": 1})
            st.finish_run(rid, "finished", [{"step": j, "train_loss": j} for j in range(20)])
        st.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db


@pytest.mark.parametrize("fault", ["garbage", "truncated", "flipped bytes"])
def test_corrupted_databases_are_refused_by_every_command_and_left_alone(tmp_path, capsys,
                                                                         fault):
    db = _populated(tmp_path)
    if fault == "garbage":
        db.write_bytes(b"\x00\x17garbage" * 500)
        expected = "not a SQLite database (garbage or truncated file); move it away"
    elif fault == "truncated":
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])
        expected = "damaged database ("
    else:
        _flip_a_leaf_page(db)
        expected = "damaged database (integrity check: "
    before = db.read_bytes()
    for args in (["bench", *ROSENBROCK, "--budget", "1", "--workers", "1"], ["report"],
                 ["export"]):
        assert cli.main([*args, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"secondorder: error: {db}: {expected}"), err
        assert err.count("\n") == 1  # one line
    assert db.read_bytes() == before
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "export").exists()


# ------------------------------------------------------------------- failed runs
def test_failed_runs_are_retried_once_the_cause_is_fixed(tmp_path, capsys, monkeypatch):
    from secondorder.bench import sweep

    def broken(*a, **k):
        raise RuntimeError("injected fault")

    args = ["bench", *ROSENBROCK, "--budget", "1", "--workers", "1", "--out", str(tmp_path)]
    monkeypatch.setattr(sweep, "run", broken)
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "every run of sweep 'bench' failed (3 runs)" in err and "injected fault" in err
    db = tmp_path / "results.sqlite"
    with Store(db) as st:
        assert [r["status"] for r in st.runs()] == ["failed"] * 3
        assert st.count("measurements") == 0
    assert not (tmp_path / "report.md").exists()
    # --no-retry-failed keeps them.
    assert cli.main([*args, "--no-retry-failed"]) == 1
    monkeypatch.undo()
    # Fixed: the default retries each failed run, in its own row.
    assert cli.main(args) == 0
    assert "new or redone: 3" in capsys.readouterr().out
    runs = _check_consistent(db)
    assert len(runs) == 3 and [r["attempts"] for r in runs] == [2, 2, 2]
    assert all(r["error"] is None or "injected" not in r["error"] for r in runs)


# ------------------------------------------------------------------- data files
def _write_idx(path: Path, array: np.ndarray) -> None:
    array = np.asarray(array, dtype=np.uint8)
    magic = 2051 if array.ndim == 3 else 2049
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(f">i{array.ndim}i", magic, *array.shape) + array.tobytes())


def test_bad_labels_stop_the_sweep_and_a_fixed_or_changed_file_makes_new_runs(tmp_path,
                                                                             capsys):
    data, out = tmp_path / "data" / "mnist", tmp_path / "out"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_idx(data / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (60, 28, 28)))
    labels = np.arange(60) % 10
    labels[7] = 10
    label_file = data / "t10k-labels-idx1-ubyte.gz"
    _write_idx(label_file, labels)
    args = ["bench", "--problems", "mnist_mlp1", "--optimizers", "sgd", "--grid", "quick",
            "--seeds", "1", "--budget", "1", "--no-progress", "--workers", "1",
            "--equal", "epochs", "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    assert cli.main(args) == 2
    assert capsys.readouterr().err == (
        f"secondorder: error: data (--data-dir): {label_file}: label 10 at index 7 is outside "
        "0..9 (1 such labels); expected 10-class labels\n")
    assert not (out / "results.sqlite").exists()
    labels[7] = 7
    _write_idx(label_file, labels)
    assert cli.main(args) == 0
    assert "new or redone: 3" in capsys.readouterr().out
    labels[8] = 0  # another data set: its runs are new runs, not the old ones reused
    _write_idx(label_file, labels)
    assert cli.main(args) == 0
    assert "new or redone: 3" in capsys.readouterr().out
    runs = _check_consistent(out / "results.sqlite")
    assert len(runs) == 6 and len({r["settings"]["data"] for r in runs}) == 2

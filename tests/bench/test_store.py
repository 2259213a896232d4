"""The SQLite results store: runs, measurements, resume, concurrency, export."""

import csv
import json
import subprocess
import sys
import textwrap

import pytest

from secondorder.bench.store import Store

KEY = dict(sweep="s", problem="p", optimizer="sgd", hyperparameters={"lr": 0.1, "b": 2},
           seed=0, budget={"epochs": 1.0})


def _ms(k):
    return [{"step": i, "epoch": i / 2, "train_loss": 1.0 / (i + 1), "val_acc": 0.5,
             "optimizer_counters": {"hvps": i}} for i in range(k)]


def test_run_round_trip(tmp_path):
    with Store(tmp_path / "r.db") as st:
        rid = st.start_run(**KEY)
        assert st.find_run(**KEY)["status"] == "running"
        st.finish_run(rid, "finished", _ms(3))
        run = st.find_run(**{**KEY, "hyperparameters": {"b": 2, "lr": 0.1}})  # key order free
        assert run["id"] == rid and run["status"] == "finished"
        assert run["hyperparameters"] == {"lr": 0.1, "b": 2}
        ms = st.measurements(rid)
        assert [m["step"] for m in ms] == [0, 1, 2]
        assert ms[2]["train_loss"] == pytest.approx(1 / 3) and ms[1]["test_acc"] is None
        assert ms[2]["optimizer_counters"] == {"hvps": 2}
        # A finished run is not claimed again.
        assert st.start_run(**KEY) is None
        assert st.count("runs") == 1 and st.count("measurements") == 3


def test_interrupted_run_is_redone(tmp_path):
    with Store(tmp_path / "r.db") as st:
        rid = st.start_run(**KEY)
        # Simulate partial rows left by a killed process.
        st.conn.execute("INSERT INTO measurements (run_id, step) VALUES (?, 0)", (rid,))
        new = st.start_run(**KEY)
        assert new is not None and new != rid
        assert st.count("runs") == 1 and st.count("measurements") == 0
        st.finish_run(new, "diverged", _ms(2), error="loss nan")
        assert st.runs(status="diverged")[0]["error"] == "loss nan"


def test_bad_status_and_table(tmp_path):
    with Store(tmp_path / "r.db") as st:
        rid = st.start_run(**KEY)
        with pytest.raises(ValueError, match="Invalid final status: 'done'"):
            st.finish_run(rid, "done", [])
        with pytest.raises(ValueError, match="Invalid table: 'x'"):
            st.count("x")


def test_environment_meta_and_exports(tmp_path):
    with Store(tmp_path / "r.db") as st:
        st.record_environment()
        env = st.environment()[0]
        import torch

        assert env["torch"] == torch.__version__ and env["threads"] >= 1
        st.set_meta("s", "skipped", {"X": "missing"})
        assert st.get_meta("s", "skipped") == {"X": "missing"}
        assert st.get_meta("s", "none", 7) == 7
        rid = st.start_run(**KEY)
        st.finish_run(rid, "finished", _ms(2))
        paths = st.export_csv(tmp_path / "csv")
        rows = list(csv.DictReader(open(paths[1])))
        assert len(rows) == 2 and float(rows[1]["train_loss"]) == pytest.approx(0.5)
        data = json.load(open(st.export_json(tmp_path / "all.json")))
        assert data["runs"][0]["measurements"][1]["step"] == 1
        assert st.sweeps() == ["s"]


WRITER = textwrap.dedent("""
    import sys
    from secondorder.bench.store import Store
    path, tag = sys.argv[1], sys.argv[2]
    with Store(path, timeout=60) as st:
        for i in range(25):
            rid = st.start_run("s", "p", tag, {"i": i}, 0, {"epochs": 1})
            st.finish_run(rid, "finished", [{"step": j, "train_loss": j} for j in range(8)])
""")


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    db = tmp_path / "c.db"
    Store(db).close()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), tag]) for tag in "ab"]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    with Store(db) as st:
        assert st.count("runs") == 50 and st.count("measurements") == 400
        assert len(st.runs(status="finished")) == 50

"""The SQLite results store: runs, measurements, resume, concurrency, export."""

import csv
import json
import re
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from secondorder.bench.store import Claim, Store, StoreError, owner_id

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
        # The abandoned claim is this process's own: taken over, same row, second attempt.
        new = st.start_run(**KEY)
        assert new == rid and st.find_run(**KEY)["attempts"] == 2
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


# ---------------------------------------------------------------------------- claims
CLAIMER = textwrap.dedent("""
    import sys, time
    from secondorder.bench.store import Store
    with Store(sys.argv[1]) as st:
        assert st.start_run("s", "p", "sgd", {"lr": 0.1, "b": 2}, 0, {"epochs": 1.0}) == 1
    print("claimed", flush=True)
    time.sleep(120)
""")


def test_a_live_owners_claim_is_respected_and_a_dead_owners_is_taken_over(tmp_path):
    db = tmp_path / "r.db"
    proc = subprocess.Popen([sys.executable, "-c", CLAIMER, str(db)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "claimed"
        with Store(db) as st:
            assert st.claim_run(**KEY).state == "busy" and st.start_run(**KEY) is None
            proc.kill()
            proc.wait(timeout=30)
            claim = st.claim_run(**KEY)
            assert claim == Claim("claimed", 1)
            run = st.find_run(**KEY)
            assert run["owner"] == owner_id() and run["attempts"] == 2
            assert st.finish_run(1, "finished", _ms(2)) and st.count("measurements") == 2
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_claims_of_other_hosts_expire_with_their_lease(tmp_path):
    with Store(tmp_path / "r.db", lease=60.0) as st:
        rid = st.start_run(**KEY)
        other = "elsewhere.example:1:0123"
        st.conn.execute("UPDATE runs SET owner=?, heartbeat=? WHERE id=?",
                        (other, time.time() - 30.0, rid))
        assert st.claim_run(**KEY).state == "busy"  # 30 s old heartbeat < 60 s lease
        # The original owner's heartbeat and finish fail: it is not the owner.
        assert not st.heartbeat(rid)
        st.conn.execute("UPDATE runs SET heartbeat=? WHERE id=?", (time.time() - 61.0, rid))
        assert st.claim_run(**KEY) == Claim("claimed", rid)
        # The other host comes back and tries to finish: nothing is written.
        st.conn.execute("UPDATE runs SET owner=? WHERE id=?", (other, rid))
        assert not st.finish_run(rid, "finished", _ms(3))
        assert st.count("measurements") == 0 and st.find_run(**KEY)["status"] == "running"


def test_keep_alive_renews_the_heartbeat(tmp_path):
    with Store(tmp_path / "r.db") as st:
        rid = st.start_run(**KEY)
        t0 = st.find_run(**KEY)["heartbeat"]
        with st.keep_alive(rid, interval=0.05):
            time.sleep(0.5)
        assert st.find_run(**KEY)["heartbeat"] > t0 + 0.2


def test_failed_runs_are_claimed_again_only_when_asked(tmp_path):
    with Store(tmp_path / "r.db") as st:
        rid = st.start_run(**KEY)
        st.finish_run(rid, "failed", _ms(1), error="IndexError: boom")
        since = time.time()
        assert st.claim_run(**KEY).state == "done"
        # A failure recorded after the sweep started is not retried by that sweep.
        assert st.claim_run(**KEY, retry_failed_before=since - 60).state == "done"
        assert st.start_run(**KEY, retry_failed_before=since + 1) == rid
        run = st.find_run(**KEY)
        assert (run["status"], run["error"], run["attempts"]) == ("running", None, 2)
        assert st.count("measurements") == 0
        # Diverged and finished runs are results: never retried.
        st.finish_run(rid, "diverged", _ms(1))
        assert st.start_run(**KEY, retry_failed_before=time.time() + 1) is None


def test_settings_are_part_of_the_key(tmp_path):
    with Store(tmp_path / "r.db") as st:
        a = st.start_run(**KEY, settings={"evals_per_epoch": 1})
        b = st.start_run(**KEY, settings={"evals_per_epoch": 2})
        assert a != b and st.find_run(**KEY, settings={"evals_per_epoch": 2})["id"] == b
        assert st.find_run(**KEY) is None


def test_version_1_database_is_migrated_keeping_its_runs(tmp_path):
    db = tmp_path / "v1.db"
    with sqlite3.connect(db) as c:
        c.executescript("""
            CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, sweep TEXT NOT NULL,
              problem TEXT NOT NULL, optimizer TEXT NOT NULL, hyperparameters TEXT NOT NULL,
              seed INTEGER NOT NULL, budget TEXT NOT NULL, status TEXT NOT NULL, started REAL,
              finished REAL, error TEXT,
              UNIQUE (sweep, problem, optimizer, hyperparameters, seed, budget));
            CREATE TABLE measurements (run_id INTEGER NOT NULL REFERENCES runs(id)
              ON DELETE CASCADE, step REAL, train_loss REAL, optimizer_counters TEXT);
            INSERT INTO runs VALUES (1, 's', 'p', 'sgd', '{"lr":0.1}', 0, '{"epochs":1}',
              'finished', 1.0, 2.0, NULL);
            INSERT INTO measurements VALUES (1, 0, 0.5, NULL), (1, 1, 0.25, NULL);
        """)
    with Store(db) as st:
        (run,) = st.runs()
        assert (run["settings"], run["attempts"], run["status"]) == ({}, 1, "finished")
        assert [m["train_loss"] for m in st.measurements(1)] == [0.5, 0.25]
        assert st.conn.execute("PRAGMA foreign_key_check").fetchall() == []


# ---------------------------------------------------------------------------- faults
def _sweep_db(path):
    with Store(path) as st:
        for i in range(40):
            rid = st.start_run("s", "p", "sgd", {"lr": i}, 0, {"epochs": 1})
            st.finish_run(rid, "finished", _ms(20))
        st.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def test_an_empty_file_is_an_empty_database(tmp_path):
    (tmp_path / "results.sqlite").write_bytes(b"")
    with Store(tmp_path / "results.sqlite") as st:
        assert st.count("runs") == 0


@pytest.mark.parametrize("fault, message", [
    ("garbage", r"not a SQLite database \(garbage or truncated file\); move it away"),
    ("header only", r"damaged database \(database disk image is malformed\); restore it"),
    ("half", r"damaged database \(.*\); restore it from a backup or move it away"),
])
def test_a_file_that_is_not_a_whole_database_is_refused_and_left_alone(tmp_path, fault,
                                                                      message):
    db = tmp_path / "results.sqlite"
    whole = _sweep_db(db).read_bytes()
    content = {"garbage": b"garbage " * 100, "header only": whole[:60],
               "half": whole[:len(whole) // 2]}[fault]
    db.write_bytes(content)
    for readonly in (False, True):
        with pytest.raises(StoreError, match=rf"^{re.escape(str(db))}: {message}"):
            Store(db, readonly=readonly)
    assert db.read_bytes() == content


def test_a_damaged_database_is_refused_before_anything_is_written(tmp_path):
    db = _sweep_db(tmp_path / "results.sqlite")
    raw = bytearray(db.read_bytes())
    page = int.from_bytes(raw[16:18], "big")
    # The first table-leaf page (type 0x0D) after page 1 with 10+ cells: flip its cell
    # pointers (bytes 8.. of the page), as a bad sector or a stray write would.
    leaf = next(i * page for i in range(1, len(raw) // page)
                if raw[i * page] == 0x0D and int.from_bytes(raw[i * page + 3:i * page + 5],
                                                            "big") >= 10)
    for k in range(16):
        raw[leaf + 8 + k] ^= 0xFF
    db.write_bytes(bytes(raw))
    c = sqlite3.connect(db)  # the oracle: SQLite's own check fails
    assert c.execute("PRAGMA integrity_check").fetchone()[0] != "ok"
    c.close()
    for readonly in (False, True):
        with pytest.raises(StoreError, match=r"damaged database \(integrity check: .*"
                                             r"nothing was written"):
            Store(db, readonly=readonly)
    assert db.read_bytes() == bytes(raw)
    wal = tmp_path / "results.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0


def test_readonly_open_writes_nothing_and_keeps_the_journal_mode(tmp_path):
    db = tmp_path / "results.sqlite"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE runs (id INTEGER)")
    db.chmod(0o444)
    before = db.read_bytes()
    with Store(db, readonly=True) as st:
        assert st.conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert st.runs() == []
    assert db.read_bytes() == before and not (tmp_path / "results.sqlite-wal").exists()


def test_opening_retries_a_database_locked_at_once_by_another_process(tmp_path, monkeypatch):
    # Seen in CI: two bench processes opening one new database; one got "database is
    # locked" from the WAL switch without SQLite's busy handler and exited 2.
    real, calls = Store._prepare, []

    def locked_twice(self):
        calls.append(1)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return real(self)

    monkeypatch.setattr(Store, "_prepare", locked_twice)
    with Store(tmp_path / "r.db") as st:
        assert st.runs() == [] and len(calls) == 3

    def always_locked(self):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(Store, "_prepare", always_locked)
    start = time.monotonic()
    with pytest.raises(StoreError, match="database is locked"):
        Store(tmp_path / "r.db", timeout=0.2)
    assert time.monotonic() - start < 10  # gives up after its timeout

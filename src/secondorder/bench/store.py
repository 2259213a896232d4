"""The results database: SQLite through the standard library.

Tables:

- ``runs``: one row per run, keyed by ``(sweep, problem, optimizer, hyperparameters,
  seed, budget)`` (hyperparameters and budget as canonical JSON). ``status`` is
  ``running`` while a run is in flight, then one of :data:`TERMINAL` = ``finished``,
  ``diverged``, ``failed``.
- ``measurements``: the per-evaluation records of a run (losses, accuracies, wall time
  without evaluation, harness cost counts, the optimizer's own counters as JSON).
- ``environment``: versions, device, threads, host and platform of each process that ran.
- ``meta``: per-sweep facts as JSON (the sweep's configuration, skipped optimizers).

Several worker processes write at once safely: one connection per process, WAL journal,
``busy_timeout`` and ``BEGIN IMMEDIATE`` transactions. A run is first inserted as
``running``; its measurements and terminal status are written in **one** transaction at
the end, so a killed run leaves a ``running`` row (and no partial measurements) that
:meth:`Store.start_run` deletes and redoes: rerunning a sweep skips terminal runs and
redoes the rest.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import socket
import sqlite3
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MEASUREMENT_COLUMNS", "TERMINAL", "Store", "canonical_json"]

TERMINAL = ("finished", "diverged", "failed")

#: Numeric columns of ``measurements`` besides ``run_id`` and ``optimizer_counters``.
MEASUREMENT_COLUMNS = (
    "step", "epoch", "data_epoch", "wall_time",
    "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
    "forwards", "forward_samples", "gradients", "gradient_samples", "hvps", "hvp_samples",
    "backprops",
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sweep TEXT NOT NULL,
    problem TEXT NOT NULL,
    optimizer TEXT NOT NULL,
    hyperparameters TEXT NOT NULL,
    seed INTEGER NOT NULL,
    budget TEXT NOT NULL,
    status TEXT NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    UNIQUE (sweep, problem, optimizer, hyperparameters, seed, budget)
);
CREATE TABLE IF NOT EXISTS measurements (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    {", ".join(f"{c} REAL" for c in MEASUREMENT_COLUMNS)},
    optimizer_counters TEXT
);
CREATE INDEX IF NOT EXISTS measurements_run ON measurements(run_id);
CREATE TABLE IF NOT EXISTS environment (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded REAL, python TEXT, torch TEXT, numpy TEXT, secondorder TEXT,
    device TEXT, threads INTEGER, hostname TEXT, platform TEXT, pid INTEGER
);
CREATE TABLE IF NOT EXISTS meta (
    sweep TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (sweep, key)
);
"""


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces: equal dicts give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def environment_info(device: str = "cpu") -> dict[str, Any]:
    """Versions and machine facts recorded in ``environment``."""
    import numpy
    import torch

    import secondorder

    return {
        "recorded": time.time(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "secondorder": secondorder.__version__,
        "device": device,
        "threads": torch.get_num_threads(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "pid": os.getpid(),
    }


class Store:
    """One process's connection to the results database at ``path`` (created if absent).

    Args:
        path: the SQLite file.
        timeout: seconds to wait for a lock held by another process.
    """

    def __init__(self, path: str | Path, timeout: float = 120.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA foreign_keys = ON")
        with self.transaction():
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    self.conn.execute(stmt)

    # ------------------------------------------------------------------ plumbing
    def transaction(self):
        """A ``BEGIN IMMEDIATE`` ... ``COMMIT`` block (rolled back on error)."""
        store = self

        class _Tx:
            def __enter__(self):
                store.conn.execute("BEGIN IMMEDIATE")
                return store.conn

            def __exit__(self, exc_type, exc, tb):
                store.conn.execute("ROLLBACK" if exc_type else "COMMIT")
                return False

        return _Tx()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ writes
    def record_environment(self, device: str = "cpu") -> None:
        """Insert this process's :func:`environment_info`."""
        info = environment_info(device)
        with self.transaction() as c:
            c.execute(
                f"INSERT INTO environment ({', '.join(info)}) VALUES "
                f"({', '.join('?' * len(info))})",
                tuple(info.values()),
            )

    def _key(self, sweep, problem, optimizer, hyperparameters, seed, budget):
        return (sweep, problem, optimizer, canonical_json(dict(hyperparameters)), int(seed),
                canonical_json(dict(budget)))

    def find_run(
        self, sweep: str, problem: str, optimizer: str, hyperparameters: Mapping[str, Any],
        seed: int, budget: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        """The run with this key, or ``None``."""
        row = self.conn.execute(
            "SELECT * FROM runs WHERE sweep=? AND problem=? AND optimizer=? AND "
            "hyperparameters=? AND seed=? AND budget=?",
            self._key(sweep, problem, optimizer, hyperparameters, seed, budget),
        ).fetchone()
        return None if row is None else self._run_dict(row)

    def start_run(
        self, sweep: str, problem: str, optimizer: str, hyperparameters: Mapping[str, Any],
        seed: int, budget: Mapping[str, Any],
    ) -> int | None:
        """Claim a run: insert it as ``running`` and return its id.

        A previous non-terminal row with the same key (an interrupted run) is deleted with
        its measurements first. Returns ``None`` if the run already has a terminal status
        (nothing to do).
        """
        key = self._key(sweep, problem, optimizer, hyperparameters, seed, budget)
        with self.transaction() as c:
            row = c.execute(
                "SELECT id, status FROM runs WHERE sweep=? AND problem=? AND optimizer=? AND "
                "hyperparameters=? AND seed=? AND budget=?",
                key,
            ).fetchone()
            if row is not None:
                if row["status"] in TERMINAL:
                    return None
                c.execute("DELETE FROM measurements WHERE run_id=?", (row["id"],))
                c.execute("DELETE FROM runs WHERE id=?", (row["id"],))
            cur = c.execute(
                "INSERT INTO runs (sweep, problem, optimizer, hyperparameters, seed, budget, "
                "status, started) VALUES (?, ?, ?, ?, ?, ?, 'running', ?)",
                (*key, time.time()),
            )
            return int(cur.lastrowid)

    def finish_run(
        self,
        run_id: int,
        status: str,
        measurements: Sequence[Mapping[str, Any]],
        error: str | None = None,
    ) -> None:
        """Write all measurements and the terminal ``status`` in one transaction.

        Raises:
            ValueError: if ``status`` is not terminal.
        """
        if status not in TERMINAL:
            raise ValueError(f"Invalid final status: {status!r}; choose one of {TERMINAL}")
        cols = (*MEASUREMENT_COLUMNS, "optimizer_counters")
        rows = []
        for m in measurements:
            counters = m.get("optimizer_counters")
            rows.append(
                (run_id, *(_num(m.get(col)) for col in MEASUREMENT_COLUMNS),
                 None if counters is None else canonical_json(counters))
            )
        with self.transaction() as c:
            c.executemany(
                f"INSERT INTO measurements (run_id, {', '.join(cols)}) VALUES "
                f"({', '.join('?' * (len(cols) + 1))})",
                rows,
            )
            c.execute(
                "UPDATE runs SET status=?, finished=?, error=? WHERE id=?",
                (status, time.time(), error, run_id),
            )

    def set_meta(self, sweep: str, key: str, value: Any) -> None:
        """Store ``value`` (JSON-serializable) under ``(sweep, key)``, replacing any."""
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO meta (sweep, key, value) VALUES (?, ?, ?)",
                (sweep, key, canonical_json(value)),
            )

    def get_meta(self, sweep: str, key: str, default: Any = None) -> Any:
        """The value stored under ``(sweep, key)``, or ``default``."""
        row = self.conn.execute(
            "SELECT value FROM meta WHERE sweep=? AND key=?", (sweep, key)
        ).fetchone()
        return default if row is None else json.loads(row[0])

    def sweeps(self) -> list[str]:
        """Names of the sweeps that have runs, the most recently active last."""
        rows = self.conn.execute("SELECT sweep, MAX(id) FROM runs GROUP BY sweep ORDER BY 2")
        return [r[0] for r in rows]

    # ------------------------------------------------------------------ reads
    @staticmethod
    def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
        d = dict(row)
        d["hyperparameters"] = json.loads(d["hyperparameters"])
        d["budget"] = json.loads(d["budget"])
        return d

    def runs(self, sweep: str | None = None, status: str | Iterable[str] | None = None
             ) -> list[dict[str, Any]]:
        """Runs (optionally of one sweep and with given statuses), ordered by id."""
        q, args = "SELECT * FROM runs WHERE 1=1", []
        if sweep is not None:
            q += " AND sweep=?"
            args.append(sweep)
        if status is not None:
            sts = (status,) if isinstance(status, str) else tuple(status)
            q += f" AND status IN ({', '.join('?' * len(sts))})"
            args.extend(sts)
        return [self._run_dict(r) for r in self.conn.execute(q + " ORDER BY id", args)]

    def measurements(self, run_id: int) -> list[dict[str, Any]]:
        """The measurements of a run, in step order."""
        out = []
        for r in self.conn.execute(
            "SELECT * FROM measurements WHERE run_id=? ORDER BY step, rowid", (run_id,)
        ):
            d = dict(r)
            if d["optimizer_counters"] is not None:
                d["optimizer_counters"] = json.loads(d["optimizer_counters"])
            out.append(d)
        return out

    def environment(self) -> list[dict[str, Any]]:
        """The recorded environments."""
        return [dict(r) for r in self.conn.execute("SELECT * FROM environment ORDER BY id")]

    def count(self, table: str) -> int:
        """Number of rows of ``runs``, ``measurements`` or ``environment``."""
        if table not in ("runs", "measurements", "environment"):
            raise ValueError(f"Invalid table: {table!r}")
        return int(self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    # ------------------------------------------------------------------ export
    def export_csv(self, directory: str | Path) -> list[Path]:
        """Write ``runs.csv``, ``measurements.csv`` and ``environment.csv`` to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for table in ("runs", "measurements", "environment"):
            cur = self.conn.execute(f"SELECT * FROM {table}")
            path = directory / f"{table}.csv"
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow([d[0] for d in cur.description])
                w.writerows(cur)
            paths.append(path)
        return paths

    def export_json(self, path: str | Path) -> Path:
        """Write every run with its measurements, and the environments, as one JSON file."""
        path = Path(path)
        runs = self.runs()
        for r in runs:
            r["measurements"] = self.measurements(r["id"])
        with open(path, "w") as f:
            json.dump({"runs": runs, "environment": self.environment()}, f, indent=1,
                      default=str)
        return path


def _num(x: Any) -> float | None:
    if x is None:
        return None
    return float(x)

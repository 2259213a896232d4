"""The results database: SQLite through the standard library.

Tables:

- ``runs``: one row per run, keyed by ``(sweep, problem, optimizer, hyperparameters,
  seed, budget, settings)`` (hyperparameters, budget and settings as canonical JSON;
  ``settings`` holds every other input that changes the result: the evaluation frequency
  and the identity of the data files). ``status`` is ``running`` while a run is in
  flight, then one of :data:`TERMINAL` = ``finished``, ``diverged``, ``failed``.
  ``owner``/``heartbeat`` are the claim of a running run, ``attempts`` counts claims.
- ``measurements``: the per-evaluation records of a run (losses, accuracies, wall time
  without evaluation, harness cost counts, the optimizer's own counters as JSON).
- ``environment``: versions, device, threads, host and platform of each process that ran.
- ``meta``: per-sweep facts as JSON (the sweep's configuration, skipped optimizers).

**Several processes write at once** (worker processes of one sweep, or several
``secondorder bench`` processes on one ``--out``): one connection per process, WAL journal,
``busy_timeout`` and ``BEGIN IMMEDIATE`` transactions. A run is **claimed** atomically
(:meth:`Store.claim_run`): its row is inserted or taken over as ``running`` with an
``owner`` (``host:pid:uuid`` of the claiming process, :func:`owner_id`) and a
``heartbeat`` time that the executing process renews (:meth:`Store.keep_alive`). Another
process takes a ``running`` row over only when the claim is **stale**: its owner process
is dead (same host), or its heartbeat is older than the lease (``lease`` seconds, any
host). Measurements and the terminal status are written in **one** transaction at the end
(:meth:`Store.finish_run`), and only while the writer still owns the claim, so a killed
run leaves a ``running`` row without measurements, and a run is never stored twice.
Ownership and liveness of a claim (:func:`owner_id`, :func:`claim_is_stale`, :class:`Claim`)
live in :mod:`secondorder.bench.claims`.

Failed runs (an exception, no result) are claimed again when the caller passes
``retry_failed_before``: a sweep retries each run that failed before it started, once.

**Faults** raise :class:`StoreError`, one line naming the file and what to do: a folder
or file that cannot be written, a file that is not a SQLite database (garbage,
truncated), or a database whose ``PRAGMA quick_check`` fails (checked on open, before
anything is written). ``Store(path, readonly=True)`` never writes (no WAL switch, no
schema), for exports from read-only files.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from secondorder.bench.claims import LEASE_SECONDS, Claim, claim_is_stale, owner_id

__all__ = [
    "LEASE_SECONDS",
    "MEASUREMENT_COLUMNS",
    "TERMINAL",
    "Claim",
    "Store",
    "StoreError",
    "canonical_json",
    "owner_id",
]

TERMINAL = ("finished", "diverged", "failed")
#: ``PRAGMA user_version`` of the current schema (1: no settings/claims; 2: this one).
SCHEMA_VERSION = 2

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
    settings TEXT NOT NULL DEFAULT '{{}}',
    status TEXT NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    owner TEXT,
    heartbeat REAL,
    attempts INTEGER NOT NULL DEFAULT 1,
    UNIQUE (sweep, problem, optimizer, hyperparameters, seed, budget, settings)
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


class StoreError(Exception):
    """A results database that cannot be used: one line naming the file and the remedy."""


def _fault(path: Path, what: str, remedy: str) -> StoreError:
    return StoreError(f"{path}: {what}; {remedy}")


_NOT_A_DATABASE = ("not a SQLite database (garbage or truncated file)",
                   "move it away or pass another --out, then rerun")
_DAMAGED_REMEDY = "restore it from a backup or move it away and rerun; nothing was written"


def _is_busy(err: sqlite3.Error) -> bool:
    """Whether ``err`` is SQLite's "database is locked" / "busy" (another connection)."""
    text = str(err).lower()
    return "database is locked" in text or "database is busy" in text


def _classify(path: Path, err: sqlite3.DatabaseError) -> StoreError:
    """The :class:`StoreError` for an error SQLite raised while opening ``path``.

    The file itself is never opened with ``open()``: closing such a descriptor would drop
    the POSIX locks of this process's SQLite connections to it (SQLite's "how to corrupt"
    guide, section 2.2) and lose their transactions.
    """
    name = getattr(err, "sqlite_errorname", "")
    if name == "SQLITE_NOTADB" or "file is not a database" in str(err):
        return _fault(path, *_NOT_A_DATABASE)
    if name.startswith("SQLITE_CORRUPT") or "malformed" in str(err):
        return _fault(path, f"damaged database ({err})", _DAMAGED_REMEDY)
    return _fault(path, f"cannot use the results database ({err})",
                  "check the permissions of the file and its folder, or pass another --out")


class Store:
    """One process's connection to the results database at ``path`` (created if absent).

    Args:
        path: the SQLite file.
        timeout: seconds to wait for a lock held by another process.
        readonly: open without writing anything (no WAL switch, no schema or migration);
            the file must exist.
        verify: run ``PRAGMA quick_check`` on open (before any write) and refuse a damaged
            database. Worker processes of a verified sweep pass ``False``.
        lease: seconds after its last heartbeat when a ``running`` claim is stale.

    Raises:
        StoreError: if the file or its folder cannot be written (``readonly=False``), the
            file is not a SQLite database, or it fails the integrity check.
    """

    def __init__(self, path: str | Path, timeout: float = 120.0, *, readonly: bool = False,
                 verify: bool = True, lease: float = LEASE_SECONDS):
        self.path = Path(path)
        self.readonly = readonly
        self.lease = float(lease)
        self.timeout = float(timeout)
        deadline = time.monotonic() + self.timeout
        while True:
            self.conn = self._connect()
            try:
                self.conn.row_factory = sqlite3.Row
                self.conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
                if verify:
                    self._verify()
                if not readonly:
                    self._prepare()
                return
            except sqlite3.OperationalError as err:
                self.conn.close()
                # Opening while another process creates the file or switches it to WAL can
                # report "database is locked" at once, without SQLite's busy handler (the
                # journal-mode change and the first schema write need the file alone):
                # open again until the timeout, as the busy handler would have waited.
                if _is_busy(err) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise _classify(self.path, err) from err
            except sqlite3.DatabaseError as err:
                self.conn.close()
                raise _classify(self.path, err) from err
            except BaseException:
                self.conn.close()
                raise

    def _connect(self) -> sqlite3.Connection:
        path = self.path
        if self.readonly:
            if not path.is_file():
                raise _fault(path, "no results database", "run `secondorder bench` first")
            uri = f"file:{quote(str(path.resolve()))}?mode=ro"
            try:
                return sqlite3.connect(uri, uri=True, timeout=self.timeout,
                                       isolation_level=None)
            except sqlite3.Error as err:
                raise _fault(path, f"cannot open the results database read-only ({err})",
                             "check the file's permissions") from err
        folder = path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _fault(folder, f"cannot create the results folder ({err.strerror})",
                         "pass a writable --out") from err
        if not os.access(folder, os.W_OK | os.X_OK):
            raise _fault(folder, "the results folder is read-only",
                         "make it writable or pass another --out")
        if path.exists() and not os.access(path, os.W_OK):
            raise _fault(path, "the results database is read-only",
                         "make it writable or pass another --out")
        try:
            return sqlite3.connect(str(path), timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as err:
            raise _fault(path, f"cannot open the results database ({err})",
                         "check the folder's permissions or pass another --out") from err

    def _verify(self) -> None:
        rows = [r[0] for r in self.conn.execute("PRAGMA quick_check")]
        if rows != ["ok"]:
            first = rows[0].replace("\n", " ")[:160]
            raise _fault(self.path, f"damaged database (integrity check: {first})",
                         _DAMAGED_REMEDY)

    def _prepare(self) -> None:
        """WAL journal, foreign keys, schema (migrating a version-1 database)."""
        try:
            self.conn.execute("PRAGMA journal_mode = WAL")
            # Foreign keys are off while migrating: dropping the old runs table must not
            # cascade into the measurements (the pragma is a no-op inside a transaction).
            self.conn.execute("PRAGMA foreign_keys = OFF")
            with self.transaction() as c:
                cols = {r[1] for r in c.execute("PRAGMA table_info(runs)")}
                if cols and "settings" not in cols:
                    _migrate_v1(c)
            self.conn.execute("PRAGMA foreign_keys = ON")
            with self.transaction() as c:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                if c.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.OperationalError as err:
            if "readonly" not in str(err) and "unable to open" not in str(err):
                raise
            raise _fault(self.path, f"cannot write the results database ({err})",
                         "check the permissions of the file and its folder") from err

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

    @staticmethod
    def _key(sweep, problem, optimizer, hyperparameters, seed, budget, settings=None):
        return (sweep, problem, optimizer, canonical_json(dict(hyperparameters)), int(seed),
                canonical_json(dict(budget)), canonical_json(dict(settings or {})))

    _WHERE = ("sweep=? AND problem=? AND optimizer=? AND hyperparameters=? AND seed=? AND "
              "budget=? AND settings=?")

    def find_run(
        self, sweep: str, problem: str, optimizer: str, hyperparameters: Mapping[str, Any],
        seed: int, budget: Mapping[str, Any], settings: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """The run with this key, or ``None``."""
        row = self.conn.execute(
            f"SELECT * FROM runs WHERE {self._WHERE}",
            self._key(sweep, problem, optimizer, hyperparameters, seed, budget, settings),
        ).fetchone()
        return None if row is None else self._run_dict(row)

    def claim_run(
        self, sweep: str, problem: str, optimizer: str, hyperparameters: Mapping[str, Any],
        seed: int, budget: Mapping[str, Any], settings: Mapping[str, Any] | None = None,
        *, retry_failed_before: float | None = None,
    ) -> Claim:
        """Claim a run for this process, atomically (module docstring).

        A new key is inserted as ``running``; a ``running`` row whose claim is stale
        (:func:`~secondorder.bench.claims.claim_is_stale`), or a ``failed`` row that finished before
        ``retry_failed_before``, is taken over: its measurements are deleted and it is
        marked ``running`` under this process, keeping its id (``attempts`` + 1).
        """
        key = self._key(sweep, problem, optimizer, hyperparameters, seed, budget, settings)
        now = time.time()
        with self.transaction() as c:
            row = c.execute(
                f"SELECT id, status, finished, owner, heartbeat FROM runs WHERE {self._WHERE}",
                key,
            ).fetchone()
            if row is None:
                cur = c.execute(
                    "INSERT INTO runs (sweep, problem, optimizer, hyperparameters, seed, "
                    "budget, settings, status, started, owner, heartbeat) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                    (*key, now, owner_id(), now),
                )
                return Claim("claimed", int(cur.lastrowid))
            if row["status"] in TERMINAL:
                retry = (row["status"] == "failed" and retry_failed_before is not None
                         and (row["finished"] or 0.0) < retry_failed_before)
                if not retry:
                    return Claim("done", int(row["id"]))
            elif not claim_is_stale(row["owner"], row["heartbeat"], self.lease, now):
                return Claim("busy", int(row["id"]))
            c.execute("DELETE FROM measurements WHERE run_id=?", (row["id"],))
            c.execute(
                "UPDATE runs SET status='running', started=?, finished=NULL, error=NULL, "
                "owner=?, heartbeat=?, attempts=attempts+1 WHERE id=?",
                (now, owner_id(), now, row["id"]),
            )
            return Claim("claimed", int(row["id"]))

    def start_run(
        self, sweep: str, problem: str, optimizer: str, hyperparameters: Mapping[str, Any],
        seed: int, budget: Mapping[str, Any], settings: Mapping[str, Any] | None = None,
        *, retry_failed_before: float | None = None,
    ) -> int | None:
        """:meth:`claim_run`'s run id if this process claimed the run, else ``None``
        (terminal already, or running in another live process)."""
        claim = self.claim_run(sweep, problem, optimizer, hyperparameters, seed, budget,
                               settings, retry_failed_before=retry_failed_before)
        return claim.run_id if claim.state == "claimed" else None

    def heartbeat(self, run_id: int) -> bool:
        """Renew this process's claim on ``run_id``; ``False`` if the claim was lost."""
        with self.transaction() as c:
            cur = c.execute(
                "UPDATE runs SET heartbeat=? WHERE id=? AND owner=? AND status='running'",
                (time.time(), run_id, owner_id()),
            )
            return cur.rowcount == 1

    def keep_alive(self, run_id: int, interval: float | None = None) -> _KeepAlive:
        """A context manager whose thread renews the claim on ``run_id`` every ``interval``
        seconds (default a quarter of the lease), on a connection of its own."""
        return _KeepAlive(self.path, run_id, self.lease / 4 if interval is None else interval,
                          self.timeout)

    def finish_run(
        self,
        run_id: int,
        status: str,
        measurements: Sequence[Mapping[str, Any]],
        error: str | None = None,
    ) -> bool:
        """Write all measurements and the terminal ``status`` in one transaction, if this
        process still owns the run's claim.

        Returns:
            ``True`` if written; ``False`` if the claim was taken over meanwhile (the run
            was declared stale and another process owns it; nothing is written).

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
            cur = c.execute(
                "UPDATE runs SET status=?, finished=?, error=? "
                "WHERE id=? AND owner=? AND status='running'",
                (status, time.time(), error, run_id, owner_id()),
            )
            if cur.rowcount != 1:
                return False
            c.executemany(
                f"INSERT INTO measurements (run_id, {', '.join(cols)}) VALUES "
                f"({', '.join('?' * (len(cols) + 1))})",
                rows,
            )
        return True

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
        d["settings"] = json.loads(d.get("settings") or "{}")
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


class _KeepAlive:
    """Heartbeat thread of :meth:`Store.keep_alive`."""

    def __init__(self, path: Path, run_id: int, interval: float, timeout: float):
        self.path, self.run_id, self.interval, self.timeout = path, run_id, interval, timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}",
                                        daemon=True)

    def _beat(self) -> None:
        store = Store(self.path, self.timeout, verify=False)
        try:
            while not self._stop.wait(self.interval):
                if not store.heartbeat(self.run_id):
                    return
        finally:
            store.close()

    def __enter__(self) -> _KeepAlive:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _migrate_v1(c: sqlite3.Connection) -> None:
    """Rebuild a version-1 ``runs`` table (no settings or claim columns) in place. Its runs
    get empty ``settings``, so runs of the current sweeps (whose keys name their settings)
    are redone rather than mixed with runs of unknown settings."""
    c.execute(
        "CREATE TABLE runs_v2 (id INTEGER PRIMARY KEY AUTOINCREMENT, sweep TEXT NOT NULL, "
        "problem TEXT NOT NULL, optimizer TEXT NOT NULL, hyperparameters TEXT NOT NULL, "
        "seed INTEGER NOT NULL, budget TEXT NOT NULL, settings TEXT NOT NULL DEFAULT '{}', "
        "status TEXT NOT NULL, started REAL, finished REAL, error TEXT, owner TEXT, "
        "heartbeat REAL, attempts INTEGER NOT NULL DEFAULT 1, "
        "UNIQUE (sweep, problem, optimizer, hyperparameters, seed, budget, settings))"
    )
    c.execute(
        "INSERT INTO runs_v2 (id, sweep, problem, optimizer, hyperparameters, seed, budget, "
        "status, started, finished, error) SELECT id, sweep, problem, optimizer, "
        "hyperparameters, seed, budget, status, started, finished, error FROM runs"
    )
    c.execute("DROP TABLE runs")
    c.execute("ALTER TABLE runs_v2 RENAME TO runs")


def _num(x: Any) -> float | None:
    if x is None:
        return None
    return float(x)

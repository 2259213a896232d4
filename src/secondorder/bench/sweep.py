"""A benchmark sweep: tuning, repetitions, workers, resume, and the statistics of the report.

Protocol (DeepOBS, Schneider et al. 2019; AlgoPerf, Dahl et al. 2023):

1. **Tuning.** For each problem and optimizer, one run per value of the optimizer's main
   knob (:mod:`~secondorder.bench.registry` grid) on seed ``0``.
2. **Selection** (:func:`select_best`): the setting with the best **final validation
   metric** of its tuning run: validation accuracy on classification problems, validation
   loss otherwise (ties: lower final validation loss). Diverged and failed runs are never
   selected.
3. **Repetitions.** The selected setting is rerun with seeds ``0..N-1`` (seed 0 is the
   tuning run itself, reused). Means come with 95% confidence intervals from the
   t-distribution (:func:`mean_ci`).
4. **Targets** (:func:`target_for`, AlgoPerf-style): per problem, the tuned first-order
   baselines (``first_order`` registry entries) give each their mean (over seeds) of the
   best validation metric reached; the best of these, ``v*``, and the mean initial value
   ``v0`` set the target ``v0 + 0.99 (v* - v0)``: 99% of the improvement the best tuned
   first-order method achieves. Without first-order runs in the sweep, all methods are used.
5. **Time to target** (:func:`time_to_target`): the training wall time (evaluation
   excluded) and the backprop-equivalents at the first evaluation reaching the target;
   infinite if never reached. Per method and problem the median over seeds is used (so a
   method that misses the target in most seeds counts as not reaching it).
6. **Performance profiles** (Dolan & More 2002, :func:`performance_profile`): over problems,
   the fraction of problems on which a method's cost to target is within a factor ``tau``
   of the best method's.

Runs execute in-process (``workers=1``) or in ``workers`` spawned processes that each open
their own :class:`~secondorder.bench.store.Store` connection. Worker processes die with the
process that started them (``PR_SET_PDEATHSIG`` on Linux, and a thread that watches the
parent process id everywhere), so a killed sweep leaves no process behind.

**Resume and concurrency.** A run's key is its sweep, problem, optimizer,
hyperparameters, seed, budget and *settings*: the evaluation frequency and the
fingerprint of the problem's data files (:func:`secondorder.bench.data.files_fingerprint`),
so a change to either is a new run. Each run is claimed in the database before it is
executed (:meth:`~secondorder.bench.store.Store.claim_run`). Rerunning a sweep skips
finished and diverged runs, redoes interrupted ones (a ``running`` row whose owner died or
whose heartbeat lapsed) and, with ``SweepConfig.retry_failed`` (the default), retries each
run that failed before this sweep started. Several sweeps on one database share the work:
a run another live process is executing is waited for, not redone, and each sweep selects
and reports only once all its runs are terminal.
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from secondorder.bench.data import files_fingerprint
from secondorder.bench.datafacts import META_KEY as DATA_META_KEY
from secondorder.bench.datafacts import data_facts
from secondorder.bench.executors import active_executor
from secondorder.bench.registry import get_optimizer
from secondorder.bench.runner import Budget, RunResult, run
from secondorder.bench.store import TERMINAL, Store
from secondorder.bench.tensorboard import log_run as log_to_tensorboard

__all__ = [
    "TARGET_FRACTION",
    "RunRecord",
    "SweepConfig",
    "Task",
    "die_with_parent",
    "load_records",
    "mean_ci",
    "metric_for",
    "performance_profile",
    "run_sweep",
    "select_best",
    "target_for",
    "time_to_target",
]

#: Fraction of the best first-order improvement that defines the target.
TARGET_FRACTION = 0.99
#: Seconds between checks on runs that another process is executing.
POLL_SECONDS = 1.0
#: Seconds between checks of a worker process on its parent.
PARENT_CHECK_SECONDS = 0.5

ProblemLoader = Callable[..., Any]


def _default_loader(name: str, *, data_dir: str | Path | None = None, seed: int = 0):
    from secondorder.bench.problems import get_problem

    return get_problem(name, data_dir=data_dir, seed=seed)


# ---------------------------------------------------------------------------- config
@dataclass
class SweepConfig:
    """What a sweep runs.

    Attributes:
        problems: problem names.
        optimizers: registry names (unavailable ones are skipped and noted).
        seeds: repetitions of the selected setting (seeds ``0..seeds-1``).
        budget: per-run budget; ``None`` uses each problem's ``epochs``.
        grid: grid level of the knob (``"quick"``, ``"default"``, ``"full"``).
        workers: processes; 1 runs in this process.
        evals_per_epoch: evaluations per pass through the training data.
        data_dir: directory of file-based problems.
        name: the sweep's name in the database.
        retry_failed: claim again the runs that failed (raised) before this sweep started.
    """

    problems: Sequence[str]
    optimizers: Sequence[str]
    seeds: int = 5
    budget: Budget | None = None
    grid: str = "default"
    workers: int = 1
    evals_per_epoch: int = 1
    data_dir: str | None = None
    name: str = "bench"
    retry_failed: bool = True

    def __post_init__(self):
        if self.seeds < 1:
            raise ValueError(f"Invalid seeds: {self.seeds}; it must be >= 1")
        if self.workers < 1:
            raise ValueError(f"Invalid workers: {self.workers}; it must be >= 1")
        if self.evals_per_epoch < 1:
            raise ValueError(
                f"Invalid evals_per_epoch: {self.evals_per_epoch}; it must be >= 1")
        if not self.problems:
            raise ValueError("Invalid problems: the list is empty")
        if not self.optimizers:
            raise ValueError("Invalid optimizers: the list is empty")


@dataclass(frozen=True)
class Task:
    """One run to execute (picklable for worker processes)."""

    sweep: str
    problem: str
    optimizer: str
    hyperparameters: tuple[tuple[str, Any], ...]
    seed: int
    budget: tuple[tuple[str, float], ...]
    evals_per_epoch: int
    data_dir: str | None
    settings: tuple[tuple[str, Any], ...] = ()
    retry_failed_before: float | None = None

    def key(self) -> tuple:
        """Arguments of :meth:`Store.find_run`/:meth:`Store.claim_run`."""
        return (self.sweep, self.problem, self.optimizer, dict(self.hyperparameters), self.seed,
                dict(self.budget), dict(self.settings))


_PROBLEMS: dict[tuple[str, str | None], Any] = {}


def _problem(loader: ProblemLoader, name: str, data_dir: str | None):
    key = (name, data_dir)
    if key not in _PROBLEMS:
        _PROBLEMS[key] = loader(name, data_dir=data_dir, seed=0)
    return _PROBLEMS[key]


def execute(db_path: str, task: Task, loader: ProblemLoader | None = None) -> str:
    """Claim and run ``task``; returns its status, ``"skipped"`` when it was terminal
    already, or ``"busy"`` when another live process holds its claim (or took it over
    while this one ran: nothing of this run is then stored)."""
    loader = loader or _default_loader
    with Store(db_path, verify=False) as store:
        claim = store.claim_run(*task.key(), retry_failed_before=task.retry_failed_before)
        if claim.state != "claimed":
            return "skipped" if claim.state == "done" else "busy"
        with store.keep_alive(claim.run_id):
            try:
                problem = _problem(loader, task.problem, task.data_dir)
                result = run(problem, get_optimizer(task.optimizer), dict(task.hyperparameters),
                             task.seed, Budget(**dict(task.budget)),
                             evals_per_epoch=task.evals_per_epoch)
            except Exception as e:  # noqa: BLE001 -- a broken problem must not kill the sweep
                result = RunResult("failed", [], f"{type(e).__name__}: {e}")
        if not store.finish_run(claim.run_id, result.status, result.measurements, result.error):
            return "busy"
        log_to_tensorboard(task, result.measurements)  # a no-op without --tensorboard
        return result.status


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_SECONDS)
        if os.getppid() != parent_pid:
            os._exit(1)


def die_with_parent(parent_pid: int) -> None:
    """Make this (worker) process exit as soon as process ``parent_pid`` is gone.

    On Linux the kernel kills it (``prctl(PR_SET_PDEATHSIG, SIGKILL)``); everywhere a
    daemon thread checks every :data:`PARENT_CHECK_SECONDS` that the parent process id
    is still ``parent_pid`` (an orphan is re-parented). Without this, a worker whose sweep
    was killed finishes its run and then blocks on the executor's pipe forever.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover -- no usable libc
            pass
    if os.getppid() != parent_pid:  # the parent died before the prctl
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="watch-parent",
                     daemon=True).start()


def _init_worker(threads: int, parent_pid: int) -> None:
    import torch

    die_with_parent(parent_pid)
    torch.set_num_threads(threads)


def _pending(db_path: str, tasks: Sequence[Task]) -> list[Task]:
    """The tasks that may need work: no terminal run in the database, or a failed one to
    retry (the workers would skip the rest; filtering here spares spawning worker
    processes for a resumed sweep)."""
    with Store(db_path, verify=False) as store:
        out = []
        for t in tasks:
            row = store.find_run(*t.key())
            if (row is None or row["status"] not in TERMINAL
                    or (row["status"] == "failed" and t.retry_failed_before is not None
                        and (row["finished"] or 0.0) < t.retry_failed_before)):
                out.append(t)
        return out


def _execute_all(db_path: str, tasks: Sequence[Task], workers: int, loader, desc: str,
                 progress: bool) -> dict[str, int]:
    """Execute ``tasks`` until each is terminal in the database: the pending ones here,
    then, every :data:`POLL_SECONDS`, those another process was running (``"busy"``)
    until that process finishes them (counted ``"skipped"``) or its claim goes stale
    (taken over and run here). Under :func:`~secondorder.bench.executors.use_executor`
    the pending tasks run as Ray tasks instead of in this process or its pool."""
    executor = active_executor()
    if executor is not None and loader is not None:
        raise ValueError("a custom problem loader needs the local executor, not Ray")
    counts: Counter[str] = Counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks), desc=desc, unit="run")
    pool = None
    remaining = list(tasks)
    try:
        while remaining:
            pending = _pending(db_path, remaining)
            done_elsewhere = len(remaining) - len(pending)
            if done_elsewhere:
                counts["skipped"] += done_elsewhere
                if bar is not None:
                    bar.update(done_elsewhere)
            if executor is None and workers > 1 and len(pending) > 1 and pool is None:
                if loader is not None:
                    raise ValueError("a custom problem loader needs workers=1")
                threads = max(1, (os.cpu_count() or 1) // workers)
                pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                           initializer=_init_worker,
                                           initargs=(threads, os.getpid()))
            if executor is not None:  # Ray (secondorder.bench.executors)
                statuses = executor.execute(db_path, pending)
            elif pool is None:
                statuses = ((t, execute(db_path, t, loader)) for t in pending)
            else:
                futures = {pool.submit(execute, db_path, t): t for t in pending}
                statuses = ((futures[f], f.result()) for f in as_completed(futures))
            remaining = []
            try:
                for t, s in statuses:
                    if s == "busy":
                        remaining.append(t)
                        continue
                    counts[s] += 1
                    if bar is not None:
                        bar.update(1)
            finally:
                statuses.close()  # on an exception: the Ray executor cancels its tasks
            if remaining:
                time.sleep(POLL_SECONDS)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if bar is not None:
            bar.close()
    return dict(counts)


def _items(d: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(d.items()))


def run_sweep(config: SweepConfig, db_path: str | Path, *, progress: bool = True,
              loader: ProblemLoader | None = None) -> dict[str, Any]:
    """Tune, select and repeat (module docstring); results go to the database at ``db_path``.

    Args:
        config: the sweep.
        db_path: SQLite file (created if absent); rerunning resumes.
        progress: tqdm bars over runs.
        loader: ``loader(name, data_dir=..., seed=0) -> Problem``; default
            :func:`secondorder.bench.problems.get_problem`. Needs ``workers=1``.

    Returns:
        ``{"skipped_optimizers": {name: reason}, "tuning": counts, "final": counts,
        "selected": {(problem, optimizer): hyperparameters}, "statuses": counts of the
        final status of every run of the sweep, "errors": up to 3 messages of failed
        runs}``.

    Raises:
        ValueError: for unknown optimizer names (naming the valid ones).
    """
    db_path = str(db_path)
    started = time.time()
    specs = [get_optimizer(o) for o in config.optimizers]
    skipped = {s.name: r for s in specs if (r := s.unavailable_reason()) is not None}
    specs = [s for s in specs if s.name not in skipped]
    load = loader or _default_loader
    problems = {p: _problem(load, p, config.data_dir) for p in config.problems}
    Store(db_path).close()  # refuse a damaged or unwritable database before any run
    settings = {p: _items({"evals_per_epoch": config.evals_per_epoch,
                           "data": files_fingerprint(getattr(prob, "data_files", ()))})
                for p, prob in problems.items()}
    retry_before = started if config.retry_failed else None
    with Store(db_path, verify=False) as store:
        store.record_environment()
        store.set_meta(config.name, "skipped_optimizers", skipped)
        store.set_meta(config.name, "settings", {p: dict(v) for p, v in settings.items()})
        store.set_meta(config.name, "config", {
            "problems": list(config.problems), "optimizers": [s.name for s in specs],
            "seeds": config.seeds, "grid": config.grid, "workers": config.workers,
            "budget": None if config.budget is None else config.budget.as_dict(),
            "evals_per_epoch": config.evals_per_epoch, "retry_failed": config.retry_failed,
        })
        # What data each problem used, for the report (secondorder.bench.datafacts).
        store.set_meta(config.name, DATA_META_KEY,
                       {p: data_facts(prob) for p, prob in problems.items()})

    def budget_of(pname: str) -> tuple[tuple[str, float], ...]:
        b = config.budget or Budget(epochs=float(problems[pname].epochs))
        return _items(b.as_dict())

    def task(pname, spec, hyper, seed) -> Task:
        return Task(config.name, pname, spec.name, _items(hyper), seed, budget_of(pname),
                    config.evals_per_epoch, config.data_dir, settings[pname], retry_before)

    tuning = [task(p, s, s.hyperparameters(v), 0)
              for p in config.problems for s in specs for v in s.grid(config.grid)]
    tuning_counts = _execute_all(db_path, tuning, config.workers, loader, "tuning", progress)

    with Store(db_path, verify=False) as store:
        records = load_records(store, config.name)
    selected = {}
    final = []
    for p in config.problems:
        for s in specs:
            cands = [r for r in records if r.problem == p and r.optimizer == s.name
                     and r.seed == 0 and r.budget == dict(budget_of(p))
                     and r.settings == dict(settings[p])]
            best = select_best(cands)
            if best is None:
                continue
            selected[(p, s.name)] = best.hyperparameters
            final += [task(p, s, best.hyperparameters, seed) for seed in range(config.seeds)]
    final_counts = _execute_all(db_path, final, config.workers, loader, "repetitions", progress)
    statuses: Counter[str] = Counter()
    errors: list[str] = []
    with Store(db_path, verify=False) as store:
        for t in dict.fromkeys(tuning + final):
            row = store.find_run(*t.key())
            statuses[row["status"]] += 1
            if row["status"] == "failed" and row["error"] and len(errors) < 3:
                errors.append(f"{t.problem}/{t.optimizer}: {row['error']}")
    return {"skipped_optimizers": skipped, "tuning": tuning_counts, "final": final_counts,
            "selected": selected, "statuses": dict(statuses), "errors": errors}


# ---------------------------------------------------------------------------- analysis
@dataclass
class RunRecord:
    """A run with its measurements, as read back from the database."""

    id: int
    problem: str
    optimizer: str
    hyperparameters: dict[str, Any]
    seed: int
    budget: dict[str, float]
    status: str
    error: str | None
    measurements: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Finished (not diverged, failed or interrupted)."""
        return self.status == "finished"

    @property
    def last(self) -> dict[str, Any]:
        return self.measurements[-1] if self.measurements else {}


def load_records(store: Store, sweep: str | None = None) -> list[RunRecord]:
    """All terminal runs of ``sweep`` with their measurements.

    For a named sweep, a problem's runs are those with the settings of the sweep's latest
    invocation (meta ``"settings"``): runs made with another evaluation frequency or other
    data files stay in the database but are not mixed into its statistics.
    """
    current = {} if sweep is None else store.get_meta(sweep, "settings", {})
    return [
        RunRecord(r["id"], r["problem"], r["optimizer"], r["hyperparameters"], r["seed"],
                  r["budget"], r["status"], r["error"], store.measurements(r["id"]),
                  r["settings"])
        for r in store.runs(sweep, status=TERMINAL)
        if r["problem"] not in current or r["settings"] == current[r["problem"]]
    ]


def metric_for(records: Iterable[RunRecord]) -> tuple[str, bool]:
    """``("val_acc", True)`` if the runs record a validation accuracy, else
    ``("val_loss", False)``; the flag says whether higher is better."""
    for r in records:
        for m in r.measurements:
            if m.get("val_acc") is not None:
                return "val_acc", True
    return "val_loss", False


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def select_best(records: Sequence[RunRecord]) -> RunRecord | None:
    """The tuning run with the best final validation metric (module docstring, step 2);
    ``None`` if every run diverged or failed."""
    ok = [r for r in records if r.ok and r.measurements]
    if not ok:
        return None
    key, higher = metric_for(ok)

    def score(r: RunRecord):
        v = r.last.get(key)
        loss = r.last.get("val_loss")
        v = v if _finite(v) else (-math.inf if higher else math.inf)
        loss = loss if _finite(loss) else math.inf
        return (-v if higher else v, loss)

    return min(ok, key=score)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its ``confidence`` interval (Student t, ``n-1`` dof).

    Returns ``(nan, nan)`` for no values and ``(value, nan)`` for one.
    """
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    m = float(x.mean())
    if x.size == 1:
        return m, math.nan
    from scipy import stats  # imported here: worker processes never need it (1 s of import)

    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return m, half


def best_value(measurements: Sequence[Mapping[str, Any]], key: str, higher: bool) -> float:
    """Best value of ``key`` over a run's measurements (NaN if none)."""
    vals = [m[key] for m in measurements if _finite(m.get(key))]
    if not vals:
        return math.nan
    return max(vals) if higher else min(vals)


def target_for(
    baselines: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    key: str,
    higher: bool,
    fraction: float = TARGET_FRACTION,
) -> float:
    """The target of a problem (module docstring, step 4).

    Args:
        baselines: per baseline optimizer, the measurement lists of its repetitions.
        key: the validation metric.
        higher: whether higher is better.
        fraction: share of the best improvement required.

    Returns:
        ``v0 + fraction (v* - v0)``; NaN when no baseline has a finite value.
    """
    best, inits = None, []
    for runs in baselines.values():
        vals = [best_value(ms, key, higher) for ms in runs if ms]
        vals = [v for v in vals if _finite(v)]
        inits += [ms[0][key] for ms in runs if ms and _finite(ms[0].get(key))]
        if not vals:
            continue
        v = float(np.mean(vals))
        if best is None or (v > best if higher else v < best):
            best = v
    if best is None or not inits:
        return math.nan
    v0 = float(np.mean(inits))
    return v0 + fraction * (best - v0)


def time_to_target(
    measurements: Sequence[Mapping[str, Any]],
    key: str,
    target: float,
    higher: bool,
    cost: str = "wall_time",
) -> float:
    """``cost`` (``"wall_time"``, ``"backprops"``, ``"epoch"``...) at the first measurement
    whose ``key`` reaches ``target``; ``inf`` if none does (or the target is NaN)."""
    if not _finite(target):
        return math.inf
    for m in measurements:
        v = m.get(key)
        if _finite(v) and (v >= target if higher else v <= target):
            return float(m[cost])
    return math.inf


def median_cost(costs: Sequence[float]) -> float:
    """Median over seeds, ``inf`` counted as the largest value."""
    if not costs:
        return math.inf
    return float(np.median(np.asarray(costs, dtype=float)))


def performance_profile(
    costs: Mapping[str, Mapping[str, float]], taus: Sequence[float] | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Dolan-More performance profiles.

    Args:
        costs: ``costs[problem][method]`` (``inf`` = target not reached; a method missing on
            a problem counts as ``inf``).
        taus: ratios at which to evaluate; default a log grid from 1 to the largest finite
            ratio (times 1.1).

    Returns:
        ``(taus, {method: rho})`` with ``rho(tau)`` = fraction of problems where the
        method's cost is at most ``tau`` times the best cost on that problem.
    """
    methods = sorted({m for row in costs.values() for m in row})
    ratios: dict[str, list[float]] = {m: [] for m in methods}
    for row in costs.values():
        finite = [c for c in row.values() if math.isfinite(c)]
        best = min(finite) if finite else math.nan
        for m in methods:
            c = row.get(m, math.inf)
            if not math.isfinite(c):
                ratios[m].append(math.inf)
            elif c <= best:
                ratios[m].append(1.0)
            else:
                ratios[m].append(c / best if best > 0 else math.inf)
    if taus is None:
        fin = [r for rs in ratios.values() for r in rs if math.isfinite(r)]
        hi = max(fin + [1.0]) * 1.1
        taus = np.unique(np.concatenate([[1.0], np.geomspace(1.0, hi, 200)]))
    taus = np.asarray(taus, dtype=float)
    n = max(len(costs), 1)
    rho = {m: np.array([sum(r <= t for r in rs) / n for t in taus]) for m, rs in ratios.items()}
    return taus, rho

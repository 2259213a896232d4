"""Run a study through the benchmark's store: tuning, selection, repetitions, resume.

Every run is a row of the benchmark database (:class:`~secondorder.bench.store.Store`)
keyed by ``(sweep, problem, optimizer, hyperparameters, seed, budget)``: the sweep is
``study:<name>:<part>``, the problem ``<problem>@<data tag>`` (so runs on other data or
another ``--quick`` size never share a key). A run is a :class:`StudyTask`; :func:`train`
runs it: ``"epochs"`` parts through the benchmark runner
(:func:`secondorder.bench.runner.run`), ``"iterations"`` parts through
:func:`~secondorder.bench.studies.iterations.run_iterations`. Rerunning a study skips the
runs the database already has finished, diverged or failed and redoes interrupted ones
(the sweep's claim / finish protocol and resume rules).

Protocol, as in :mod:`secondorder.bench.sweep`: each method with a ``grid`` runs every grid
value on seed 0 and keeps the best final validation metric
(:func:`~secondorder.bench.sweep.select_best`); then the kept setting runs on seeds
``0..seeds-1`` (seed 0 reused). The runs go in two batches over all parts: first every
grid value and every seed of the untuned methods, then the other seeds of the kept
settings.

**Where runs execute.** By default one after another in this process, on the problems it
built. Under :func:`secondorder.bench.executors.use_executor` (``secondorder study NAME
--executor ray``) each batch runs as Ray tasks through the benchmark's
:class:`~secondorder.bench.executors.RayExecutor`: the driver claims each run and alone
writes the database; the task (:func:`run_task`) rebuilds the problem in its worker (once
per worker), checks it has the driver's data tag, trains and returns the result.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from secondorder.bench.executors import active_executor
from secondorder.bench.registry import get_optimizer
from secondorder.bench.runner import Budget, run
from secondorder.bench.store import TERMINAL, Store
from secondorder.bench.studies.iterations import run_iterations
from secondorder.bench.studies.problems import BUILDERS, StudyProblem
from secondorder.bench.studies.spec import MethodSpec, Part, ProblemSpec, Study
from secondorder.bench.sweep import POLL_SECONDS, RunRecord, select_best, warm_up

__all__ = ["Progress", "Results", "StudyTask", "build_problem", "run_study", "run_task", "train"]


def _items(d: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(d.items()))


@dataclass
class Results:
    """A study's runs, read back from the database.

    Attributes:
        study: the (validated) study.
        problems: ``(part, problem) -> StudyProblem`` (the data each ran on).
        selected: ``(part, problem, method label) -> hyperparameters`` kept by the tuning.
        repetitions: ``(part, problem, method label) -> runs`` of the kept setting.
        tuning: ``(part, problem, method label) -> runs`` of every grid value (seed 0).
    """

    study: Study
    problems: dict[tuple[str, str], StudyProblem] = field(default_factory=dict)
    selected: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    repetitions: dict[tuple[str, str, str], list[RunRecord]] = field(default_factory=dict)
    tuning: dict[tuple[str, str, str], list[RunRecord]] = field(default_factory=dict)

    def runs(self, part: str, problem: str, method: str) -> list[RunRecord]:
        """The repetitions of one cell (empty when it did not run)."""
        return self.repetitions.get((part, problem, method), [])

    def data_notes(self) -> list[str]:
        """One sentence per distinct data set used."""
        seen: list[str] = []
        for sp in self.problems.values():
            if sp.data not in seen:
                seen.append(sp.data)
        return seen


class Progress:
    """Prints which part runs, runs done / left, elapsed time and an estimate of the rest."""

    def __init__(self, study: str, total: int, stream=None, enabled: bool = True):
        self.study, self.total, self.done = study, total, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.ran = 0  # runs that did work (skipped ones do not inform the estimate)
        self.work_seconds = 0.0

    def update(self, part: str, what: str, status: str, seconds: float) -> None:
        self.done += 1
        if status != "skipped":
            self.ran += 1
            self.work_seconds += seconds
        left = self.total - self.done
        eta = self.work_seconds / self.ran * left if self.ran else 0.0
        if self.enabled:
            print(f"[{self.study}] part {part}: {what} {status} ({seconds:.1f} s) | "
                  f"{self.done}/{self.total} runs done, {left} left, elapsed "
                  f"{time.perf_counter() - self.t0:.0f} s, about {eta:.0f} s to go",
                  file=self.stream, flush=True)


def _record(store: Store, row: dict[str, Any]) -> RunRecord:
    return RunRecord(row["id"], row["problem"], row["optimizer"], row["hyperparameters"],
                     row["seed"], row["budget"], row["status"], row["error"],
                     store.measurements(row["id"]))


@dataclass(frozen=True)
class StudyTask:
    """One run of a study: the key of its database row and what a worker needs to rebuild
    its problem (picklable, so that it can be a Ray task).

    The key is the one the study always used: sweep ``study:<name>:<part>``, problem
    ``<problem>@<data tag>``, no settings; failed runs are not retried.

    Attributes:
        sweep, problem, optimizer, hyperparameters, seed, budget: the run's key
            (:meth:`key`).
        kind: the part's kind (``"epochs"`` or ``"iterations"``).
        spec: the problem's declaration (builder, options, sampling, batch sizes).
        evals_per_epoch: evaluations per epoch of an ``"epochs"`` run.
        data_dir, quick: the builder's other arguments.
        what: the run in words, for the progress lines.
        retry_failed_before: as :class:`secondorder.bench.sweep.Task`'s (``None``).
    """

    sweep: str
    problem: str
    optimizer: str
    hyperparameters: tuple[tuple[str, Any], ...]
    seed: int
    budget: tuple[tuple[str, float], ...]
    kind: str
    spec: ProblemSpec
    evals_per_epoch: int
    data_dir: str | None
    quick: bool
    what: str = field(default="", compare=False)
    retry_failed_before: float | None = None

    def key(self) -> tuple:
        """Arguments of :meth:`Store.find_run`/:meth:`Store.claim_run`."""
        return (self.sweep, self.problem, self.optimizer, dict(self.hyperparameters),
                self.seed, dict(self.budget), {})


#: Problems built by :func:`build_problem` in this process (a Ray worker's cache).
_BUILT: dict[tuple[str, str | None, bool, str], StudyProblem] = {}


def build_problem(spec: ProblemSpec, data_dir: str | None, quick: bool) -> StudyProblem:
    """``spec``'s problem, built once per process: what a Ray task trains on. (The driver
    builds its problems afresh in :func:`run_study`, so that changed data files count.)"""
    key = (spec.build, data_dir, quick, repr(sorted(spec.options.items())))
    if key not in _BUILT:
        _BUILT[key] = BUILDERS[spec.build](data_dir, quick, **dict(spec.options))
    return _BUILT[key]


def train(task: StudyTask, problem=None) -> tuple[str, list[dict[str, Any]], str | None]:
    """Train ``task`` and return ``(status, measurements, error)``; no database.

    ``"epochs"`` runs go through the benchmark runner after its untimed
    :func:`~secondorder.bench.sweep.warm_up`, ``"iterations"`` runs through
    :func:`~secondorder.bench.studies.iterations.run_iterations`. A failure of the run
    (an exception) is returned as ``"failed"`` with its message, never raised.

    Args:
        task: the run.
        problem: the built :class:`~secondorder.bench.problems.Problem` (``None``: built
            here from ``task.spec``, and checked to be the data the driver named).
    """
    hyper, budget = dict(task.hyperparameters), dict(task.budget)
    try:
        if problem is None:
            sp = build_problem(task.spec, task.data_dir, task.quick)
            here = f"{task.spec.name}@{sp.tag}"
            if here != task.problem:
                return "failed", [], (f"this worker built {here!r}, the driver {task.problem!r}:"
                                      " is --data-dir the same folder on every node?")
            problem = sp.problem
        if task.kind == "epochs":
            warm_up(problem, task.optimizer, hyper)
            res = run(problem, get_optimizer(task.optimizer), hyper, task.seed,
                      Budget(**budget), evals_per_epoch=task.evals_per_epoch)
        else:
            res = run_iterations(problem, task.optimizer, hyper, task.seed,
                                 int(budget["iterations"]), sampling=task.spec.sampling,
                                 batch_size=task.spec.batch_size,
                                 num_batches=task.spec.num_batches)
    except Exception as e:  # noqa: BLE001 -- a broken run must not kill the study
        return "failed", [], f"{type(e).__name__}: {e}"
    return res.status, res.measurements, res.error


def run_task(task: StudyTask) -> tuple[str, list[dict[str, Any]], str | None]:
    """What each Ray task runs: :func:`train` on a problem built in the worker."""
    return train(task)


def _execute_here(db: str, task: StudyTask, problem) -> str:
    """Claim, train (on the driver's ``problem``) and store ``task`` in this process; the
    status, ``"skipped"`` when terminal already, ``"busy"`` when another live process holds
    it (or took it over meanwhile: nothing of this run is then stored)."""
    with Store(db, verify=False) as store:
        claim = store.claim_run(*task.key(), retry_failed_before=task.retry_failed_before)
        if claim.state != "claimed":
            return "skipped" if claim.state == "done" else "busy"
        with store.keep_alive(claim.run_id):
            status, measurements, error = train(task, problem)
        if not store.finish_run(claim.run_id, status, measurements, error):
            return "busy"
        return status


class _Runner:
    """Runs batches of study tasks, here or on the active executor, counting progress."""

    def __init__(self, db: str, problems: dict[str, StudyProblem], progress: Progress):
        self.db, self.problems, self.progress = db, problems, progress

    def run_all(self, tasks: list[StudyTask]) -> list[RunRecord]:
        """Execute ``tasks`` until each is terminal in the database; their records, in order.

        Under :func:`~secondorder.bench.executors.use_executor` every task is a Ray task
        (:meth:`~secondorder.bench.executors.RayExecutor.execute`: the driver claims and
        stores, the worker trains); otherwise each runs here, one after another. A task
        another live process holds (``"busy"``) is polled every
        :data:`~secondorder.bench.sweep.POLL_SECONDS` until that process finishes it or its
        claim goes stale (then it is taken over), as in the benchmark's sweeps.
        """
        executor = active_executor()
        remaining = list(tasks)
        while remaining:
            if executor is not None:
                statuses = executor.execute(self.db, remaining, task_fn=run_task)
            else:
                statuses = ((t, _execute_here(self.db, t, self.problems[t.problem].problem))
                            for t in remaining)
            busy = []
            t0 = time.perf_counter()
            with closing(statuses):  # on an exception: the Ray executor cancels its tasks
                for t, status in statuses:
                    if status == "busy":
                        busy.append(t)
                        continue
                    now = time.perf_counter()
                    self.progress.update(t.sweep.rsplit(":", 1)[-1], t.what, status, now - t0)
                    t0 = now
            remaining = busy
            if remaining:
                time.sleep(POLL_SECONDS)
        with Store(self.db) as store:
            out = []
            for t in tasks:
                row = store.find_run(*t.key())
                if row is None or row["status"] not in TERMINAL:
                    raise RuntimeError(f"run {t.what} left no terminal row in {self.db}")
                out.append(_record(store, row))
            return out


def _short(hyper: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(hyper.items())) or "defaults"


def count_runs(study: Study) -> int:
    """Runs a study needs (tuning plus repetitions, seed 0 of a tuned method reused)."""
    total = 0
    for part in study.parts:
        for _ in part.problems:
            for m in part.methods:
                total += len(m.grid) + part.seeds - 1 if m.grid else part.seeds
    return total


def run_study(study: Study, db_path: str | Path, *, data_dir: str | None = None,
              quick: bool = False, progress: bool = True, stream=None,
              threads: int | None = 1) -> Results:
    """Run (or resume) every part of ``study`` and read the results back.

    The runs execute in this process, or as Ray tasks inside
    ``with use_executor(RayExecutor(...))`` (:mod:`secondorder.bench.executors`; the
    module docstring says how).

    Args:
        study: the declaration (validated here).
        db_path: the SQLite database (created if absent; the benchmark's format).
        data_dir: folder of the paper's data sets or the stand-ins (see
            :mod:`~secondorder.bench.studies.problems`).
        quick: build the problems small (``--quick``).
        progress: print progress lines.
        stream: where progress goes (default stderr).
        threads: torch intra-op threads while the study runs (restored after; ``None``
            leaves torch's and BLAS's settings). One by default: on a shared 2-core machine
            two threads contend and make timings (and runs) several times slower.

    Returns:
        The :class:`Results`.

    Raises:
        StudySpecError: if the declaration is invalid (before anything runs).
    """
    study.validate()
    previous = torch.get_num_threads()
    if threads is None:
        return _run(study, str(db_path), data_dir, quick, progress, stream)
    from threadpoolctl import threadpool_limits  # scikit-learn's dependency

    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):  # NumPy/SciPy BLAS (scipy's L-BFGS-B)
            return _run(study, str(db_path), data_dir, quick, progress, stream)
    finally:
        torch.set_num_threads(previous)


def _run(study: Study, db: str, data_dir: str | None, quick: bool, progress: bool,
         stream) -> Results:
    with Store(db) as store:
        store.record_environment()
        store.set_meta(f"study:{study.name}", "config", {
            "quick": quick, "data_dir": data_dir,
            "parts": {p.name: {"budget": dict(p.budget), "seeds": p.seeds} for p in study.parts}})
    results = Results(study)
    bar = Progress(study.name, count_runs(study), stream, progress)
    built: dict[str, StudyProblem] = {}  # "<problem>@<data tag>" -> its data
    names: dict[tuple[str, str], str] = {}
    for part in study.parts:  # every data set loads (or fails) before any run starts
        for p in part.problems:
            sp = BUILDERS[p.build](data_dir, quick, **dict(p.options))
            names[(part.name, p.name)] = f"{p.name}@{sp.tag}"
            built[names[(part.name, p.name)]] = sp
            results.problems[(part.name, p.name)] = sp

    def task(part: Part, p: ProblemSpec, m: MethodSpec, hyper: dict, seed: int) -> StudyTask:
        return StudyTask(f"study:{study.name}:{part.name}", names[(part.name, p.name)],
                         m.optimizer, _items(hyper), seed, _items(part.budget), part.kind, p,
                         part.evals_per_epoch, data_dir, quick,
                         what=f"{p.name}/{m.label} {_short(hyper)} seed {seed}")

    runner = _Runner(db, built, bar)
    cells = {(part.name, p.name, m.label): (part, p, m)
             for part in study.parts for p in part.problems for m in part.methods}
    # Phase 1, all at once: every grid value on seed 0, every seed of an untuned method.
    first = {cell: [task(part, p, m, h, 0) for h in m.settings()] if m.grid else
             [task(part, p, m, m.settings()[0], seed) for seed in range(part.seeds)]
             for cell, (part, p, m) in cells.items()}
    done = iter(runner.run_all([t for ts in first.values() for t in ts]))
    ran = {cell: [next(done) for _ in ts] for cell, ts in first.items()}
    # Phase 2: the kept setting of each tuned method on the other seeds (seed 0 reused).
    second: dict[tuple[str, str, str], list[RunRecord | StudyTask]] = {}
    for cell, (part, p, m) in cells.items():
        if not m.grid:
            results.tuning[cell], results.selected[cell] = [], dict(m.settings()[0])
            results.repetitions[cell] = ran[cell]
            continue
        tuned = results.tuning[cell] = ran[cell]
        best = select_best(tuned)
        hyper = best.hyperparameters if best is not None else m.settings()[0]
        results.selected[cell] = dict(hyper)
        second[cell] = []
        for seed in range(part.seeds):
            reuse = [r for r in tuned if r.seed == seed and r.hyperparameters == hyper]
            second[cell].append(reuse[0] if reuse else task(part, p, m, hyper, seed))
    todo = [t for ts in second.values() for t in ts if isinstance(t, StudyTask)]
    done = iter(runner.run_all(todo))
    for cell, reps in second.items():
        results.repetitions[cell] = [next(done) if isinstance(r, StudyTask) else r
                                     for r in reps]
    return results

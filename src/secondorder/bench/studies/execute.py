"""Run a study through the benchmark's store: tuning, selection, repetitions, resume.

Every run is a row of the benchmark database (:class:`~secondorder.bench.store.Store`)
keyed by ``(sweep, problem, optimizer, hyperparameters, seed, budget)``: the sweep is
``study:<name>:<part>``, the problem ``<problem>@<data tag>`` (so runs on other data or
another ``--quick`` size never share a key). ``"epochs"`` parts run through
:func:`secondorder.bench.sweep.execute` (the benchmark runner); ``"iterations"`` parts
through :func:`~secondorder.bench.studies.iterations.run_iterations` with the same
claim / finish protocol. Rerunning a study skips the runs the database already has
finished, diverged or failed and redoes interrupted ones (the sweep's resume rules).

Protocol per part, as in :mod:`secondorder.bench.sweep`: each method with a ``grid`` runs
every grid value on seed 0 and keeps the best final validation metric
(:func:`~secondorder.bench.sweep.select_best`); then the kept setting runs on seeds
``0..seeds-1`` (seed 0 reused).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from secondorder.bench.store import TERMINAL, Store
from secondorder.bench.studies.iterations import run_iterations
from secondorder.bench.studies.problems import BUILDERS, StudyProblem
from secondorder.bench.studies.spec import MethodSpec, Part, ProblemSpec, Study
from secondorder.bench.sweep import RunRecord, Task, execute, select_best

__all__ = ["Progress", "Results", "run_study"]


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


def _execute_iterations(db: str, key: tuple, problem, pspec: ProblemSpec,
                        method: MethodSpec, hyper: dict, seed: int, budget: dict) -> str:
    sweep, pname = key
    with Store(db) as store:
        run_id = store.start_run(sweep, pname, method.optimizer, hyper, seed, budget)
        if run_id is None:
            return "skipped"
        try:
            res = run_iterations(problem, method.optimizer, hyper, seed,
                                 int(budget["iterations"]), sampling=pspec.sampling,
                                 batch_size=pspec.batch_size, num_batches=pspec.num_batches)
        except Exception as e:  # noqa: BLE001 -- a broken run must not kill the study
            store.finish_run(run_id, "failed", [], f"{type(e).__name__}: {e}")
            return "failed"
        store.finish_run(run_id, res.status, res.measurements, res.error)
        return res.status


class _PartRunner:
    """Runs one part's tasks, counting progress."""

    def __init__(self, study: Study, part: Part, db: str, data_dir: str | None,
                 problems: dict[str, tuple[str, StudyProblem]], progress: Progress):
        self.study, self.part, self.db, self.data_dir = study, part, db, data_dir
        self.problems, self.progress = problems, progress
        self.sweep = f"study:{study.name}:{part.name}"
        built = {name: sp.problem for name, sp in problems.values()}
        self.loader: Callable[..., Any] = lambda name, data_dir=None, seed=0: built[name]

    def run(self, pspec: ProblemSpec, method: MethodSpec, hyper: dict, seed: int) -> RunRecord:
        pname, sp = self.problems[pspec.name]
        budget = dict(self.part.budget)
        t0 = time.perf_counter()
        if self.part.kind == "epochs":
            task = Task(self.sweep, pname, method.optimizer, _items(hyper), seed,
                        _items(budget), 1, self.data_dir)
            status = execute(self.db, task, self.loader)
        else:
            status = _execute_iterations(self.db, (self.sweep, pname), sp.problem, pspec,
                                         method, hyper, seed, budget)
        what = f"{pspec.name}/{method.label} {_short(hyper)} seed {seed}"
        self.progress.update(self.part.name, what, status, time.perf_counter() - t0)
        with Store(self.db) as store:
            row = store.find_run(self.sweep, pname, method.optimizer, hyper, seed, budget)
            if row is None or row["status"] not in TERMINAL:
                raise RuntimeError(f"run {what} left no terminal row in {self.db}")
            return _record(store, row)


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
    built: dict[str, dict[str, tuple[str, StudyProblem]]] = {}
    for part in study.parts:  # every data set loads (or fails) before any run starts
        built[part.name] = {}
        for p in part.problems:
            sp = BUILDERS[p.build](data_dir, quick, **dict(p.options))
            built[part.name][p.name] = (f"{p.name}@{sp.tag}", sp)
            results.problems[(part.name, p.name)] = sp
    for part in study.parts:
        runner = _PartRunner(study, part, db, data_dir, built[part.name], bar)
        for p in part.problems:
            for m in part.methods:
                cell = (part.name, p.name, m.label)
                tuned = [runner.run(p, m, h, 0) for h in m.settings()] if m.grid else []
                best = select_best(tuned) if tuned else None
                hyper = best.hyperparameters if best is not None else m.settings()[0]
                results.tuning[cell] = tuned
                results.selected[cell] = dict(hyper)
                reps = []
                for seed in range(part.seeds):
                    reuse = [r for r in tuned if r.seed == seed and r.hyperparameters == hyper]
                    reps.append(reuse[0] if reuse else runner.run(p, m, hyper, seed))
                results.repetitions[cell] = reps
    return results

"""A benchmark sweep: tuning, repetitions, workers, resume, and the statistics of the report.

Protocol (DeepOBS, [Schneider2019]; AlgoPerf, [Dahl2023]:

1. **Tuning.** For each problem and optimizer, one run per value of the optimizer's main
   knob (:mod:`~secondorder.bench.registry` grid) on seed ``0``.
2. **Selection** (:func:`select_best`): the setting with the best **final validation
   metric** of its tuning run: validation accuracy on classification problems, validation
   loss otherwise (ties: lower final validation loss). Diverged and failed runs are never
   selected.
3. **Repetitions** (the measurement runs). With ``equal="time"`` (the command line's
   default) every method's selected setting trains on seeds ``0..N-1`` for the same
   training time ``T`` of the problem, calibrated from the tuning runs and stored
   (:mod:`~secondorder.bench.time_budget`). With ``equal="epochs"`` the selected setting
   is rerun with the tuning budget on seeds ``0..N-1`` (seed 0 is the tuning run itself,
   reused). Means come with 95% confidence intervals from the t-distribution
   (:func:`mean_ci`).
4. **Targets** (:func:`target_for`, AlgoPerf-style): per problem, the tuned first-order
   baselines (``first_order`` registry entries) give each their mean (over seeds) of the
   best validation metric reached; the best of these, ``v*``, and the mean initial value
   ``v0`` set the target ``v0 + 0.99 (v* - v0)``: 99% of the improvement the best tuned
   first-order method achieves. Without first-order runs in the sweep, all methods are used.
5. **Time to target** (:func:`time_to_target`): the training wall time (evaluation
   excluded) and the backprop-equivalents at the first evaluation reaching the target;
   infinite if never reached. Per method and problem the median over seeds is used (so a
   method that misses the target in most seeds counts as not reaching it).
6. **Performance profiles** ([DolanMore2002], :func:`performance_profile`): over problems,
   the fraction of problems on which a method's cost to target is within a factor ``tau``
   of the best method's.

The statistics of steps 2-6 are in :mod:`~secondorder.bench.analysis`.

Runs execute in-process (``workers=1``) or in ``workers`` spawned processes
(:mod:`~secondorder.bench.workers`) that each open their own
:class:`~secondorder.bench.store.Store` connection; a killed sweep leaves no process behind.

**Resume and concurrency.** A run's key is its sweep, problem, optimizer,
hyperparameters, seed, budget and *settings*: the evaluation frequency and the
fingerprint of the problem's data files (:func:`secondorder.bench.data.files_fingerprint`),
so a change to either is a new run. Each run is claimed in the database before it is
executed (:meth:`~secondorder.bench.store.Store.claim_run`). Rerunning a sweep skips
finished and diverged runs, redoes interrupted ones (a ``running`` row whose owner died or
whose heartbeat lapsed) and, with ``SweepConfig.retry_failed`` (the default), retries each
run that failed before this sweep started. A problem's calibrated time budget is stored
before its measurement runs start (:mod:`~secondorder.bench.time_budget`), so a resumed
sweep finds their keys again. Several sweeps on one database share the work:
a run another live process is executing is waited for, not redone, and each sweep selects
and reports only once all its runs are terminal.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch

# What a sweep runs (secondorder.bench.sweep_config), the statistics of the protocol
# (steps 2-6, secondorder.bench.analysis) and the worker processes
# (secondorder.bench.workers) live in their own modules; they are re-exported here.
from secondorder.bench import time_budget
from secondorder.bench.analysis import (
    TARGET_FRACTION,
    RunRecord,
    best_value,
    load_records,
    mean_ci,
    median_cost,
    metric_for,
    performance_profile,
    select_best,
    target_for,
    time_to_target,
)
from secondorder.bench.data import files_fingerprint
from secondorder.bench.datafacts import META_KEY as DATA_META_KEY
from secondorder.bench.datafacts import data_facts
from secondorder.bench.executors import active_executor
from secondorder.bench.registry import get_optimizer
from secondorder.bench.runner import Budget, RunResult, evaluate_split, run
from secondorder.bench.store import TERMINAL, Store
from secondorder.bench.sweep_config import MIN_CURVE_POINTS, SweepConfig, Task
from secondorder.bench.tensorboard import log_run as log_to_tensorboard
from secondorder.bench.timing import META_KEY as TIMING_META_KEY
from secondorder.bench.timing import LoadMonitor, cores_available, threads_per_worker
from secondorder.bench.workers import WorkerPool, die_with_parent

__all__ = [
    "MIN_CURVE_POINTS",
    "TARGET_FRACTION",
    "RunRecord",
    "SweepConfig",
    "Task",
    "best_value",
    "die_with_parent",
    "estimate_run_seconds",
    "load_records",
    "mean_ci",
    "median_cost",
    "metric_for",
    "performance_profile",
    "run_sweep",
    "select_best",
    "target_for",
    "time_to_target",
    "train_task",
    "warm_up",
]

#: Steps and training-seconds limit of the probe run of :func:`estimate_run_seconds`.
PROBE_STEPS = 6
PROBE_SECONDS = 1.0
#: Seconds between checks on runs that another process is executing.
POLL_SECONDS = 1.0

ProblemLoader = Callable[..., Any]


def _default_loader(name: str, *, data_dir: str | Path | None = None, seed: int = 0):
    from secondorder.bench.problems import get_problem

    return get_problem(name, data_dir=data_dir, seed=seed)


_PROBLEMS: dict[tuple[str, str | None], Any] = {}


def _problem(loader: ProblemLoader, name: str, data_dir: str | None):
    key = (name, data_dir)
    if key not in _PROBLEMS:
        _PROBLEMS[key] = loader(name, data_dir=data_dir, seed=0)
    return _PROBLEMS[key]


#: (problem, optimizer) pairs this process has run once untimed (:func:`warm_up`).
_WARMED: set[tuple[str, str]] = set()
#: Training seconds of a warm-up run (at least one step is always taken).
WARMUP_SECONDS = 0.05


def warm_up(problem, optimizer: str, hyperparameters: Mapping[str, Any]) -> None:
    """Run ``optimizer`` on ``problem`` once, briefly and untimed, in this process.

    The first step of an optimizer in a fresh process pays one-off costs (lazy imports,
    thread pools, allocator growth): a cold run of the breast cancer logistic regression
    with Adam took 2-3 times as long as the same run warm. Each process therefore warms
    every (problem, optimizer) pair before its first timed run, so that every seed and
    every phase is timed the same way. Nothing is stored; errors are left to the timed run.
    """
    key = (problem.name, optimizer)
    if key in _WARMED:
        return
    _WARMED.add(key)
    try:
        run(problem, get_optimizer(optimizer), dict(hyperparameters), 0,
            Budget(seconds=WARMUP_SECONDS))
    except Exception:  # noqa: BLE001 -- the timed run reports the error
        pass


def train_task(task: Task, loader: ProblemLoader | None = None) -> RunResult:
    """Train ``task`` in this process: its problem (built once per process), a
    :func:`warm_up`, then the timed run. No database; a failure of the run itself comes
    back as status ``"failed"``. The process pool and the Ray executor both train this way.
    """
    try:
        problem = _problem(loader or _default_loader, task.problem, task.data_dir)
        warm_up(problem, task.optimizer, dict(task.hyperparameters))
        return run(problem, get_optimizer(task.optimizer), dict(task.hyperparameters),
                   task.seed, Budget(**dict(task.budget)),
                   evals_per_epoch=task.evals_per_epoch, min_eval_gap=task.min_eval_gap)
    except Exception as e:  # noqa: BLE001 -- a broken problem must not kill the sweep
        return RunResult("failed", [], f"{type(e).__name__}: {e}")


def execute(db_path: str, task: Task, loader: ProblemLoader | None = None) -> str:
    """Claim and run ``task`` (:func:`train_task`); returns its status, ``"skipped"``
    when it was terminal already, or ``"busy"`` when another live process holds its claim
    (or took it over while this one ran: nothing of this run is then stored)."""
    with Store(db_path, verify=False) as store:
        claim = store.claim_run(*task.key(), retry_failed_before=task.retry_failed_before)
        if claim.state != "claimed":
            return "skipped" if claim.state == "done" else "busy"
        with store.keep_alive(claim.run_id):
            result = train_task(task, loader)
        if not store.finish_run(claim.run_id, result.status, result.measurements, result.error):
            return "busy"
        log_to_tensorboard(task, result.measurements)  # a no-op without --tensorboard
        return result.status


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



def _execute_all(db_path: str, tasks: Sequence[Task], workers: WorkerPool, bar) -> dict[str, int]:
    """Execute ``tasks`` until each is terminal in the database: the pending ones here,
    then, every :data:`POLL_SECONDS`, those another process was running (``"busy"``)
    until that process finishes them (counted ``"skipped"``) or its claim goes stale
    (taken over and run here). Under :func:`~secondorder.bench.executors.use_executor`
    the pending tasks run as Ray tasks instead of in this process or its pool."""
    executor = active_executor()
    if executor is not None and workers.loader is not None:
        raise ValueError("a custom problem loader needs the local executor, not Ray")
    counts: Counter[str] = Counter()
    remaining = list(tasks)
    while remaining:
        pending = _pending(db_path, remaining)
        done_elsewhere = len(remaining) - len(pending)
        if done_elsewhere:
            counts["skipped"] += done_elsewhere
            if bar is not None:
                bar.update(done_elsewhere)
        if executor is not None:  # Ray (secondorder.bench.executors)
            statuses = executor.execute(db_path, pending)
        else:
            pool = workers.get(len(pending))
            if pool is None:
                statuses = ((t, execute(db_path, t, workers.loader)) for t in pending)
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
    return dict(counts)


def _items(d: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(d.items()))


def run_sweep(config: SweepConfig, db_path: str | Path, *, progress: bool = True,
              loader: ProblemLoader | None = None,
              on_plan: Callable[[dict[str, Any]], None] | None = None,
              on_problem_done: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Tune, select and repeat (module docstring); results go to the database at ``db_path``.

    Problems are done one after the other (tuning, selection, with ``config.calibrates``
    the calibration of the problem's time budget, stored before its first measurement run
    or read back when stored already, then the repetitions), so that ``on_problem_done``
    can write a report of the finished ones. Before any run, each
    (problem, optimizer) pair with work left gets a short probe (:func:`estimate_run_seconds`)
    that estimates the sweep's duration, passed once to ``on_plan``. The load average of
    each phase is recorded (:mod:`~secondorder.bench.timing`).

    Args:
        config: the sweep.
        db_path: SQLite file (created if absent); rerunning resumes.
        progress: one tqdm bar over the planned runs.
        loader: ``loader(name, data_dir=..., seed=0) -> Problem``; default
            :func:`secondorder.bench.problems.get_problem`. Needs ``workers=1``.
        on_plan: called once before the first run with ``{"tuning_runs",
            "repetition_runs", "pending_tuning_runs", "estimate_seconds",
            "calibration_seconds"}``.
        on_problem_done: called with a problem's name once all its runs are terminal.

    Returns:
        ``{"skipped_optimizers": {name: reason}, "tuning": counts, "final": counts,
        "selected": {(problem, optimizer): hyperparameters}, "statuses": counts of the
        final status of every run of the sweep, "errors": up to 3 messages of failed
        runs, "timing": the timing conditions, "plan": what ``on_plan`` got}``.

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
    evals = {p: config.evals_for(prob) for p, prob in problems.items()}
    settings = {p: _items({"evals_per_epoch": evals[p],
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
            "equal": "time" if config.calibrates else "epochs",
        })
        # What data each problem used, for the report (secondorder.bench.datafacts).
        store.set_meta(config.name, DATA_META_KEY,
                       {p: data_facts(prob) for p, prob in problems.items()})

    def budget_of(pname: str) -> tuple[tuple[str, float], ...]:
        b = config.budget or Budget(epochs=float(problems[pname].epochs))
        return _items(b.as_dict())

    def task(pname, spec, hyper, seed, budget=None, gap=0.0) -> Task:
        return Task(config.name, pname, spec.name, _items(hyper), seed,
                    budget if budget is not None else budget_of(pname), evals[pname],
                    config.data_dir, settings[pname], retry_before, gap)

    tuning = {p: [task(p, s, s.hyperparameters(v), 0) for s in specs
                  for v in s.grid(config.grid)] for p in config.problems}
    all_tuning = [t for ts in tuning.values() for t in ts]
    plan = _plan(config, problems, specs, tuning, budget_of, db_path, evals)
    if on_plan is not None:
        on_plan(plan)
    conditions: dict[str, Any] = {
        "cores": cores_available(), "cpu_count": os.cpu_count(), "workers": config.workers,
        "threads_per_worker": (threads_per_worker(config.workers) if config.workers > 1
                               else _torch_threads()),
        "phases": {}}

    def phase(name: str, tasks: list[Task]) -> dict[str, int]:
        with LoadMonitor() as mon:
            counts = _execute_all(db_path, tasks, pool, bar)
        conditions["phases"][name] = mon.record
        with Store(db_path, verify=False) as store:
            store.set_meta(config.name, TIMING_META_KEY, conditions)
        return counts

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=plan["tuning_runs"] + len(specs) * len(config.problems)
                   * config.seeds, desc=config.name, unit="run")
    pool = WorkerPool(config.workers, loader)
    tuning_counts: Counter[str] = Counter()
    final_counts: Counter[str] = Counter()
    selected = {}
    final: list[Task] = []
    try:
        for p in config.problems:
            tuning_counts.update(phase(f"tuning of {p}", tuning[p]))
            with Store(db_path, verify=False) as store:
                records = [r for r in load_records(store, config.name) if r.problem == p]
            reps = []
            best_of = {}
            for s in specs:
                cands = [r for r in records if r.optimizer == s.name
                         and r.seed == 0 and r.budget == dict(budget_of(p))
                         and r.settings == dict(settings[p])]
                best = select_best(cands)
                if best is not None:
                    best_of[s.name] = best
                    selected[(p, s.name)] = best.hyperparameters
            budget, gap = None, 0.0
            if config.calibrates and best_of:
                budget, gap = _calibrated_budget(db_path, config, p, best_of,
                                                 budget_of(p), settings[p])
            for s in specs:
                if s.name in best_of:
                    reps += [task(p, s, best_of[s.name].hyperparameters, seed, budget, gap)
                             for seed in range(config.seeds)]
            final += reps
            final_counts.update(phase(f"repetitions of {p}", reps))
            if on_problem_done is not None:
                on_problem_done(p)
    finally:
        pool.shutdown()
        if bar is not None:
            bar.close()
    statuses: Counter[str] = Counter()
    errors: list[str] = []
    with Store(db_path, verify=False) as store:
        for t in dict.fromkeys(all_tuning + final):
            row = store.find_run(*t.key())
            statuses[row["status"]] += 1
            if row["status"] == "failed" and row["error"] and len(errors) < 3:
                errors.append(f"{t.problem}/{t.optimizer}: {row['error']}")
    return {"skipped_optimizers": skipped, "tuning": dict(tuning_counts),
            "final": dict(final_counts), "selected": selected, "statuses": dict(statuses),
            "errors": errors, "timing": conditions, "plan": plan}


def _torch_threads() -> int:
    return torch.get_num_threads()


def _calibrated_budget(db_path: str, config: SweepConfig, problem: str,
                       selected: Mapping[str, RunRecord], tuning: tuple[tuple[str, float], ...],
                       settings: tuple[tuple[str, Any], ...]
                       ) -> tuple[tuple[tuple[str, float], ...], float]:
    """The measurement budget of ``problem`` and its ``min_eval_gap``: the stored
    calibration when there is one for this tuning budget and these settings (a resumed
    sweep), else :func:`~secondorder.bench.time_budget.calibrate` on the selected tuning
    runs, stored before any measurement run starts."""
    with Store(db_path, verify=False) as store:
        entry = time_budget.load_budget(store, config.name, problem, dict(tuning),
                                        dict(settings))
        if entry is None:
            seconds, slowest, slowest_s = time_budget.calibrate(selected, config.min_time_budget)
            budget = time_budget.measurement_budget(seconds, Budget(**dict(tuning)))
            entry = {"seconds": seconds, "slowest": slowest, "slowest_seconds": slowest_s,
                     "tuning_budget": dict(tuning), "settings": dict(settings),
                     "budget": budget.as_dict()}
            time_budget.save_budget(store, config.name, problem, entry)
    return _items(entry["budget"]), time_budget.min_eval_gap(float(entry["seconds"]))


def estimate_run_seconds(problem, spec, hyperparameters: Mapping[str, Any], budget: Budget,
                         evals_per_epoch: int) -> float:
    """Seconds one run of ``spec`` on ``problem`` will take, from a short probe run.

    The probe trains :data:`PROBE_STEPS` steps (at most :data:`PROBE_SECONDS` of training,
    at least one step) and measures the median time of its steps after the first (cold)
    one; one evaluation is then timed warm
    (:func:`_evaluation_seconds`);
    the run is then ``steps x step time + evaluations x evaluation time``, its steps and
    evaluations following from the budget (a seconds budget caps the training time). The
    probe also warms this process (:func:`warm_up`). NaN if the probe fails.
    """
    if not _WARMED:  # the first step of a process pays process-wide one-off costs
        warm_up(problem, spec.name, hyperparameters)
    _WARMED.add((problem.name, spec.name))
    n = len(problem.train)
    full = problem.full_batch and spec.full_batch
    steps_per_epoch = math.ceil(n / (n if full else min(int(problem.batch_size), n)))
    stamps: list[float] = []
    t0 = time.perf_counter()
    try:
        probe = Budget(epochs=PROBE_STEPS / steps_per_epoch, seconds=PROBE_SECONDS)
        res = run(problem, spec, dict(hyperparameters), 0, probe,
                  on_step=lambda _: stamps.append(time.perf_counter()))
    except Exception:  # noqa: BLE001 -- an estimate only
        return math.nan
    total = time.perf_counter() - t0
    ms = res.measurements
    if len(ms) < 2 or not ms[-1].get("step"):
        return total
    steps, train = ms[-1]["step"], ms[-1]["wall_time"]
    # the first step is cold (one-off costs); the median later step is what a run repeats
    step_s = float(np.median(np.diff(stamps))) if len(stamps) >= 3 else train / steps
    if len(stamps) < 3:  # cut by PROBE_SECONDS after a cold step or two: time a warm one
        step_s = min(step_s, _warm_step_seconds(problem, spec, hyperparameters, steps_per_epoch))
    eval_s = _evaluation_seconds(problem, fallback=max(0.0, total - train) / len(ms))
    run_steps = math.inf
    if budget.epochs is not None:
        run_steps = budget.epochs * steps_per_epoch
    if budget.backprops is not None and ms[-1].get("backprops"):
        run_steps = min(run_steps, budget.backprops / (ms[-1]["backprops"] / steps))
    train_s = run_steps * step_s
    if budget.seconds is not None:
        train_s = min(train_s, budget.seconds)
    if not math.isfinite(train_s):
        return math.nan
    evals = train_s / step_s / steps_per_epoch * evals_per_epoch + 2
    return train_s + evals * eval_s


def _warm_step_seconds(problem, spec, hyperparameters: Mapping[str, Any],
                       steps_per_epoch: int) -> float:
    """Seconds of the second step of a 2-step probe (the first, cold, step excluded), for
    optimizers whose first probe only took a step or two: extrapolating a cold step made a
    1-step LSCG probe on the digits MLP predict 334 s for a run of a few seconds (under a
    load of 6). ``inf`` on error."""
    stamps: list[float] = []
    try:
        run(problem, spec, dict(hyperparameters), 0,
            Budget(epochs=2 / steps_per_epoch, seconds=2 * PROBE_SECONDS),
            on_step=lambda _: stamps.append(time.perf_counter()))
    except Exception:  # noqa: BLE001 -- an estimate only
        return math.inf
    return stamps[1] - stamps[0] if len(stamps) >= 2 else math.inf


def _evaluation_seconds(problem, fallback: float) -> float:
    """Seconds of one (warm) evaluation of a fresh model on the train, validation and test
    splits, as :func:`~secondorder.bench.runner.run` records it; ``fallback`` on error."""
    try:
        model = problem.make_model(0)
        model.eval()
        with torch.no_grad():
            t0 = time.perf_counter()
            for split in (problem.train, problem.validation, problem.test):
                evaluate_split(model, problem, split)
            return time.perf_counter() - t0
    except Exception:  # noqa: BLE001 -- an estimate only
        return fallback


def _plan(config: SweepConfig, problems, specs, tuning, budget_of, db_path,
          evals: Mapping[str, int]) -> dict[str, Any]:
    """Runs planned and the estimated duration (see :func:`run_sweep`). The probes run with
    the torch threads of a worker (:func:`~secondorder.bench.timing.threads_per_worker`):
    with the 2 threads of the main process, under a load of 6 on 2 cores, an LSCG run of
    the digits MLP took 131 s instead of a worker's 2.1 s, and the estimate followed."""
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    if config.workers > 1:
        torch.set_num_threads(threads_per_worker(config.workers))
    try:
        total = _estimate_total(config, problems, specs, tuning, budget_of, db_path, evals)
    finally:
        torch.set_num_threads(threads)
    n_tuning = sum(len(ts) for ts in tuning.values())
    reps = config.seeds if config.calibrates else config.seeds - 1
    return {"tuning_runs": n_tuning,
            "repetition_runs": len(specs) * len(problems) * reps,
            "pending_tuning_runs": sum(len(_pending(db_path, ts)) for ts in tuning.values()),
            "estimate_seconds": total / max(1, min(config.workers, cores_available())),
            "calibration_seconds": time.perf_counter() - t0}


def _estimate_total(config: SweepConfig, problems, specs, tuning, budget_of, db_path,
                    evals: Mapping[str, int]) -> float:
    """Run-seconds of the pending tuning runs and of the repetitions (:func:`_plan`)."""
    pending = {p: _pending(db_path, ts) for p, ts in tuning.items()}
    total = 0.0
    for p, ts in pending.items():
        ests = {}
        for s in specs:
            mine = [t for t in ts if t.optimizer == s.name]
            if not mine:
                continue
            est = estimate_run_seconds(problems[p], s, dict(mine[0].hyperparameters),
                                       Budget(**dict(budget_of(p))), evals[p])
            if math.isfinite(est):
                total += est * len(mine)
                ests[s.name] = est
        if config.calibrates and ests:  # every seed trains about min(T, cap x epoch budget)
            t = max(max(ests.values()), config.min_time_budget)
            total += config.seeds * sum(min(t, time_budget.MAX_EPOCH_FACTOR * e)
                                        for e in ests.values())
        else:
            total += (config.seeds - 1) * sum(ests.values())
    return total

"""Where the runs of a sweep or a study execute: locally (default) or on a Ray cluster.

With :class:`RayExecutor` each run is a Ray task that loads the problem, trains and
**returns** its status and measurements; the driver alone writes the SQLite database
(it claims each run before submitting it, renews the claims while the tasks run, and
``finish_run`` when the result arrives), so resume and
the report behave exactly as with the process pool. A task whose worker dies is retried
``max_retries`` times by Ray, then recorded as ``failed`` with the Ray error; Ctrl-C on
the driver cancels the outstanding tasks and leaves their runs ``running``, which the
next invocation of the same sweep redoes.

The sweep (:mod:`secondorder.bench.sweep`) and the studies
(:mod:`secondorder.bench.studies.execute`, which pass their own ``task_fn``) consult
:func:`active_executor` (set with :func:`use_executor`); ``None`` keeps their own
in-process / process-pool execution.

    secondorder bench --quick --executor ray                    # local Ray, all cores
    secondorder bench --quick --executor ray --address HOST:6379  # an existing cluster
    secondorder study veitch --quick --executor ray             # a study's runs on Ray
"""

from __future__ import annotations

import contextvars
import importlib.util
import os
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from typing import Any

__all__ = [
    "EXECUTORS",
    "ExecutorUnavailableError",
    "RayExecutor",
    "active_executor",
    "make_executor",
    "use_executor",
]

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install 'secondorder[ray]'"

_ACTIVE: contextvars.ContextVar[RayExecutor | None] = contextvars.ContextVar(
    "secondorder_executor", default=None)


class ExecutorUnavailableError(ValueError):
    """The chosen executor cannot run here (its package is missing, or a bad option)."""


def make_executor(name: str, *, address: str | None = None, max_retries: int = 1,
                  num_cpus: int | None = None) -> RayExecutor | None:
    """The executor called ``name`` (``None`` for ``"local"``), checked before any run.

    Raises:
        ExecutorUnavailableError: for an unknown name, ``address`` without Ray, or Ray
            not installed (the message gives the install command).
    """
    if name not in EXECUTORS:
        raise ExecutorUnavailableError(f"Invalid executor: {name!r}; choose one of {EXECUTORS}")
    if name == "local":
        if address is not None:
            raise ExecutorUnavailableError("--address needs --executor ray")
        return None
    if importlib.util.find_spec("ray") is None:
        raise ExecutorUnavailableError(
            f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}")
    return RayExecutor(address=address, max_retries=max_retries, num_cpus=num_cpus)


@contextmanager
def use_executor(executor: RayExecutor | None) -> Iterator[None]:
    """Run the sweeps inside this block on ``executor`` (``None``: the local default)."""
    token = _ACTIVE.set(executor)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_executor() -> RayExecutor | None:
    """The executor set by :func:`use_executor`, or ``None``."""
    return _ACTIVE.get()


def run_task(task: Any) -> tuple[str, list[dict[str, Any]], str | None]:
    """Train one sweep task and return ``(status, measurements, error)``; no database.

    A failure of the run itself is returned as status ``"failed"`` (as the local
    executor records it); only a dead worker surfaces as a Ray error.
    """
    from secondorder.bench.sweep import train_task  # sweep imports this module

    result = train_task(task)
    return result.status, result.measurements, result.error


class RayExecutor:
    """Runs sweep tasks as Ray tasks; the driver writes the database (module docstring).

    Args:
        address: a running cluster (``"HOST:6379"`` or ``"auto"``); ``None`` starts a
            local Ray on this machine.
        max_retries: times Ray resubmits a task whose worker died.
        num_cpus: CPUs of a local Ray (``None``: all).
    """

    def __init__(self, *, address: str | None = None, max_retries: int = 1,
                 num_cpus: int | None = None):
        if not (isinstance(max_retries, int) and max_retries >= 0):
            raise ExecutorUnavailableError(f"Invalid max_retries: {max_retries}; need an int >= 0")
        self.address, self.max_retries, self.num_cpus = address, max_retries, num_cpus

    def _ray(self):
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": self.address, "include_dashboard": False,
                                      "log_to_driver": False}
            if self.address is None and self.num_cpus is not None:
                kwargs["num_cpus"] = self.num_cpus
            ray.init(**kwargs)
        return ray

    def execute(self, db_path: str, tasks: Sequence[Any],
                task_fn: Any = None) -> Iterator[tuple[Any, str]]:
        """Claim and run ``tasks``, yielding ``(task, status)`` as each one ends.

        The status is the run's, ``"skipped"`` for a run already terminal, or ``"busy"``
        for one another live process holds (the sweep polls it again, as for the process
        pool). The driver renews its claims while the Ray tasks run, so a long run is not
        taken over as stale. Closing the generator early (an exception in the consumer,
        Ctrl-C) cancels the outstanding Ray tasks; their runs stay ``running``.

        Args:
            db_path: the SQLite database, written only here, on the driver.
            tasks: :class:`secondorder.bench.sweep.Task` objects, or any picklable
                objects with ``key()``, ``retry_failed_before`` and the names
                TensorBoard uses (a study's
                :class:`~secondorder.bench.studies.execute.StudyTask`).
            task_fn: what each Ray task runs, ``task -> (status, measurements, error)``
                (default :func:`run_task`; studies pass theirs, tests swap it).
        """
        from secondorder.bench.plugins import ENV_KEY
        from secondorder.bench.store import Store
        from secondorder.bench.tensorboard import log_run as log_to_tensorboard

        ray = self._ray()
        options: dict[str, Any] = {"num_cpus": 1, "max_retries": self.max_retries}
        if os.environ.get(ENV_KEY):  # plug-in declarations (--optimizer/--config) travel along
            options["runtime_env"] = {"env_vars": {ENV_KEY: os.environ[ENV_KEY]}}
        remote = ray.remote(**options)(task_fn or run_task)
        with Store(db_path, verify=False) as store:
            refs: dict[Any, tuple[Any, int]] = {}
            try:
                for t in tasks:
                    claim = store.claim_run(*t.key(), retry_failed_before=t.retry_failed_before)
                    if claim.state != "claimed":
                        yield t, "skipped" if claim.state == "done" else "busy"
                        continue
                    refs[remote.remote(t)] = (t, claim.run_id)
                while refs:
                    ready, _ = ray.wait(list(refs), num_returns=1, timeout=store.lease / 4)
                    if not ready:  # renew the claims of the runs still out
                        for _, run_id in refs.values():
                            store.heartbeat(run_id)
                        continue
                    t, run_id = refs.pop(ready[0])
                    try:
                        status, measurements, error = ray.get(ready[0])
                    except ray.exceptions.RayError as e:  # the worker died, retries spent
                        status, measurements = "failed", []
                        error = f"{type(e).__name__}: {str(e).splitlines()[0]}"
                    if not store.finish_run(run_id, status, measurements, error):
                        yield t, "busy"  # taken over meanwhile: nothing of this run stored
                        continue
                    log_to_tensorboard(t, measurements)  # a no-op without --tensorboard
                    yield t, status
            except BaseException:  # Ctrl-C or the generator closed: no orphan tasks
                for ref in refs:
                    ray.cancel(ref, force=True)
                raise

    def execute_all(self, db_path: str, tasks: Sequence[Any], bar: Any = None,
                    task_fn: Any = None) -> dict[str, int]:
        """Run ``tasks`` once (:meth:`execute`); returns status counts.

        Args:
            db_path: the SQLite database, written only here, on the driver.
            tasks: :class:`secondorder.bench.sweep.Task` objects.
            bar: optional progress bar (``update(1)`` per finished run).
            task_fn: what each Ray task runs (default :func:`run_task`; tests swap it).
        """
        counts: dict[str, int] = {}
        with closing(self.execute(db_path, tasks, task_fn)) as statuses:
            for _, status in statuses:
                counts[status] = counts.get(status, 0) + 1
                if bar is not None:
                    bar.update(1)
        return counts

"""The worker processes of a sweep: a spawned process pool whose workers die with the sweep.

Worker processes die with the process that started them (``PR_SET_PDEATHSIG`` on Linux,
and a thread that watches the parent process id everywhere), so a killed sweep leaves no
process behind. Each worker runs torch with
:func:`~secondorder.bench.timing.threads_per_worker` threads.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

from secondorder.bench.timing import threads_per_worker

__all__ = ["PARENT_CHECK_SECONDS", "WorkerPool", "die_with_parent"]

#: Seconds between checks of a worker process on its parent.
PARENT_CHECK_SECONDS = 0.5


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
    die_with_parent(parent_pid)
    torch.set_num_threads(threads)


class WorkerPool:
    """The worker processes of a sweep, started on first need and kept for all phases (so
    each worker is warmed once per problem and optimizer,
    :func:`~secondorder.bench.sweep.warm_up`).

    Args:
        workers: processes; with 1 (or a single task) runs execute in the calling process.
        loader: a custom problem loader, which only the calling process has (then
            ``workers`` must be 1), or ``None``.
    """

    def __init__(self, workers: int, loader):
        self.workers = workers
        self.loader = loader
        self.pool: ProcessPoolExecutor | None = None

    def get(self, pending: int) -> ProcessPoolExecutor | None:
        """The pool, or ``None`` to run in this process (one worker or one task)."""
        if self.pool is None and self.workers > 1 and pending > 1:
            if self.loader is not None:
                raise ValueError("a custom problem loader needs workers=1")
            self.pool = ProcessPoolExecutor(
                self.workers, mp_context=get_context("spawn"), initializer=_init_worker,
                initargs=(threads_per_worker(self.workers), os.getpid()))
        return self.pool

    def shutdown(self) -> None:
        """Stop the workers (runs not yet started are cancelled)."""
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None

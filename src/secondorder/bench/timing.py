"""Timing conditions of a sweep: cores, workers, threads, and the load during each phase.

Wall times measured while other processes compete for the cores are inflated, and by a
different factor in each phase, so the benchmark records under which conditions its times
were taken and warns when they cannot be trusted. A :class:`LoadMonitor` samples the
1-minute load average (:func:`os.getloadavg`) before, every :data:`SAMPLE_SECONDS` during,
and after a phase. A phase is **contended** when the highest load seen during it exceeds
the cores available to the process (:func:`cores_available`) by more than
:data:`CONTENTION_MARGIN`: the bench's own workers account for at most that many runnable
processes, and its driver (writing results, drawing progress) and the system's short tasks
for a fraction of one more (a quiet 2-core machine running the default bench peaks at 2.1),
so a larger excess is other work (one other busy process adds about 1).

The conditions are stored as sweep metadata (:data:`META_KEY`) and printed by the report
under every table (:func:`describe`) and, with a warning naming each contended phase
(:func:`warnings_for`), in the report and on the terminal.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CONTENTION_MARGIN",
    "META_KEY",
    "SAMPLE_SECONDS",
    "LoadMonitor",
    "contended_phases",
    "cores_available",
    "describe",
    "load_average",
    "summary_warning",
    "threads_per_worker",
    "warnings_for",
]

#: Load above the available cores that the bench's own driver and the system account for
#: (module docstring); a phase whose peak load exceeds ``cores + CONTENTION_MARGIN`` is
#: reported as contended.
CONTENTION_MARGIN = 0.5

#: Sweep metadata key of the timing conditions.
META_KEY = "timing"
#: Seconds between two samples of the load average during a phase.
SAMPLE_SECONDS = 2.0


def cores_available() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover -- macOS, Windows
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """Torch threads of each of ``workers`` worker processes: the cores shared out evenly."""
    return max(1, cores_available() // max(1, workers))


def load_average() -> float:
    """The 1-minute load average; NaN where the OS has none (Windows)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):  # pragma: no cover -- Windows
        return math.nan


class LoadMonitor:
    """Samples the load average during a phase (a context manager).

    After the ``with`` block, :attr:`record` is ``{"before", "after", "peak", "seconds"}``:
    the load average when the phase started and ended and the highest value sampled.
    """

    def __init__(self, sample_seconds: float = SAMPLE_SECONDS):
        self.sample_seconds = sample_seconds
        self.record: dict[str, float] = {}
        self._stop = threading.Event()
        self._samples: list[float] = []
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def _sample(self) -> None:
        while not self._stop.wait(self.sample_seconds):
            self._samples.append(load_average())

    def __enter__(self) -> LoadMonitor:
        self._t0 = time.perf_counter()
        self._samples = [load_average()]
        self._thread = threading.Thread(target=self._sample, name="load-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._samples.append(load_average())
        finite = [s for s in self._samples if math.isfinite(s)]
        self.record = {"before": self._samples[0], "after": self._samples[-1],
                       "peak": max(finite) if finite else math.nan,
                       "seconds": time.perf_counter() - self._t0}


def contended_phases(conditions: Mapping[str, Any]) -> list[str]:
    """Phases whose peak load average exceeded the cores available to the bench by more
    than :data:`CONTENTION_MARGIN`."""
    limit = (conditions.get("cores") or 1) + CONTENTION_MARGIN
    return [name for name, rec in (conditions.get("phases") or {}).items()
            if math.isfinite(rec.get("peak", math.nan)) and rec["peak"] > limit]


def describe(conditions: Mapping[str, Any]) -> str:
    """One sentence: workers, threads, cores and the load average of each phase."""
    if not conditions:
        return "Timing conditions: not recorded by this sweep."
    phases = conditions.get("phases") or {}
    loads = "; ".join(f"{name} {rec['before']:.1f} -> {rec['after']:.1f} (peak {rec['peak']:.1f})"
                      for name, rec in phases.items())
    return (f"Timing conditions: {conditions.get('workers')} worker(s) x "
            f"{conditions.get('threads_per_worker')} torch thread(s) on "
            f"{conditions.get('cores')} available core(s) (CPU count "
            f"{conditions.get('cpu_count')}); 1-minute load average before -> after each "
            f"phase: {loads or 'no phase ran'}.")


def warnings_for(conditions: Mapping[str, Any]) -> list[str]:
    """One warning per contended phase (see the module docstring)."""
    cores = conditions.get("cores") or 1
    out = []
    for name in contended_phases(conditions):
        peak = conditions["phases"][name]["peak"]
        out.append(f"other processes competed for the cores during the {name} phase (load "
                   f"average up to {peak:.1f} on {cores} core(s)): its wall times are "
                   "inflated; compare times of this phase with care or rerun on a quiet "
                   "machine")
    return out


def summary_warning(conditions: Mapping[str, Any]) -> str | None:
    """All contended phases in one warning (for the terminal); ``None`` if there are none."""
    names = contended_phases(conditions)
    if not names:
        return None
    peak = max(conditions["phases"][n]["peak"] for n in names)
    return (f"other processes competed for the cores during {len(names)} of "
            f"{len(conditions['phases'])} phases ({', '.join(names)}; load average up to "
            f"{peak:.1f} on {conditions.get('cores')} core(s)): their wall times are inflated; "
            "compare times with care or rerun on a quiet machine (the report names each phase)")

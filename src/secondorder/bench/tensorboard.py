"""``secondorder bench --tensorboard DIR``: each run's measurements as TensorBoard scalars.

The SQLite database stays the source of truth; this is a view for watching a sweep. As
soon as a run is stored, its measurements are written with
:class:`torch.utils.tensorboard.SummaryWriter` to ``DIR/<sweep>/<problem>/<optimizer>/
<hyperparameters>,seed=<seed>`` (``...,seed=<seed>,seconds=<T>`` for a run with a
time budget ``T``, such as the equal-time runs, whose seed 0 shares its setting with the
tuning run): one scalar per column of
:data:`secondorder.bench.store.MEASUREMENT_COLUMNS` (losses, accuracies, training wall
time, backprop-equivalents and the other counts), tagged with the column name, at global
step = the optimizer step of the evaluation.

The folder travels to sweep worker processes in the environment variable :data:`ENV_DIR`
(set by :func:`configure`, which the ``bench`` command calls). Needs the optional extra
``tensorboard`` (:data:`INSTALL`).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from secondorder.bench.store import MEASUREMENT_COLUMNS

__all__ = ["ENV_DIR", "INSTALL", "SCALARS", "configure", "log_run", "run_dir"]

ENV_DIR = "SECONDORDER_TENSORBOARD"
INSTALL = "pip install 'secondorder[tensorboard]' (or pip install tensorboard)"
#: The measurement columns written as scalars (``step`` is the global step).
SCALARS = tuple(c for c in MEASUREMENT_COLUMNS if c != "step")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+\-]")


def configure(log_dir: str | os.PathLike | None) -> None:
    """Stream the runs of this process and its workers to ``log_dir`` (``None``: stop).

    Raises:
        ValueError: naming ``--tensorboard`` and the install command when the
            ``tensorboard`` package is missing.
    """
    if log_dir is None:
        os.environ.pop(ENV_DIR, None)
        return
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ValueError(f"--tensorboard {log_dir} needs the tensorboard package; "
                         f"install it: {INSTALL}") from None
    os.environ[ENV_DIR] = str(Path(log_dir).resolve())


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text) or "_"


def run_dir(root: str | Path, sweep: str, problem: str, optimizer: str,
            hyperparameters: Mapping[str, Any], seed: int, seconds: float | None = None) -> Path:
    """The event-file folder of one run (module docstring); ``seconds``: its time budget."""
    setting = ",".join(f"{k}={v}" for k, v in sorted(hyperparameters.items()))
    leaf = f"{setting},seed={seed}" if setting else f"seed={seed}"
    if seconds is not None:
        leaf += f",seconds={seconds:g}"
    return Path(root) / _safe(sweep) / _safe(problem) / _safe(optimizer) / _safe(leaf)


def log_run(task: Any, measurements: Sequence[Mapping[str, Any]]) -> Path | None:
    """Write ``measurements`` of the sweep task ``task`` if streaming is on; returns the
    folder (``None`` when off). A failure to write warns and never fails the run."""
    root = os.environ.get(ENV_DIR)
    if not root:
        return None
    folder = run_dir(root, task.sweep, task.problem, task.optimizer,
                     dict(task.hyperparameters), task.seed, dict(task.budget).get("seconds"))
    try:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(folder))
        try:
            for m in measurements:
                for key in SCALARS:
                    v = m.get(key)
                    if v is not None and not isinstance(v, bool) and math.isfinite(v):
                        writer.add_scalar(key, float(v), global_step=int(m["step"]))
        finally:
            writer.close()
    except Exception as e:  # noqa: BLE001 -- the database has the run; TensorBoard is a view
        warnings.warn(f"TensorBoard: could not write {folder}: {type(e).__name__}: {e}",
                      stacklevel=2)
    return folder

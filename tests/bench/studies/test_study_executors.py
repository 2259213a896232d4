"""Studies on Ray (``secondorder study NAME --executor ray``): the same stored runs as in
this process, a worker that dies, resume, and the exit-2 path without Ray.

The Ray tests share one local Ray with 2 CPUs (module scope) and are skipped when Ray is
not installed. The study is a tiny synthetic one (both part kinds, a tuned and an untuned
method, two seeds) on the embedded logistic2d and Rosenbrock problems.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import os

import pytest

from secondorder import cli
from secondorder.bench import studies
from secondorder.bench.executors import RayExecutor, use_executor
from secondorder.bench.store import Store
from secondorder.bench.studies import execute
from secondorder.bench.studies.execute import count_runs, run_study
from secondorder.bench.studies.spec import MethodSpec, Part, ProblemSpec, Study

TINY = Study(
    "tiny", "[Veitch]", "A synthetic study of both part kinds",
    parts=(
        Part("minibatch", "epochs part", "epochs",
             (ProblemSpec("logistic", "logistic2d", 32),),
             (MethodSpec("SGD", "sgd", grid=(0.01, 0.1)), MethodSpec("Adam", "adam")),
             {"epochs": 2}, seeds=2),
        Part("iters", "iterations part", "iterations",
             (ProblemSpec("rosenbrock", "rosenbrock_b50", 1, "full"),),
             (MethodSpec("L-BFGS", "LBFGS"), MethodSpec("scipy", "scipy_lbfgsb")),
             {"iterations": 6}, seeds=1),
    ),
    tables=(), figures=())
RUNS = 2 + 1 + 2 + 2  # SGD: 2 grid values + 1 more seed; Adam: 2 seeds; 2 iteration runs
LOSSES = ("train_loss", "val_loss", "test_loss", "train_acc", "val_acc", "test_acc")


def _rows(db) -> list[tuple]:
    """Each run's key, status and loss/accuracy curve (no times, no row ids)."""
    with Store(db) as st:
        return sorted(
            (r["sweep"], r["problem"], r["optimizer"], str(r["hyperparameters"]), r["seed"],
             r["status"], tuple((m["step"], *(m[k] for k in LOSSES))
                                for m in st.measurements(r["id"])))
            for r in st.runs())


@pytest.fixture
def tiny_registered(monkeypatch):
    """``secondorder study tiny`` runs :data:`TINY` (registered in the driver only: the Ray
    workers get each run's problem declaration with the task)."""
    monkeypatch.setitem(studies.STUDIES, "tiny", lambda quick=False, seeds=None: TINY)


def test_study_executor_ray_without_ray_exits_2_with_the_install_command(
        tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))
    out = tmp_path / "out"
    assert cli.main(["study", "veitch", "--quick", "--out", str(out), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert "--executor ray needs Ray" in err and "pip install 'secondorder[ray]'" in err
    assert not out.exists()  # nothing ran, nothing written
    assert cli.main(["study", "veitch", "--out", str(out), "--address", "h:6379"]) == 2
    assert "--address needs --executor ray" in capsys.readouterr().err


def test_a_worker_with_other_data_records_a_failed_run_naming_both_tags():
    spec = TINY.parts[0].problems[0]
    task = execute.StudyTask("study:tiny:minibatch", "logistic@other-data", "adam", (), 0,
                             (("epochs", 1),), "epochs", spec, 1, None, False)
    status, measurements, error = execute.train(task)  # as in a Ray task: built here
    assert (status, measurements) == ("failed", [])
    built = f"logistic@{execute.build_problem(spec, None, False).tag}"
    assert f"this worker built {built!r}, the driver 'logistic@other-data'" in error
    assert "--data-dir" in error
    ok = execute.train(dataclasses.replace(task, problem=built))
    assert ok[0] == "finished" and ok[1]


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_study_on_ray_stores_the_same_runs_as_in_process(ray_local, tiny_registered,
                                                         tmp_path, capsys):
    here, on_ray = tmp_path / "here", tmp_path / "ray"
    assert cli.main(["study", "tiny", "--out", str(here)]) == 0
    assert cli.main(["study", "tiny", "--out", str(on_ray), "--executor", "ray"]) == 0
    rows = _rows(on_ray / "results.sqlite")
    assert len(rows) == RUNS == count_runs(TINY)
    assert {r[5] for r in rows} <= {"finished", "diverged"}
    assert all(len(r[6]) >= 2 for r in rows)  # every run has its curve
    assert rows == _rows(here / "results.sqlite")  # same keys, statuses, losses
    assert (on_ray / "study.md").read_text().startswith("# Study [Veitch]")
    capsys.readouterr()
    # resume across executors: on Ray, the study run in-process reruns nothing
    log = io.StringIO()
    with use_executor(RayExecutor()):
        results = run_study(TINY, here / "results.sqlite", stream=log)
    assert log.getvalue().count(" skipped ") == RUNS
    assert _rows(here / "results.sqlite") == rows
    assert [r.seed for r in results.runs("minibatch", "logistic", "SGD")] == [0, 1]


def _dies_once(marker_dir: str):
    """A task function whose worker process dies on the first attempt of Adam's seed 1."""
    def task_fn(task):
        marker = os.path.join(marker_dir, "adam-seed1-died")
        if task.optimizer == "adam" and task.seed == 1 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker process dies, as if killed
        return execute.train(task)

    return task_fn


@pytest.mark.parametrize("retries, expected", [(1, "finished"), (0, "failed")])
def test_a_study_run_whose_worker_dies_is_retried_or_recorded_failed(
        ray_local, tmp_path, monkeypatch, retries, expected):
    monkeypatch.setattr(execute, "run_task", _dies_once(str(tmp_path)))
    db = tmp_path / "results.sqlite"
    with use_executor(RayExecutor(max_retries=retries)):
        results = run_study(TINY, db, progress=False)
    assert (tmp_path / "adam-seed1-died").exists()  # it did die once
    with Store(db) as st:
        runs = st.runs()
    assert len(runs) == RUNS  # never lost, never stored twice
    died = [r for r in runs if r["optimizer"] == "adam" and r["seed"] == 1]
    assert [r["status"] for r in died] == [expected]
    assert all(r["status"] in ("finished", "diverged") for r in runs if r not in died)
    assert [r.status for r in results.runs("minibatch", "logistic", "Adam")][1] == expected
    if expected == "failed":
        assert "Worker" in died[0]["error"] or "died" in died[0]["error"], died[0]["error"]


class _CtrlCAfter:
    """A progress stream whose ``lines``-th line raises KeyboardInterrupt (Ctrl-C)."""

    def __init__(self, lines: int):
        self.lines = lines

    def write(self, text: str) -> None:
        if text.strip():
            self.lines -= 1
            if self.lines == 0:
                raise KeyboardInterrupt

    def flush(self) -> None:
        pass


def test_ctrl_c_of_a_study_on_ray_leaves_a_consistent_database_that_resumes(ray_local,
                                                                             tmp_path):
    db = tmp_path / "results.sqlite"
    with use_executor(RayExecutor()), pytest.raises(KeyboardInterrupt):
        run_study(TINY, db, stream=_CtrlCAfter(2))
    with Store(db) as st:
        runs = st.runs()
        ended = [r for r in runs if r["status"] != "running"]
        assert len(ended) >= 2 and len(runs) < RUNS  # interrupted in phase one
        assert all(st.measurements(r["id"]) for r in ended)
        assert not any(st.measurements(r["id"]) for r in runs if r["status"] == "running")
    with use_executor(RayExecutor()):
        run_study(TINY, db, progress=False)  # the same study again: resumes
    run_study(TINY, tmp_path / "here.sqlite", progress=False)
    assert _rows(db) == _rows(tmp_path / "here.sqlite")

"""The ``bench`` command on long runs and the command line's help and errors (issue 10):
the plan and estimate printed first, interim reports, Ctrl-C, no empty folder left behind,
examples and defaults in every help, suggestions on typos."""

import pytest

from secondorder import cli
from secondorder.bench import sweep

ARGS = ["bench", "--problems", "logistic2d,rosenbrock", "--optimizers", "sgd", "adam",
        "--seeds", "1", "--budget", "1", "--grid", "quick", "--no-progress", "--workers", "1"]


def test_bench_prints_plan_first_and_the_answer_and_timing_last(tmp_path, capsys):
    assert cli.main([*ARGS, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    # 2 problems x 2 optimizers x 3 learning rates; 1 seed: no repetition beyond seed 0.
    assert first.startswith("planned: 12 tuning runs (12 still to do) and 0 repetition runs; "
                            "estimated time ")
    assert "Timing conditions: 1 worker(s)" in out
    md = (tmp_path / "report.md").read_text()
    answer = md.split("### Across problems\n\n")[1].split("\n")[0]
    assert answer and answer in out
    assert "Interim report" not in md


def test_interrupted_bench_leaves_a_report_of_what_finished(tmp_path, capsys, monkeypatch):
    real = sweep.execute

    def ctrl_c_on_rosenbrock(db, task, loader=None):
        if task.problem == "rosenbrock":
            raise KeyboardInterrupt
        return real(db, task, loader)

    monkeypatch.setattr(sweep, "execute", ctrl_c_on_rosenbrock)
    assert cli.main([*ARGS, "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "interrupted; report of what finished" in err and "rerun the same command" in err
    md = (tmp_path / "report.md").read_text()
    assert "**Interrupted: 1 of 2 problems done" in md
    assert "### Table 1: logistic2d" in md and "rosenbrock" not in md.split("## Verdict")[1]
    monkeypatch.undo()
    assert cli.main([*ARGS, "--out", str(tmp_path)]) == 0  # resumes
    assert "### Table 1: rosenbrock" in (tmp_path / "report.md").read_text()


def test_interim_report_is_written_after_each_problem(tmp_path, monkeypatch):
    seen = []
    real = sweep.execute

    def spy(db, task, loader=None):
        if task.problem == "rosenbrock" and not seen:
            seen.append((tmp_path / "report.md").read_text())
        return real(db, task, loader)

    monkeypatch.setattr(sweep, "execute", spy)
    assert cli.main([*ARGS, "--out", str(tmp_path)]) == 0
    (interim,) = seen
    assert "**Interim report: 1 of 2 problems done" in interim
    assert "### Table 1: logistic2d" in interim and "![" not in interim


def test_failed_bench_leaves_no_empty_output_folder(tmp_path, capsys, monkeypatch):
    from secondorder.errors import DataFormatError

    def broken(*a, **kw):
        raise DataFormatError("labels.idx: bad magic number")

    monkeypatch.setattr(sweep, "run_sweep", broken)
    out = tmp_path / "new" / "results"
    assert cli.main([*ARGS, "--out", str(out)]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()

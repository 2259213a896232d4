"""The ``bench`` command on long runs and the command line's help and errors (issue 10):
the plan and estimate printed first, interim reports, Ctrl-C, no empty folder left behind,
examples and defaults in every help, suggestions on typos."""

import pytest

from secondorder import cli
from secondorder.bench import sweep

ARGS = ["bench", "--problems", "logistic2d,rosenbrock", "--optimizers", "sgd", "adam",
        "--seeds", "1", "--budget", "1", "--grid", "quick", "--no-progress", "--workers", "1",
        "--equal", "epochs"]


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
    for problem in ("logistic2d", "rosenbrock"):  # the equal-time view of every problem
        section = md.split(f"### Equal training time: {problem} (secondary)\n\n"
                           "Every method after ")[1]
        assert "| Method | Train loss | Val" in section.split("###")[0]


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


SUBCOMMANDS = ("bench", "report", "export", "list", "curvature", "study")


def _help(args, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([*args, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_main_help_has_no_raw_restructuredtext_and_lists_commands(capsys):
    text = _help([], capsys)
    for markup in ("``", ":func:", ":mod:", ":class:", ":meth:"):
        assert markup not in text
    for name in SUBCOMMANDS:
        assert f"\n    {name}" in text
    assert "examples:" in text and "secondorder bench --quick" in text


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_help_has_examples_and_defaults(name, capsys):
    text = _help([name], capsys)
    assert "``" not in text and ":func:" not in text
    assert "examples:" in text and f"secondorder {name}" in text.split("examples:")[1]
    if name != "list":
        assert "(default: " in text


def test_bench_help_states_defaults_and_quick_duration(capsys):
    text = " ".join(_help(["bench"], capsys).split())
    assert "results folder (default: secondorder-results)" in text
    assert f"one seed (about {cli.QUICK_DURATION} on 2 cores)" in text


@pytest.mark.parametrize("args, message", [
    (["bench", "--problems", "digit_mlp"], "unknown problem 'digit_mlp'; did you mean "
                                           "'digits_mlp'?"),
    (["bench", "--optimizers", "adma"], "unknown optimizer 'adma'; did you mean 'adam'?"),
    (["bench", "--optimizers", "lbfgs"], "unknown optimizer 'lbfgs'; did you mean 'LBFGS'?"),
    (["curvature", "--problem", "rosenbrok"], "did you mean 'rosenbrock'?"),
    (["curvature", "--problem", "rosenbrock", "--optimizer", "NewtonGC"],
     "did you mean 'NewtonCG'?"),
])
def test_typos_get_the_closest_name(tmp_path, capsys, args, message):
    assert cli.main([*args, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_curvature_trains_with_the_benchmarks_tuned_setting(tmp_path, capsys):
    assert cli.main(["bench", "--problems", "rosenbrock", "--optimizers", "sgd", *ARGS[6:],
                     "--out", str(tmp_path)]) == 0
    from secondorder.bench.store import Store
    from secondorder.bench.sweep import load_records, select_best

    with Store(tmp_path / "results.sqlite") as st:
        best = select_best([r for r in load_records(st, "bench")
                            if r.problem == "rosenbrock" and r.seed == 0])
    capsys.readouterr()
    assert cli.main(["curvature", "--problem", "rosenbrock", "--optimizer", "sgd", "--epochs",
                     "1", "--top", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"trains with sgd {best.hyperparameters}: the tuned setting of sweep 'bench'" in out
    md = (tmp_path / "curvature" / "curvature_rosenbrock.md").read_text()
    assert f"trained with sgd {best.hyperparameters}" in md
    assert not (tmp_path / "curvature_rosenbrock.md").exists()

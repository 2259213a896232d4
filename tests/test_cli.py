"""End to end through the command line, in-process: database rows, report, resume."""

import sqlite3

import pytest

from secondorder import cli
from secondorder.bench.store import Store

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# In-process (--workers 1): the worker-process path is covered by the diverging-run test.
ARGS = ["bench", "--problems", "logistic2d,rosenbrock", "--optimizers", "sgd", "adam",
        "--seeds", "1", "--budget", "1", "--grid", "quick", "--no-progress", "--workers", "1",
        "--equal", "epochs"]


def _counts(db):
    with sqlite3.connect(db) as c:
        return tuple(c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                     for t in ("runs", "measurements"))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert cli.main([*ARGS, "--out", str(out)]) == 0
    return out


def test_bench_writes_database_and_report(bench, capsys):
    db = bench / "results.sqlite"
    # 2 problems x 2 optimizers x 3 learning rates, 1 seed, 1 epoch. Default evaluation
    # frequency (issue 10: 10 per run): logistic2d (8 steps per epoch) evaluates after every
    # step, 9 measurements; rosenbrock (full batch, one step) 2.
    assert _counts(db) == (12, 6 * 9 + 6 * 2)
    with Store(db) as st:
        runs = st.runs()
        assert {r["status"] for r in runs} <= {"finished", "diverged"}
        assert {(r["problem"], r["optimizer"]) for r in runs} == {
            (p, o) for p in ("logistic2d", "rosenbrock") for o in ("sgd", "adam")}
        assert st.environment()
    md = (bench / "report.md").read_text()
    for text in ("## Summary", "### logistic2d", "### rosenbrock", "### Table 1: logistic2d",
                 "### Tables 3-4: rosenbrock", "| Method | Setting | Final train loss"):
        assert text in md
    assert any(line.startswith("| adam | lr=") for line in md.splitlines())
    figs = sorted((bench / "figures").glob("*.png"))
    assert len(figs) == 9 and all(f.read_bytes()[:8] == PNG_MAGIC for f in figs)
    assert (bench / "report.html").read_text().count("<img ") == 9


def test_rerun_resumes_and_adds_nothing(bench, capsys):
    db = bench / "results.sqlite"
    before = _counts(db)
    assert cli.main([*ARGS, "--out", str(bench)]) == 0
    assert _counts(db) == before
    assert "new or redone: 0" in capsys.readouterr().out


def test_killed_run_is_redone(bench):
    db = bench / "results.sqlite"
    before = _counts(db)
    with sqlite3.connect(db) as c:
        rid = c.execute("SELECT MAX(id) FROM runs").fetchone()[0]
        c.execute("UPDATE runs SET status='running', finished=NULL WHERE id=?", (rid,))
        c.execute("DELETE FROM measurements WHERE run_id=? AND step > 0", (rid,))
    assert _counts(db) == (before[0], before[1] - 1)
    assert cli.main([*ARGS, "--out", str(bench)]) == 0
    assert _counts(db) == before
    with Store(db) as st:
        assert not st.runs(status="running")


def test_diverging_setting_is_recorded_and_the_sweep_goes_on_with_workers(tmp_path):
    # SGD with learning rate 1 on Rosenbrock (from (-1.2, 1)) blows up at once.
    args = ["bench", "--problems", "rosenbrock", "--optimizers", "sgd", "--seeds", "2",
            "--budget", "20", "--grid", "default", "--no-progress", "--out", str(tmp_path),
            "--workers", "2", "--equal", "epochs"]
    assert cli.main(args) == 0
    with Store(tmp_path / "results.sqlite") as st:
        runs = st.runs()
        statuses = {r["hyperparameters"]["lr"]: r["status"] for r in runs if r["seed"] == 0}
        assert statuses[1.0] == "diverged" and statuses[1e-4] == "finished"
        assert len(statuses) == 5
        # Two worker processes: 5 tuning runs plus seed 1 of the selected setting.
        assert len(runs) == 6 and not st.runs(status="running")
    assert "| sgd | lr=0.0001 |" in (tmp_path / "report.md").read_text() or \
        "| sgd | lr=0.001 |" in (tmp_path / "report.md").read_text()


def test_report_and_list_commands(bench, capsys):
    (bench / "report.md").unlink()
    assert cli.main(["report", "--out", str(bench)]) == 0
    assert "## Summary" in (bench / "report.md").read_text()
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "logistic2d" in out and "sgd_momentum" in out
    assert "knob lr: default grid [0.0001, 0.001, 0.01, 0.1, 1.0]" in out


def test_export_writes_every_run_and_measurement(bench, capsys):
    import csv
    import json

    assert cli.main(["export", "--out", str(bench)]) == 0
    export = bench / "export"
    with open(export / "runs.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 12
    with open(export / "measurements.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 66  # see test_bench_writes_database_and_report
    data = json.loads((export / "results.json").read_text())
    assert len(data["runs"]) == 12
    assert sum(len(r["measurements"]) for r in data["runs"]) == 66
    assert cli.main(["export", "--out", str(bench / "missing")]) == 2
    assert "no results database at" in capsys.readouterr().err


def test_clear_errors(tmp_path, capsys):
    assert cli.main(["bench", "--problems", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown problem 'nope' (valid: " in err and "rosenbrock" in err
    assert cli.main(["bench", "--optimizers", "sgd,zzz", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown optimizer 'zzz' (valid: " in err and "adam" in err
    missing = tmp_path / "no-such-data"
    assert cli.main(["bench", "--data-dir", str(missing), "--out", str(tmp_path)]) == 2
    assert f"--data-dir '{missing}': the folder does not exist" in capsys.readouterr().err
    assert cli.main(["report", "--out", str(tmp_path / "empty")]) == 2
    assert "no results database at" in capsys.readouterr().err
    assert cli.main(["bench", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "--seeds must be >= 1 (got 0)" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, message", [
    ("--evals-per-epoch", "0", "--evals-per-epoch must be >= 1 (got 0)"),
    ("--evals-per-epoch", "-3", "--evals-per-epoch must be >= 1 (got -3)"),
    ("--workers", "0", "--workers must be >= 1 (got 0)"),
    ("--seeds", "-1", "--seeds must be >= 1 (got -1)"),
    ("--budget", "0", "--budget must be a positive number (got 0.0)"),
    ("--budget-backprops", "-1", "--budget-backprops must be a positive number (got -1.0)"),
    ("--budget-seconds", "inf", "--budget-seconds must be a positive number (got inf)"),
])
def test_bad_numeric_options_are_refused_before_any_run(tmp_path, capsys, flag, value, message):
    out = tmp_path / "out"
    args = ["bench", "--problems", "rosenbrock", "--optimizers", "sgd", "--grid", "quick",
            "--seeds", "1", "--budget", "1", "--no-progress", "--out", str(out)]
    same = "--budget" if flag.startswith("--budget") else flag  # budgets exclude each other
    i = args.index(same) if same in args else len(args)
    args[i:i + 2] = [flag, value]
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing stored, not even an empty database


def test_evaluation_frequency_is_part_of_the_run_key(tmp_path, capsys):
    args = ["bench", "--problems", "rosenbrock", "--optimizers", "sgd", "--grid", "quick",
            "--seeds", "1", "--budget", "2", "--no-progress", "--workers", "1",
            "--equal", "epochs", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    assert _counts(tmp_path / "results.sqlite")[0] == 3
    assert cli.main([*args, "--evals-per-epoch", "2"]) == 0
    assert "new or redone: 3" in capsys.readouterr().out
    with Store(tmp_path / "results.sqlite") as st:
        # default: ceil(10 / 2 epochs) = 5 evaluations per epoch
        assert sorted(r["settings"]["evals_per_epoch"] for r in st.runs()) == [2] * 3 + [5] * 3
        assert {r["settings"]["data"] for r in st.runs()} == {None}  # embedded data



def test_curvature_command_on_rosenbrock_matches_the_closed_form(tmp_path, capsys):
    assert cli.main(["curvature", "--problem", "rosenbrock", "--epochs", "2", "--top", "2",
                     "--out", str(tmp_path)]) == 0
    # At (-1.2, 1): H = [[1330, 480], [480, 200]], eigenvalues (1530 +- sqrt(1530^2 - 4*35600))/2.
    disc = (1530**2 - 4 * 35600) ** 0.5
    out = capsys.readouterr().out
    assert "trains with adam's defaults {'lr': 0.001}: no tuned setting" in out
    tmp_path = tmp_path / "curvature"  # its own folder
    md = (tmp_path / "curvature_rosenbrock.md").read_text()
    init = next(line for line in md.splitlines() if line.startswith("| initialization"))
    assert f"{(1530 + disc) / 2:.4g}, {(1530 - disc) / 2:.4g}" in init
    assert f"| {1530 / 2490:.3g} | 0.5 |" in init  # diagonal mass vs Wigner (d = 2)
    for name in ("density", "mass"):
        png = tmp_path / "figures" / f"curvature_rosenbrock_{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert cli.main(["curvature", "--problem", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown problem 'nope'" in capsys.readouterr().err

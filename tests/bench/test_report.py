"""The report: tables from the database, statistics, valid PNG figures."""

import math
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from secondorder.bench.report import summarize, write_report
from secondorder.bench.sweep import RunRecord, SweepConfig, run_sweep

sys.path.insert(0, str(Path(__file__).parent))
from test_runner import fake_problem  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _loader(name, *, data_dir=None, seed=0):
    return fake_problem()


def _rec(i, opt, seed, lr, accs, times, status="finished"):
    ms = [{"step": k, "data_epoch": float(k), "wall_time": t, "backprops": 2.0 * k,
           "val_acc": a, "val_loss": 1 - a, "test_acc": a, "train_acc": a, "train_loss": 1 - a,
           "test_loss": 1 - a} for k, (a, t) in enumerate(zip(accs, times, strict=True))]
    return RunRecord(i, "p", opt, {"lr": lr}, seed, {"epochs": 2}, status, None, ms)


def test_summary_statistics_on_hand_made_runs():
    recs = [
        _rec(1, "sgd", 0, 0.1, [0.2, 0.6, 0.8], [0, 1, 2]),
        _rec(2, "sgd", 0, 1.0, [0.2, 0.1, 0.1], [0, 1, 2], status="diverged"),
        _rec(3, "sgd", 1, 0.1, [0.2, 0.7, 0.6], [0, 1, 2]),
        _rec(4, "LBFGS", 0, 1.0, [0.2, 0.8, 0.9], [0, 3, 6]),
        _rec(5, "LBFGS", 1, 1.0, [0.2, 0.5, 0.6], [0, 3, 6]),
    ]
    (ps,) = summarize(recs)
    assert (ps.metric, ps.higher, ps.target_from) == ("val_acc", True, ["sgd"])
    # sgd best values 0.8 and 0.7 -> 0.75; initial 0.2 -> target 0.2 + 0.99 * 0.55
    assert ps.target == pytest.approx(0.7445)
    sgd, lbfgs = ps.methods
    assert (sgd.value, sgd.diverged, sgd.total_runs, len(sgd.runs)) == (0.1, 1, 3, 2)
    assert sgd.time_to_target == [2, math.inf] and sgd.backprops_to_target == [4.0, math.inf]
    assert lbfgs.time_to_target == [3, math.inf]
    m, h = sgd.stat("test_acc")
    assert m == pytest.approx(0.7) and h == pytest.approx(12.7062047 * 0.1)  # sd 0.1414 / sqrt(2)
    assert sgd.epoch_times() == [1.0, 1.0] and lbfgs.step_times() == [3.0, 3.0]


def test_report_files_tables_and_figures(tmp_path):
    db = tmp_path / "r.db"
    cfg = SweepConfig(["fake"], ["sgd", "adam"], seeds=2, grid="quick", name="t")
    run_sweep(cfg, db, progress=False, loader=_loader)
    rep = write_report(db, tmp_path / "out", command="secondorder bench --test")
    md = rep["markdown"].read_text()
    for heading in ("# secondorder benchmark: t", "## Protocol", "## Summary", "### fake",
                    "### Table 1: fake", "### Tables 3-4: fake", "## Performance profiles"):
        assert heading in md
    assert "| Method | Knob | Test accuracy | Epoch time (s) |" in md
    assert "| Solver | Train acc | Dev acc | Runtime (s) | Runtime per iteration (s) |" in md
    assert "| Method | Setting | Final train loss | Validation | Test | Backprops to target |" in md
    rows = [line for line in md.splitlines() if line.startswith("| sgd ")
            or line.startswith("| adam ")]
    assert len(rows) == 6  # two methods in three tables
    assert "secondorder bench --test" in md
    html = rep["html"].read_text()
    assert html.count("<table>") == 3 and html.count("<img ") == len(rep["figures"]) == 4
    for f in rep["figures"]:
        assert f.read_bytes()[:8] == PNG_MAGIC
        img = mpimg.imread(f)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert f"figures/{f.name}" in md and f"figures/{f.name}" in html


def test_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results database at"):
        write_report(tmp_path / "missing.db", tmp_path)


def test_sensitivity_figure_with_repeated_knob_values(tmp_path):
    from secondorder.bench.report import _sensitivity

    recs = [_rec(1, "sgd", 0, 0.1, [0.2, 0.6], [0, 1], status="failed"),
            _rec(2, "sgd", 0, 0.1, [0.2, 0.7], [0, 1]),
            _rec(3, "sgd", 0, 1.0, [0.2, 0.5], [0, 1])]
    (ps,) = summarize(recs)
    assert ps.methods[0].value == 0.1 and ps.methods[0].failed == 1
    _sensitivity(ps, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG_MAGIC

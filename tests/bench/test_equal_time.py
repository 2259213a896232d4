"""Quality at equal training time, on hand-made curves."""

import math

import pytest

from secondorder.bench.equal_time import equal_time_budget, equal_time_stats, value_at
from secondorder.bench.summary import MethodSummary, ProblemSummary
from secondorder.bench.sweep import RunRecord


def _run(i, opt, points, status="finished"):
    ms = [{"wall_time": t, "val_acc": a, "train_loss": 1 - a, "test_acc": a, "data_epoch": e}
          for t, a, e in points]
    return RunRecord(i, "p", opt, {"lr": 0.1}, i, {"epochs": 1}, status, None, ms)


def _method(name, runs):
    return MethodSummary(name, "lr", 0.1, runs, 0, 0, len(runs))


def _summary():
    # cheap: 0.1 s per run; expensive: 1.5 s per run, better only late.
    cheap = _method("cheap", [_run(0, "cheap", [(0, .1, 0), (.05, .6, .5), (.1, .8, 1)]),
                              _run(1, "cheap", [(0, .1, 0), (.05, .5, .5), (.12, .9, 1)])])
    costly = _method("costly", [_run(2, "costly", [(0, .1, 0), (0.09, .3, .1), (1.5, .99, 1)]),
                                _run(3, "costly", [(0, .1, 0), (0.2, .4, .1), (1.4, .97, 1)])])
    return ProblemSummary("p", "val_acc", True, 0.9, ["cheap"], [cheap, costly], [])


def test_value_at_is_the_last_evaluation_within_the_time():
    ms = _run(0, "x", [(0, .1, 0), (.5, .4, 1), (1.0, .7, 2)]).measurements
    assert value_at(ms, "val_acc", 0.0) == .1
    assert value_at(ms, "val_acc", 0.75) == .4
    assert value_at(ms, "val_acc", 5) == .7
    assert math.isnan(value_at(ms, "val_acc", -1))


def test_equal_time_budget_is_the_shortest_median_run_and_judges_all_there():
    ps = _summary()
    assert equal_time_budget(ps) == pytest.approx(0.11)  # median of 0.1 and 0.12
    stats = equal_time_stats(ps, equal_time_budget(ps), ("val_acc", "data_epoch"))
    assert stats["cheap"]["val_acc"][0] == pytest.approx((.8 + .5) / 2)  # 0.12 > 0.11
    assert stats["costly"]["val_acc"][0] == pytest.approx((.3 + .1) / 2)
    assert stats["costly"]["data_epoch"][0] == pytest.approx(0.05)
    # by epochs the costly method wins (0.98 vs 0.85); at equal time the cheap one does
    assert stats["cheap"]["val_acc"][0] > stats["costly"]["val_acc"][0]


def test_failed_runs_do_not_set_the_budget():
    ps = _summary()
    ps.methods[0].runs = [_run(0, "cheap", [(0, .1, 0), (.01, .2, .1)], status="failed")]
    assert equal_time_budget(ps) == pytest.approx(1.45)

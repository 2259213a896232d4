"""The calibrated equal-time budget: the rule, the stored value, the default command."""

import math

import pytest

from secondorder import cli
from secondorder.bench.runner import Budget
from secondorder.bench.store import Store
from secondorder.bench.sweep import RunRecord
from secondorder.bench.time_budget import (
    MAX_EPOCH_FACTOR,
    META_KEY,
    calibrate,
    learned,
    load_budget,
    measurement_budget,
    min_eval_gap,
    save_budget,
)


def _rec(seconds):
    ms = [{"wall_time": 0.0}, {"wall_time": seconds}] if seconds is not None else []
    return RunRecord(0, "p", "x", {}, 0, {"epochs": 5}, "finished", None, ms)


def test_budget_is_the_slowest_selected_setting_at_least_the_floor_3_digits():
    assert calibrate({"adam": _rec(0.1), "NewtonKrylov": _rec(1.23456)}) == (
        1.23, "NewtonKrylov", 1.23456)
    assert calibrate({"adam": _rec(0.1), "sgd": _rec(0.2)}, min_seconds=1.0) == (
        1.0, "sgd", 0.2)
    seconds, slowest, worst = calibrate({"adam": _rec(None)}, min_seconds=2.0)
    assert (seconds, slowest) == (2.0, None) and math.isnan(worst)


def _losses(*values):
    ms = [{"wall_time": float(i), "train_loss": v} for i, v in enumerate(values)]
    return RunRecord(0, "p", "x", {}, 0, {"epochs": 5}, "finished", None, ms)


def test_a_method_that_did_not_learn_does_not_set_the_budget():
    # LSCG on the digits CNN: 5.7 s of training, loss 2.308 -> 2.372 (it failed to learn)
    stalled = _losses(2.308, 2.31, 2.372)
    assert not learned(stalled) and learned(_losses(2.3, 0.4))
    assert not learned(_losses(1.0, 0.995))  # less than 1% below the start
    assert learned(_rec(3.0))  # no training loss recorded: nothing says it failed
    assert calibrate({"lscg": stalled, "adam": _losses(2.3, 0.5, 0.4)}) == (2.0, "adam", 2.0)
    # nobody learned: the slowest of all sets T (a stalled problem still gets its time)
    assert calibrate({"lscg": stalled, "sgd": _losses(2.3, 2.3)}) == (2.0, "lscg", 2.0)
    assert not learned(_losses(1.0, float("nan")))


def test_measurement_budget_caps_the_epochs_and_needs_an_epoch_budget():
    assert measurement_budget(2.5, Budget(epochs=5)) == Budget(epochs=5 * MAX_EPOCH_FACTOR,
                                                               seconds=2.5)
    with pytest.raises(ValueError, match="calibrated from an epoch budget"):
        measurement_budget(2.5, Budget(backprops=10))
    assert min_eval_gap(2.0) == pytest.approx(0.1)


def test_stored_budget_is_found_only_for_the_same_tuning_budget_and_settings(tmp_path):
    with Store(tmp_path / "r.db") as st:
        entry = {"seconds": 1.5, "tuning_budget": {"epochs": 5.0},
                 "settings": {"evals_per_epoch": 2}, "budget": {"epochs": 100.0, "seconds": 1.5}}
        save_budget(st, "s", "p", entry)
        save_budget(st, "s", "q", {**entry, "seconds": 3.0})
        assert load_budget(st, "s", "p", {"epochs": 5.0}, {"evals_per_epoch": 2}) == entry
        assert load_budget(st, "s", "p", {"epochs": 6.0}, {"evals_per_epoch": 2}) is None
        assert load_budget(st, "s", "p", {"epochs": 5.0}, {"evals_per_epoch": 3}) is None
        assert set(st.get_meta("s", META_KEY)) == {"p", "q"}


def test_default_command_compares_at_equal_time(tmp_path, capsys):
    """`secondorder bench` without --equal: every method's measurement run trains the
    calibrated time (at least 1 s), stored in the database; the terminal and the report
    say so, and a rerun adds nothing."""
    out = tmp_path / "out"
    args = ["bench", "--problems", "logistic2d", "--optimizers", "sgd", "adam", "--seeds", "1",
            "--budget", "1", "--grid", "quick", "--no-progress", "--workers", "1",
            "--out", str(out)]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    with Store(out / "results.sqlite") as st:
        (entry,) = st.get_meta("bench", META_KEY).values()
        timed = [r for r in st.runs("bench") if r["budget"] == entry["budget"]]
        n = len(st.runs("bench"))
    assert entry["seconds"] >= 1.0 and entry["budget"]["epochs"] == MAX_EPOCH_FACTOR
    assert sorted(r["optimizer"] for r in timed) == ["adam", "sgd"] and n == 6 + 2
    assert f"every method {entry['seconds']:.3g} s of training" in text
    md = (out / "report.md").read_text()
    assert f"- Budget: every method trained {entry['seconds']:.3g} s" in md
    assert "### Equal epochs: logistic2d (secondary)" in md
    assert cli.main(args) == 0
    assert "new or redone: 0" in capsys.readouterr().out

"""Targets, reaching rule, rankings with ties, failures to learn, grid edges, the answer."""

import math
import sys
from pathlib import Path

import pytest

from secondorder.bench.datafacts import data_facts, describe
from secondorder.bench.problems import get_problem
from secondorder.bench.store import Store
from secondorder.bench.summary import (
    REACH_RTOL,
    cost_stat,
    cost_to_target,
    loss_target,
    reaches,
    summarize,
)
from secondorder.bench.sweep import RunRecord, time_to_target
from secondorder.bench.verdict import (
    answer,
    best_quality,
    failures_to_learn,
    grid_edges,
    rank_costs,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_data import write_mnist  # noqa: E402

OPTIMUM = 0.0797300  # float32-rounded optimum of a convex problem (made up)


def _run(i, opt, seed, hyper, losses, accs=None, times=None, status="finished",
         problem="p"):
    """A run with one evaluation per epoch; backprops = 2 per epoch, time 1 s per epoch."""
    n = len(losses)
    accs = accs or [None] * n
    times = times or list(range(n))
    ms = [{"step": k, "data_epoch": float(k), "wall_time": float(times[k]),
           "backprops": 2.0 * k, "train_loss": losses[k], "val_loss": losses[k],
           "test_loss": losses[k], "val_acc": accs[k], "test_acc": accs[k],
           "train_acc": accs[k]} for k in range(n)]
    return RunRecord(i, problem, opt, hyper, seed, {"epochs": n - 1}, status, None, ms)


def _convex_runs():
    """sgd stops early at a better validation accuracy than the optimum's; LBFGS reaches
    the optimum (up to float32 round-off) and stays there."""
    return [
        _run(1, "sgd", 0, {"lr": 0.1}, [0.7, 0.2, OPTIMUM], [0.5, 0.96, 0.95]),
        _run(2, "sgd", 1, {"lr": 0.1}, [0.7, 0.2, OPTIMUM], [0.5, 0.96, 0.95]),
        _run(3, "LBFGS", 0, {"lr": 1.0}, [0.7, 0.0797301, 0.0797301], [0.5, 0.9386, 0.9386]),
        _run(4, "LBFGS", 1, {"lr": 1.0}, [0.7, 0.0797302, 0.0797301], [0.5, 0.9386, 0.9386]),
    ]


def test_reaches_counts_a_target_equal_to_the_best_value_up_to_round_off():
    assert reaches(OPTIMUM, OPTIMUM, higher=False)
    assert reaches(OPTIMUM * (1 + REACH_RTOL / 10), OPTIMUM, higher=False)
    assert not reaches(OPTIMUM * (1 + REACH_RTOL * 10), OPTIMUM, higher=False)
    assert reaches(0.955, 0.955, higher=True) and not reaches(0.95, 0.955, higher=True)
    # A solver at machine zero reaches a tiny positive loss target, and vice versa up to the
    # absolute tolerance (1e-9 of the initial value 24).
    assert reaches(0.0, 4e-13, higher=False, initial=24.0)
    assert reaches(1e-8, 0.0, higher=False, initial=24.0)
    assert not reaches(1e-6, 0.0, higher=False, initial=24.0)
    for bad in (None, math.nan, math.inf):
        assert not reaches(bad, 1.0, higher=False)
    assert not reaches(1.0, math.nan, higher=False)


def test_exact_solver_at_the_optimum_reaches_the_training_loss_target():
    recs = _convex_runs()
    (ps,) = summarize(recs)
    assert ps.loss_target == pytest.approx(OPTIMUM) and ps.loss_target_from == ["sgd"]
    lbfgs = ps.methods[1]
    # Its losses sit 1e-6 (relative) above the target: the strict comparison of
    # sweep.time_to_target misses them, the tolerant one does not.
    ms = recs[2].measurements
    assert time_to_target(ms, "train_loss", ps.loss_target, False, "backprops") == math.inf
    assert lbfgs.backprops_to_loss_target == [2.0, 2.0]
    assert lbfgs.time_to_loss_target == [1.0, 1.0]
    # The validation target (0.5 + 0.99 * (0.96 - 0.5)) is above the optimum's accuracy.
    assert ps.target == pytest.approx(0.5 + 0.99 * 0.46)
    assert lbfgs.backprops_to_target == [math.inf, math.inf]
    r = rank_costs(ps.methods, "backprops_to_loss_target")
    assert r.winner == "LBFGS" and [n for n, _ in r.order] == ["LBFGS", "sgd"]
    assert r.ties == [] and r.never == []


def test_loss_target_is_the_best_first_order_mean_of_lowest_losses():
    value, who = loss_target({"sgd": [[{"train_loss": 0.5}, {"train_loss": 0.2}],
                                      [{"train_loss": 0.4}, {"train_loss": 0.3}]],
                              "adam": [[{"train_loss": 0.3}, {"train_loss": 0.26}]]})
    assert (value, who) == (pytest.approx(0.25), "sgd")
    assert math.isnan(loss_target({"sgd": [[{"train_loss": None}]]})[0])


def test_cost_to_target_first_measurement_reaching():
    ms = [{"train_loss": 3.0, "backprops": 0.0}, {"train_loss": 1.0, "backprops": 4.0},
          {"train_loss": 0.5, "backprops": 8.0}]
    assert cost_to_target(ms, "train_loss", 1.0, False, "backprops") == 4.0
    assert cost_to_target(ms, "train_loss", 0.1, False, "backprops") == math.inf


class _M:
    """The attributes rank_costs reads."""

    def __init__(self, name, costs):
        self.optimizer, self.costs = name, costs


def test_rank_costs_winner_ties_runners_up_partial_never():
    ms = [_M("C", [5.0, 5.1, 4.9]), _M("B", [1.05, 1.2, 0.95]), _M("A", [1.0, 1.1, 0.9]),
          _M("D", [1.0, math.inf, 1.0]), _M("E", [math.inf] * 3)]
    r = rank_costs(ms, "costs")
    assert r.winner == "A" and [n for n, _ in r.order] == ["A", "B", "C"]
    assert r.ties == ["B"]  # A: 1.0 +- 0.25, B: 1.067 +- 0.31 overlap; C does not
    assert [(n, s.reached) for n, s in r.partial] == [("D", 2)] and r.never == ["E"]
    a = r.order[0][1]
    assert a.center == pytest.approx(1.0) and a.half == pytest.approx(4.302653 * 0.1 / 3 ** 0.5)
    # One seed each: no interval, so only equal costs tie.
    r1 = rank_costs([_M("A", [1.0]), _M("B", [1.0]), _M("C", [1.01])], "costs")
    assert r1.ties == ["B"]
    s = cost_stat([1.0, math.inf, math.inf])
    assert (s.reached, s.n, s.center, s.complete) == (1, 3, math.inf, False)


def _digits_like(accs_lscg=(0.1, 0.1), losses_lscg=(2.30, 2.31)):
    recs = [
        _run(1, "adam", 0, {"lr": 0.001}, [2.3, 1.0, 0.3], [0.1, 0.7, 0.9]),
        _run(2, "adam", 0, {"lr": 0.01}, [2.3, 0.9, 0.2], [0.1, 0.8, 0.95]),
        _run(3, "adam", 0, {"lr": 0.1}, [2.3, 2.0, 1.9], [0.1, 0.3, 0.4]),
        _run(4, "adam", 1, {"lr": 0.01}, [2.3, 0.8, 0.2], [0.1, 0.8, 0.95]),
        _run(5, "sgd", 0, {"lr": 0.01}, [2.3, 2.2, 2.0], [0.1, 0.2, 0.3]),
        _run(6, "sgd", 0, {"lr": 0.1}, [2.3, 1.5, 1.0], [0.1, 0.5, 0.7]),
        _run(7, "sgd", 1, {"lr": 0.1}, [2.3, 1.6, 1.1], [0.1, 0.5, 0.68]),
        _run(8, "LSCG", 0, {"lr": 1.0}, [2.3, 2.3, losses_lscg[0]], [0.1, 0.1, accs_lscg[0]]),
        _run(9, "LSCG", 1, {"lr": 1.0}, [2.3, 2.3, losses_lscg[1]], [0.1, 0.1, accs_lscg[1]]),
    ]
    return recs


def test_failures_to_learn_at_chance_or_no_better_than_initial_loss():
    facts = {"p": {"chance_test": 0.104}}
    (ps,) = summarize(_digits_like(), facts)
    failed = failures_to_learn(ps)
    assert list(failed) == ["LSCG"]
    assert "at chance level" in failed["LSCG"] and "no better than the initial" in failed["LSCG"]
    # Learning a little (loss down 10%) but still at chance: flagged for accuracy only.
    (ps,) = summarize(_digits_like(losses_lscg=(2.07, 2.07)), facts)
    assert "at chance" in failures_to_learn(ps)["LSCG"]
    assert "initial" not in failures_to_learn(ps)["LSCG"]
    # Without the chance level only the loss rule applies.
    (ps,) = summarize(_digits_like(accs_lscg=(0.3, 0.3), losses_lscg=(2.07, 2.07)))
    assert failures_to_learn(ps) == {}


def test_grid_edges_largest_smallest_only_and_inner():
    (ps,) = summarize(_digits_like())
    edges = {e.optimizer: e for e in grid_edges(ps)}
    assert set(edges) == {"sgd", "LSCG"}  # adam's 0.01 lies inside 0.001 .. 0.1
    assert edges["sgd"].side == "largest" and edges["sgd"].values == (0.01, 0.1)
    assert "widen the grid above it" in edges["sgd"].advice()
    assert edges["LSCG"].side == "only" and "not tuned" in edges["LSCG"].advice()
    recs = [_run(1, "sgd", 0, {"lr": 0.01}, [2.3, 0.5], [0.1, 0.9]),
            _run(2, "sgd", 0, {"lr": 0.1}, [2.3, 0.9], [0.1, 0.8])]
    (ps,) = summarize(recs)
    (e,) = grid_edges(ps)
    assert e.side == "smallest" and "widen the grid below it" in e.advice()


def test_best_quality_and_answer_paragraph():
    facts = {"p": {"chance_test": 0.104}}
    recs = _digits_like() + [
        _run(20 + r.id, r.optimizer, r.seed, r.hyperparameters,
             [m["train_loss"] for m in r.measurements],
             [m["val_acc"] for m in r.measurements], problem="q")
        for r in _convex_runs()]
    summaries = summarize(recs, facts)
    name, mean, half, ties = best_quality(summaries[0])
    assert (name, mean, half, ties) == ("adam", pytest.approx(0.95), pytest.approx(0.0), [])
    text = answer(summaries)
    assert text.startswith("Over 2 problems:")
    # adam wins every criterion on p; on q sgd has the better final test accuracy and
    # reaches the validation target first, LBFGS the training-loss target.
    assert ("By time to the validation target, adam and sgd were first or tied first on 1 of 2"
            in text)
    assert ("Secondary, by backprops to the training-loss target: adam and LBFGS were first or "
            "tied first on 1 of 2" in text)
    # The tally counts the primary criteria only: final quality and time to both targets.
    assert "overall, adam was first or tied first in 3 of the 6 (problem, criterion) pairs" in text
    assert "then sgd (2), LBFGS (1)" in text
    assert "For the final test metric after the same epochs, adam and sgd" in text
    assert "Failed to learn or had no usable setting: LSCG on p." in text
    assert "selected settings lie at the edge of the grid" in text


def test_data_facts_and_description_of_a_real_problem():
    facts = data_facts(get_problem("cancer_logistic"))
    assert (facts["train"], facts["validation"], facts["test"]) == (341, 114, 114)
    assert facts["classes"] == 2 and facts["full_batch"] is True
    # 357 benign of 569, stratified: 72 of the 114 test samples.
    assert facts["chance_test"] == pytest.approx(72 / 114)
    text = describe(facts)
    assert "breast cancer" in text and "341 / 114 / 114 (train / validation / test)" in text
    assert "2 classes (majority class: 0.632 of the test split)" in text
    rosen = data_facts(get_problem("rosenbrock"))
    assert "classes" not in rosen and rosen["train"] == 1
    assert describe(None).startswith("Data: not recorded")


def test_data_facts_say_when_only_the_test_file_was_used(tmp_path):
    write_mnist(tmp_path / "mnist", 100)
    text = describe(data_facts(get_problem("mnist_mlp1", data_dir=tmp_path)))
    assert "test file only (no training file), split 70 / 10 / 20 %" in text
    assert "splits 70 / 10 / 20 (train / validation / test), 10 classes" in text
    write_mnist(tmp_path / "both" / "mnist", 20, 40)
    text = describe(data_facts(get_problem("mnist_mlp1", data_dir=tmp_path / "both")))
    assert "test file only" not in text and "splits 36 / 4 / 20" in text


def _timed_run(i, opt, seed, budget, points):
    """A run from ``(wall_time, data_epoch, accuracy)`` points; loss = 1 - accuracy."""
    ms = [{"step": k, "epoch": e, "data_epoch": e, "wall_time": t, "backprops": e,
           "train_loss": 1 - a, "val_loss": 1 - a, "test_loss": 1 - a, "train_acc": a,
           "val_acc": a, "test_acc": a} for k, (t, e, a) in enumerate(points)]
    return i, opt, seed, budget, ms


def _equal_time_store(db):
    """cheap: 2 epochs in 0.1 s (accuracy 0.6), 0.95 after 1 s (20 epochs); costly: 2 epochs
    in 1 s, accuracy 0.9. At equal epochs costly wins, at equal time (1 s) cheap does."""
    tuning, timed = {"epochs": 2.0}, {"epochs": 40.0, "seconds": 1.0}
    cheap = [(0, 0, .1), (.05, 1, .4), (.1, 2, .6), (.5, 10, .95), (1.0, 20, .95)]
    costly = [(0, 0, .1), (.5, 1, .7), (1.0, 2, .9)]
    runs = [_timed_run(1, "cheap", 0, tuning, cheap[:3]),
            _timed_run(2, "costly", 0, tuning, costly)]
    for seed, jitter in ((0, 0.0), (1, 0.005), (2, -0.005)):
        runs.append(_timed_run(0, "cheap", seed, timed,
                               [(t, e, a + jitter * (k > 0)) for k, (t, e, a) in enumerate(cheap)]))
        runs.append(_timed_run(0, "costly", seed, timed,
                               [(t, e, a + jitter * (k > 0))
                                for k, (t, e, a) in enumerate(costly)]))
    with Store(db) as st:
        for _, opt, seed, budget, ms in runs:
            claim = st.claim_run("s", "p", opt, {"lr": 0.1}, seed, budget, {})
            assert st.finish_run(claim.run_id, "finished", ms)
        st.set_meta("s", "config", {"equal": "time", "seeds": 3})
        st.set_meta("s", "time_budgets", {"p": {
            "seconds": 1.0, "slowest": "costly", "slowest_seconds": 1.0,
            "tuning_budget": tuning, "settings": {}, "budget": timed}})


def test_verdict_ranks_by_quality_at_equal_time_not_at_equal_epochs(tmp_path):
    from secondorder.bench.equal_time import stats_at
    from secondorder.bench.report import write_report

    db = tmp_path / "r.db"
    _equal_time_store(db)
    rep = write_report(db, tmp_path / "out", sweep="s", with_figures=False)
    (ps,) = rep["summaries"]
    assert ps.equal_time and ps.time_budget == 1.0 and ps.tuning_epochs == 2.0
    # The repetitions are the three time-budgeted runs; the tuning runs are not mixed in.
    assert [len(m.runs) for m in ps.methods] == [3, 3]
    assert all(r.budget == {"epochs": 40.0, "seconds": 1.0} for m in ps.methods for r in m.runs)
    name, mean, half, ties = best_quality(ps)
    assert (name, ties) == ("cheap", []) and mean == pytest.approx(0.95)
    # The secondary equal-epoch view ranks the other way round.
    at_epochs = stats_at(ps, 2.0, ("test_acc",), "data_epoch")
    assert at_epochs["costly"]["test_acc"][0] == pytest.approx(0.9)
    assert at_epochs["cheap"]["test_acc"][0] == pytest.approx(0.6)
    # Time to the validation target (99% of cheap's improvement: 0.1 + 0.99 * 0.85)
    # within the budget: cheap at 0.5 s in every seed, costly never.
    ranking = rank_costs(ps.methods, "time_to_target")
    assert ranking.winner == "cheap" and ranking.never == ["costly"]
    assert ranking.order[0][1].center == pytest.approx(0.5)
    assert "For the final test metric at equal training time, cheap was first" in rep["answer"]
    md = rep["markdown"].read_text()
    assert "- Budget: every method trained 1 s (calibrated after tuning: the slowest" in md
    assert "- Best final test accuracy at equal training time (1 s): **cheap** 0.95" in md
    assert "### Equal epochs: p (secondary)" in md
    # The time to target comes with its interval over the three seeds.
    assert "- Time to the validation target: **cheap** 0.5 ± 0 s (3/3)" in md


def test_a_problem_interrupted_before_its_time_budgeted_runs_is_left_out(tmp_path):
    """Ctrl-C after the calibration: the report covers what has equal-time runs."""
    from secondorder.bench.report import write_report

    db = tmp_path / "r.db"
    _equal_time_store(db)
    with Store(db) as st:
        st.conn.execute("DELETE FROM runs WHERE optimizer='costly' AND seed > 0")
        st.conn.execute("DELETE FROM runs WHERE optimizer='costly' AND budget LIKE '%seconds%'")
    rep = write_report(db, tmp_path / "out", sweep="s")
    (ps,) = rep["summaries"]
    assert [m.optimizer for m in ps.methods] == ["cheap"]


def test_budget_line_names_the_budget_of_each_protocol():
    from secondorder.bench.report import _budget_line

    (ps,) = summarize(_digits_like())
    assert _budget_line(ps).startswith("Budget: every method trained the same epochs (2)")
    timed = [RunRecord(r.id, r.problem, r.optimizer, r.hyperparameters, r.seed,
                       {"seconds": 2.0}, r.status, None, r.measurements) for r in _digits_like()]
    (ps,) = summarize(timed)
    assert _budget_line(ps) == "Budget: every run had the same budget (2 seconds)."

"""Sweep protocol: tuning, selection, repetitions, resume; statistics on hand-made numbers."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from secondorder.bench.store import Store
from secondorder.bench.sweep import (
    RunRecord,
    SweepConfig,
    load_records,
    mean_ci,
    performance_profile,
    run_sweep,
    select_best,
    target_for,
    time_to_target,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_runner import fake_problem  # noqa: E402


def _loader(name, *, data_dir=None, seed=0):
    return fake_problem()


def test_mean_ci_matches_the_t_interval():
    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.302652729911275 / math.sqrt(3))
    m, h = mean_ci([0.5, 0.7])
    assert m == pytest.approx(0.6) and h == pytest.approx(12.706204736174707 * 0.1)
    assert mean_ci([4.0])[0] == 4.0 and math.isnan(mean_ci([4.0])[1])
    assert all(math.isnan(v) for v in mean_ci([]))


def test_time_to_target_on_hand_made_curve():
    ms = [{"val_acc": 0.1, "wall_time": 0.0, "backprops": 0},
          {"val_acc": 0.6, "wall_time": 1.5, "backprops": 2},
          {"val_acc": 0.85, "wall_time": 3.0, "backprops": 4},
          {"val_acc": 0.8, "wall_time": 4.0, "backprops": 6}]
    assert time_to_target(ms, "val_acc", 0.8, True) == 3.0
    assert time_to_target(ms, "val_acc", 0.8, True, "backprops") == 4
    assert time_to_target(ms, "val_acc", 0.9, True) == math.inf
    losses = [{"val_loss": v, "wall_time": t} for v, t in [(2, 0), (1, 1), (0.4, 2)]]
    assert time_to_target(losses, "val_loss", 0.5, False) == 2
    assert time_to_target(losses, "val_loss", math.nan, False) == math.inf


def test_target_is_99_percent_of_the_best_first_order_improvement():
    a = [[{"val_acc": 0.1}, {"val_acc": 0.9}, {"val_acc": 0.8}],
         [{"val_acc": 0.1}, {"val_acc": 0.7}]]          # best values 0.9, 0.7 -> mean 0.8
    b = [[{"val_acc": 0.1}, {"val_acc": 0.85}]]          # 0.85: the best baseline
    t = target_for({"sgd": a, "adam": b}, "val_acc", True)
    assert t == pytest.approx(0.1 + 0.99 * (0.85 - 0.1))
    lo = target_for({"sgd": [[{"val_loss": 3.0}, {"val_loss": 1.0}]]}, "val_loss", False)
    assert lo == pytest.approx(3.0 + 0.99 * (1.0 - 3.0))
    assert math.isnan(target_for({}, "val_loss", False))


def test_performance_profile_on_hand_made_costs():
    costs = {"p1": {"a": 1.0, "b": 2.0}, "p2": {"a": 4.0, "b": 2.0},
             "p3": {"a": math.inf, "b": 3.0}, "p4": {"a": math.inf, "b": math.inf}}
    taus, rho = performance_profile(costs, taus=[1.0, 2.0, 10.0])
    np.testing.assert_allclose(rho["a"], [0.25, 0.5, 0.5])
    np.testing.assert_allclose(rho["b"], [0.5, 0.75, 0.75])
    _, rho = performance_profile({"p": {"a": 0.0, "b": 1.0}}, taus=[1.0, 5.0])
    np.testing.assert_allclose(rho["a"], [1, 1])
    np.testing.assert_allclose(rho["b"], [0, 0])


def _rec(i, status, acc, loss, seed=0):
    return RunRecord(i, "p", "o", {"lr": i}, seed, {"epochs": 1}, status, None,
                     [{"val_acc": 0.1, "val_loss": 9.0}, {"val_acc": acc, "val_loss": loss}])


def test_select_best_uses_final_validation_and_skips_diverged():
    recs = [_rec(1, "finished", 0.8, 0.5), _rec(2, "diverged", 0.99, 0.1),
            _rec(3, "finished", 0.9, 0.7), _rec(4, "finished", 0.9, 0.6)]
    assert select_best(recs).id == 4  # tie on accuracy broken by validation loss
    assert select_best([_rec(2, "diverged", 0.99, 0.1), _rec(5, "failed", 1, 0)]) is None


def test_sweep_tunes_repeats_and_resumes(tmp_path):
    db = tmp_path / "r.db"
    cfg = SweepConfig(["fake"], ["sgd", "adam"], seeds=2, grid="quick", name="t")
    res = run_sweep(cfg, db, progress=False, loader=_loader)
    assert res["tuning"] == {"finished": 6}
    assert res["final"] == {"skipped": 2, "finished": 2}  # seed 0 reuses the tuning run
    with Store(db) as st:
        assert st.count("runs") == 8
        n_meas = st.count("measurements")
        assert n_meas == 8 * 3  # problem epochs = 2: steps 0, 3, 6
        recs = load_records(st, "t")
        assert st.get_meta("t", "config")["seeds"] == 2
    for opt in ("sgd", "adam"):
        best = select_best([r for r in recs if r.optimizer == opt and r.seed == 0])
        assert res["selected"][("fake", opt)] == best.hyperparameters
        assert sorted(r.seed for r in recs if r.optimizer == opt
                      and r.hyperparameters == best.hyperparameters) == [0, 1]
    # Rerun: nothing new.
    res2 = run_sweep(cfg, db, progress=False, loader=_loader)
    assert res2["tuning"] == {"skipped": 6} and res2["final"] == {"skipped": 4}
    with Store(db) as st:
        assert (st.count("runs"), st.count("measurements")) == (8, n_meas)
        # Simulate a run killed midway: status running with partial measurements.
        rid = st.runs()[-1]["id"]
        st.conn.execute("UPDATE runs SET status='running' WHERE id=?", (rid,))
        st.conn.execute("DELETE FROM measurements WHERE run_id=? AND step>0", (rid,))
    res3 = run_sweep(cfg, db, progress=False, loader=_loader)
    assert res3["final"] == {"skipped": 3, "finished": 1}
    with Store(db) as st:
        assert (st.count("runs"), st.count("measurements")) == (8, n_meas)
        assert not st.runs(status="running")


def test_config_validation():
    with pytest.raises(ValueError, match="Invalid seeds: 0"):
        SweepConfig(["a"], ["sgd"], seeds=0)
    with pytest.raises(ValueError, match="Invalid workers: 0"):
        SweepConfig(["a"], ["sgd"], workers=0)
    with pytest.raises(ValueError, match="unknown optimizer 'zzz'"):
        run_sweep(SweepConfig(["fake"], ["zzz"]), "unused.db", loader=_loader)

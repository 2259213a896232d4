"""Sweep protocol: tuning, selection, repetitions, resume; statistics on hand-made numbers."""

import math
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from secondorder.bench.store import LEASE_SECONDS, Store, owner_id
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


def _claim_as_another_host(db, cfg, heartbeat_age):
    """Claim the first tuning run of ``cfg`` as a process on another host would."""
    from secondorder.bench import sweep

    hyper = dict(sweep.get_optimizer("sgd").hyperparameters(
        sweep.get_optimizer("sgd").grid(cfg.grid)[0]))
    settings = {"data": None, "evals_per_epoch": cfg.evals_per_epoch}
    key = ("t", "fake", "sgd", hyper, 0, {"epochs": 2.0}, settings)
    with Store(db) as st:
        rid = st.start_run(*key)
        st.conn.execute("UPDATE runs SET owner='elsewhere:1:x', heartbeat=? WHERE id=?",
                        (time.time() - heartbeat_age, rid))
    return rid, key


def test_a_run_held_by_a_live_process_is_waited_for_not_redone(tmp_path, monkeypatch):
    from secondorder.bench import sweep

    monkeypatch.setattr(sweep, "POLL_SECONDS", 0.1)
    db = tmp_path / "r.db"
    cfg = SweepConfig(["fake"], ["sgd"], seeds=1, grid="quick", name="t")
    rid, key = _claim_as_another_host(db, cfg, heartbeat_age=0.0)

    def other_host_finishes():  # what the other process does 1 s later
        time.sleep(1.0)
        with Store(db) as st:
            st.conn.execute("INSERT INTO measurements (run_id, step, val_loss) VALUES "
                            "(?, 0, 9.0)", (rid,))
            st.conn.execute("UPDATE runs SET status='finished' WHERE id=?", (rid,))

    t = threading.Thread(target=other_host_finishes)
    t.start()
    t0 = time.perf_counter()
    res = run_sweep(cfg, db, progress=False, loader=_loader)
    t.join()
    assert time.perf_counter() - t0 > 0.9  # it waited for the other process
    assert res["tuning"] == {"finished": 2, "skipped": 1}
    with Store(db) as st:
        run = st.find_run(*key)
        assert (run["attempts"], run["owner"]) == (1, "elsewhere:1:x")
        assert len(st.measurements(rid)) == 1 and st.count("runs") == 3


def test_a_claim_whose_heartbeat_lapsed_is_taken_over(tmp_path):
    db = tmp_path / "r.db"
    cfg = SweepConfig(["fake"], ["sgd"], seeds=1, grid="quick", name="t")
    rid, key = _claim_as_another_host(db, cfg, heartbeat_age=LEASE_SECONDS + 1)
    res = run_sweep(cfg, db, progress=False, loader=_loader)
    assert res["tuning"] == {"finished": 3}
    with Store(db) as st:
        run = st.find_run(*key)
        assert run["id"] == rid and run["attempts"] == 2 and run["status"] == "finished"
        assert run["owner"] == owner_id() and len(st.measurements(rid)) == 3


def test_workers_die_with_their_parent(tmp_path):
    # parent -> child (die_with_parent) ; kill the parent: the child must go within seconds.
    script = textwrap.dedent("""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", (
            "import os, sys, time\\n"
            "from secondorder.bench.sweep import die_with_parent\\n"
            "die_with_parent(os.getppid())\\n"
            "print(os.getpid(), flush=True)\\n"
            "time.sleep(120)\\n")], stdout=sys.stdout)
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        parent.kill()
        parent.wait(timeout=30)
        gone, alive = psutil.wait_procs([child], timeout=5)
        assert not alive
    finally:
        parent.kill()
        for p in psutil.Process().children(recursive=True):
            if p.pid != parent.pid:
                p.kill()


def test_records_are_those_of_the_latest_settings(tmp_path):
    db = tmp_path / "r.db"
    for evals in (1, 2):
        run_sweep(SweepConfig(["fake"], ["sgd"], seeds=1, grid="quick", name="t",
                              evals_per_epoch=evals), db, progress=False, loader=_loader)
    with Store(db) as st:
        assert st.count("runs") == 6
        recs = load_records(st, "t")
        assert len(recs) == 3 and {r.settings["evals_per_epoch"] for r in recs} == {2}
        assert len(load_records(st)) == 6  # no sweep named: everything


def test_time_budget_is_calibrated_stored_and_reused_on_resume(tmp_path):
    """equal="time": tuning at the epoch budget, then every seed of every selected setting
    trains for the calibrated time T (the slowest selected tuning run, at least
    min_time_budget), stored in the database; a rerun reuses T and creates no run."""
    from secondorder.bench.time_budget import MAX_EPOCH_FACTOR, META_KEY

    db = tmp_path / "r.db"
    cfg = SweepConfig(["fake"], ["sgd", "adam"], seeds=2, grid="quick", name="t",
                      equal="time", min_time_budget=0.05)
    res = run_sweep(cfg, db, progress=False, loader=_loader)
    assert res["tuning"] == {"finished": 6}
    assert res["final"] == {"finished": 4}  # seed 0 is measured anew, with the time budget
    assert res["plan"]["repetition_runs"] == 4
    with Store(db) as st:
        recs = load_records(st, "t")
        entry = st.get_meta("t", META_KEY)["fake"]
        assert st.get_meta("t", "config")["equal"] == "time"
        n_runs = st.count("runs")
    assert n_runs == 10
    selected = {o: select_best([r for r in recs if r.optimizer == o and r.budget == {"epochs": 2}
                                and r.seed == 0]) for o in ("sgd", "adam")}
    slowest = max(selected, key=lambda o: selected[o].last["wall_time"])
    t = float(f"{max(selected[slowest].last['wall_time'], 0.05):.3g}")
    assert entry["seconds"] == t and entry["tuning_budget"] == {"epochs": 2.0}
    budget = {"epochs": 2.0 * MAX_EPOCH_FACTOR, "seconds": t}
    assert entry["budget"] == budget
    timed = [r for r in recs if r.budget == budget]
    assert sorted((r.optimizer, r.seed) for r in timed) == [
        ("adam", 0), ("adam", 1), ("sgd", 0), ("sgd", 1)]
    for r in timed:  # stopped by the time budget (or by the epoch cap), not by the epochs
        last = r.last
        assert last["wall_time"] >= t or last["data_epoch"] >= 2.0 * MAX_EPOCH_FACTOR - 1e-9
        assert last["data_epoch"] > 2.0  # the cheap fake problem trains more epochs than E
    # Rerun: T comes from the database, and every run is found there.
    res2 = run_sweep(cfg, db, progress=False, loader=_loader)
    assert res2["tuning"] == {"skipped": 6} and res2["final"] == {"skipped": 4}
    with Store(db) as st:
        assert st.count("runs") == n_runs
        # The stored value is what a rerun uses: change it and the measurement runs are new.
        st.set_meta("t", META_KEY, {"fake": {**entry, "seconds": 0.07,
                                             "budget": {**budget, "seconds": 0.07}}})
    res3 = run_sweep(cfg, db, progress=False, loader=_loader)
    assert res3["tuning"] == {"skipped": 6} and res3["final"] == {"finished": 4}
    with Store(db) as st:
        assert sum(r["budget"].get("seconds") == 0.07 for r in st.runs("t")) == 4


def test_equal_must_be_time_or_epochs():
    with pytest.raises(ValueError, match="Invalid equal: 'steps'"):
        SweepConfig(["fake"], ["sgd"], equal="steps")
    with pytest.raises(ValueError, match="Invalid min_time_budget: 0"):
        SweepConfig(["fake"], ["sgd"], min_time_budget=0)
    from secondorder.bench.runner import Budget

    assert SweepConfig(["fake"], ["sgd"], equal="time").calibrates
    assert SweepConfig(["fake"], ["sgd"], equal="time", budget=Budget(epochs=3)).calibrates
    assert not SweepConfig(["fake"], ["sgd"], equal="time", budget=Budget(seconds=3)).calibrates
    assert not SweepConfig(["fake"], ["sgd"]).calibrates


def test_plan_probes_run_with_the_threads_of_a_worker(tmp_path, monkeypatch):
    """The duration estimate probes with a worker's torch threads (not the main
    process's), and the main process gets its threads back."""
    import torch

    from secondorder.bench import sweep
    from secondorder.bench.timing import threads_per_worker

    seen = []

    def probe(problem, spec, hyper, budget, evals):
        seen.append(torch.get_num_threads())
        return 0.01

    monkeypatch.setattr(sweep, "estimate_run_seconds", probe)
    before = torch.get_num_threads()
    plans = []

    def stop(plan):
        plans.append(plan)
        raise KeyboardInterrupt

    cfg = SweepConfig(["fake"], ["sgd", "adam"], seeds=2, grid="quick", name="t", workers=8,
                      equal="time", min_time_budget=0.05)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, tmp_path / "r.db", progress=False, loader=_loader, on_plan=stop)
    assert seen == [threads_per_worker(8)] * 2 and torch.get_num_threads() == before
    # tuning: 3 + 3 runs of 0.01 s; measurement: 2 seeds x 2 methods x min(T=0.05, 20 x 0.01)
    (plan,) = plans
    assert plan["estimate_seconds"] == pytest.approx((6 * 0.01 + 4 * 0.05)
                                                     / min(8, sweep.cores_available()))

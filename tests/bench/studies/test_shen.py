"""[Shen]'s study: complex-step Newton-Krylov in the bench, the study's --quick run, its
ablations, Fig. 2 and the derivative-cost benchmark."""

from __future__ import annotations

import math

import pytest
import torch

from secondorder.bench import problems as P
from secondorder.bench.registry import REGISTRY
from secondorder.bench.runner import Budget, make_closure, run


# --------------------------------------------------------------------------- fidelity
def test_bench_closure_takes_the_parameters_for_complex_step():
    prob = P.get_problem("cancer_logistic")
    model = prob.make_model(0)
    x, y = prob.train.inputs[:32], prob.train.targets[:32]
    closure = make_closure(REGISTRY["NewtonKrylov"], model, None, prob, x, y, [None])
    params = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        assert float(closure(params)) == float(closure().mean())
        shifted = [p + 1.0 for p in params]  # the parameters given, not the model's
        assert float(closure(shifted)) != float(closure().mean())


def test_newton_krylov_complex_step_runs_in_the_bench_like_autograd():
    # Before: the bench closure took no parameters and NewtonKrylov(backend="complex-step")
    # failed ("the closure does not accept the parameter tensors").
    prob = P.get_problem("cancer_logistic")  # full batch: one step per epoch
    out = {}
    for backend in ("autograd", "complex-step"):
        res = run(prob, REGISTRY["NewtonKrylov"], {"backend": backend, "max_cg_iter": 3}, 0,
                  Budget(epochs=3))
        assert res.status == "finished", res.error
        out[backend] = res.measurements
    a, b = (m[-1]["train_loss"] for m in (out["autograd"], out["complex-step"]))
    assert a < 0.9 * out["autograd"][0]["train_loss"]
    # the same iterates to float32 rounding: measured 1.4e-6 relative after 3 steps (longer
    # Krylov loops on this ill-conditioned problem amplify rounding: 2e-4 at 10 iterations)
    assert b == pytest.approx(a, rel=1e-4)
    assert out["complex-step"][-1]["optimizer_counters"]["hvps"] > 0
    assert math.isfinite(out["complex-step"][-1]["optimizer_counters"]["global_seconds"])


def test_registry_says_which_backend_newton_krylov_uses():
    text = REGISTRY["NewtonKrylov"].description
    assert "autograd" in text and "complex-step" in text


# --------------------------------------------------------------------------- problems
def test_lenet_activations_and_stand_in(mnist_t10k_dir):
    from secondorder.bench.studies.shen_problems import Sin, lenet

    for act, kind in (("sin", Sin), ("relu", torch.nn.ReLU), ("none", torch.nn.Identity)):
        sp = lenet(None, True, activation=act)  # digits padded to 28 x 28
        model = sp.problem.make_model(0)
        assert sum(isinstance(m, kind) for m in model.modules()) == 4
        assert model(sp.problem.train.inputs[:3]).shape == (3, 10)
    mn = lenet(str(mnist_t10k_dir), False, batch_size=32)
    assert "MNIST test set" in mn.data and mn.problem.batch_size == 32
    with pytest.raises(ValueError, match="Invalid activation: 'tanh'"):
        lenet(None, True, activation="tanh")


def test_logistic_uses_a_libsvm_file_when_the_data_dir_has_one(tmp_path):
    from secondorder.bench.studies.shen_problems import logistic

    folder = tmp_path / "libsvm"
    folder.mkdir()
    rows = [f"{1 + i % 3} 1:{(i % 5) / 5:.2f} 3:{(i % 7) / 7:.2f}" for i in range(60)]
    (folder / "train.svm").write_text("\n".join(rows) + "\n")
    sp = logistic(str(tmp_path), False, batch_size="full")
    assert sp.original and sp.problem.full_batch
    assert sp.problem.batch_size == len(sp.problem.train)
    with pytest.raises(ValueError, match="Invalid batch_size: 0"):
        logistic(None, True, batch_size=0)


def test_ovr_squared_hinge_against_a_loop():
    from secondorder.bench.studies.shen_problems import ovr_squared_hinge

    out = torch.tensor([[0.5, -2.0, 1.5], [3.0, 0.0, -1.0]])
    y = torch.tensor([2, 0])
    want = []
    for i in range(2):
        s = [1.0 if k == int(y[i]) else -1.0 for k in range(3)]
        want.append(sum(max(0.0, 1.0 - s[k] * float(out[i, k])) ** 2 for k in range(3)))
    torch.testing.assert_close(ovr_squared_hinge(out, y), torch.tensor(want))


def test_reduced_vgg11_has_the_config_a_layout():
    from secondorder.bench.studies.shen_problems import ReducedVGG11

    net = ReducedVGG11(8, in_channels=1)
    convs = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [8, 16, 32, 32, 64, 64, 64, 64]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 8
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


# --------------------------------------------------------------------------- Fig. 2, costs
def test_cg_energy_decreases_monotonically_on_a_convex_problem():
    from secondorder.bench.studies.shen_costs import cg_energy

    prob = P.get_problem("cancer_logistic")
    trace = cg_energy(prob, batch=64, iterations=8, backend="autograd")
    assert trace.first_negative is None
    diffs = [b - a for a, b in zip(trace.energy, trace.energy[1:], strict=False)]
    assert all(d < 0 for d in diffs)  # CG minimizes E_Q over growing Krylov spaces
    assert trace.residual[0] == 1.0 and len(trace.residual) == 9


def test_cg_energy_complex_step_matches_autograd():
    from secondorder.bench.studies.shen_costs import cg_energy

    prob = P.get_problem("cancer_logistic")
    a = cg_energy(prob, batch=64, iterations=4, backend="autograd")
    b = cg_energy(prob, batch=64, iterations=4, backend="complex-step")
    assert b.energy == pytest.approx(a.energy, rel=1e-9, abs=1e-12)


def test_derivative_costs_report_ratios_to_a_gradient():
    from secondorder.bench.studies.shen_costs import derivative_costs

    costs = derivative_costs(width_divisor=32, batch=1, rounds=1)
    assert set(costs) == {"VGG-11", "VGG-19"}
    for row in costs.values():
        assert row["autograd_ratio"] == pytest.approx(row["autograd_hvp"] / row["gradient"])
        assert row["complex_over_autograd"] > 0
    assert costs["VGG-19"]["parameters"] > costs["VGG-11"]["parameters"]
    assert torch.get_num_threads() >= 1


# --------------------------------------------------------------------------- metrics
class _Rec:
    def __init__(self, ms, status="finished"):
        self.measurements, self.status, self.error = ms, status, None

    @property
    def last(self):
        return self.measurements[-1]


class _Results:
    def __init__(self, recs):
        self.recs = recs

    def runs(self, part, problem, method):
        return self.recs.get(method, [])


def test_step_attempt_metric_reads_the_epoch_differences():
    from secondorder.bench.studies.metrics import METRICS

    ms = [{"data_epoch": e, "optimizer_counters": {"sizings": 10 * e, "step_attempts": a}}
          for e, a in ((0, 0), (1, 57), (2, 100))]
    res = _Results({"m": [_Rec(ms)]})
    assert METRICS["shen_attempts_epoch1"](res, "p", "q", "m")[0] == pytest.approx(5.7)
    value, text = METRICS["shen_attempts_epoch10"](res, "p", "q", "m")
    assert value == pytest.approx(4.3) and "(epoch 2)" in text


def test_counter_metrics_read_the_last_optimizer_counters_over_seeds():
    from secondorder.bench.studies.metrics import METRICS

    def rec(hvps, sizings):
        return _Rec([{"optimizer_counters": {"hvps": 1, "sizings": 1}},
                     {"optimizer_counters": {"hvps": hvps, "sizings": sizings}}])

    res = _Results({"one": [rec(120, 12)], "three": [rec(100, 20), rec(200, 22), rec(300, 24)],
                    "none": [_Rec([{"train_loss": 1.0}])]})
    assert METRICS["shen_hvps"](res, "p", "q", "one") == (120.0, "120")
    assert METRICS["shen_sizings"](res, "p", "q", "one") == (12.0, "12")
    assert METRICS["shen_hvps"](res, "p", "q", "three") == (200.0, "200 ± 100")
    assert METRICS["shen_sizings"](res, "p", "q", "three") == (22.0, "22 ± 2")
    assert METRICS["shen_hvps"](res, "p", "q", "none") == (None, "-")
    assert METRICS["shen_hvps"](res, "p", "q", "absent") == (None, "not run")


def test_termination_part_runs_every_variant_on_sigmoid_and_a_learning_lenet():
    from secondorder.bench.studies import get_study
    from secondorder.bench.studies.shen import TERMINATION_ACTIVATION

    part = get_study("shen").part("termination")
    assert [p.name for p in part.problems] == ["lenet5", f"lenet5_{TERMINATION_ACTIVATION}"]
    assert part.problems[1].options["activation"] == TERMINATION_ACTIVATION == "sin"
    assert "activation" not in part.problems[0].options  # sigmoid, the paper's default
    hyper = [m.hyperparameters for m in part.methods]
    assert [h.get("early_termination", True) for h in hyper] == [True, False, True, True, True]
    assert [h.get("warm_start") for h in hyper] == [None, None, 1.0, None, None]
    assert [h.get("printed_cg_step", False) for h in hyper] == [False] * 3 + [True, False]
    assert [h.get("printed_post_screen", False) for h in hyper] == [False] * 4 + [True]
    table = next(t for t in get_study("shen").tables if t.name == "Early termination")
    assert [c.metric for c in table.columns] == ["train_loss", "shen_hvps", "shen_sizings",
                                                "runtime"]
    assert {r.problem for r in table.rows} == {p.name for p in part.problems}
    assert len(table.rows) == 2 * len(part.methods)


# --------------------------------------------------------------------------- the study
def test_shen_study_declares_the_papers_methods():
    from secondorder.bench.studies import get_study

    study = get_study("shen")
    labels = [m.label for m in study.part("dnn").methods]
    assert labels[:2] == ["Newton-Krylov (complex step)", "Newton-Krylov (autograd)"]
    cs = study.part("dnn").method("Newton-Krylov (complex step)")
    assert cs.hyperparameters["backend"] == "complex-step"
    assert study.part("dnn").method("Adam").grid == (1e-1, 1e-2, 1e-3, 1e-4)
    fd = [m.hyperparameters.get("fd_step") for m in study.part("fd").methods]
    assert fd == [None, 1e-2, 1e-4, 1e-6, 1e-8, 1e-16]
    etas = [m.hyperparameters["taylor_ratio"] for m in study.part("eta").methods]
    assert etas == [0.001, 0.01, 0.05, 0.1, 0.2, 0.5]
    armijo = study.part("sizing").method("Armijo backtracking").hyperparameters
    assert (armijo["armijo_c"], armijo["armijo_tau"]) == (0.01, 0.8)
    assert {p.name for p in study.part("linear").problems} == {
        f"{k}_{b}" for k in ("logistic", "svm") for b in ("full", 128, 1024)}


def test_shampoo_is_left_out_with_a_note_when_not_installed(monkeypatch):
    from secondorder.bench.studies import shen

    monkeypatch.setattr(shen, "shampoo_available", lambda: "ModuleNotFoundError: x")
    study = shen.build(quick=True).validate()
    assert "Shampoo" not in [m.label for m in study.part("dnn").methods]
    assert any("Shampoo is not installed" in n for n in study.notes)
    monkeypatch.setattr(shen, "shampoo_available", lambda: None)
    study = shen.build(quick=True).validate()
    assert "Shampoo" in [m.label for m in study.part("dnn").methods]


def test_shampoo_failure_is_recorded_with_its_message():
    # Without the extra the registry entry does not import: a run is "failed" with the
    # reason, never an exception (with it installed, a failing SVD is recorded the same way).
    spec = REGISTRY["Shampoo"]
    if spec.unavailable_reason() is None:
        pytest.skip("pytorch-optimizer is installed here")
    res = run(P.get_problem("cancer_logistic"), spec, {"lr": 0.01}, 0, Budget(epochs=1))
    assert res.status == "failed" and "pytorch_optimizer" in res.error


PAPER_CELLS = [
    ("Supplementary Table 1", "Line search (Armijo c = 0.01, tau = 0.8)", ["9.3", "16.7"]),
    ("Supplementary Table 1", "Our method (Taylor ratio, eta~ = 0.05)", ["5.7", "5.1"]),
    ("Time statistic", "Newton-Krylov, Taylor ratio", ["680", "89.8%"]),
]


def test_quick_run_writes_every_table_and_figure(tmp_path):
    from secondorder.bench.studies import get_study
    from secondorder.bench.studies import run as run_study

    rep = run_study("shen", tmp_path, quick=True, progress=False)
    study = get_study("shen", quick=True)
    assert set(rep["tables"]) == {t.name for t in study.tables}
    assert len(rep["figures"]) == len(study.figures) == 14
    for path in rep["figures"]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for table, label, cells in PAPER_CELLS:
        header, rows, _ = rep["tables"][table]
        row = next(r for r in rows if r[0] == label)
        assert row[1::2] == cells  # the paper's column beside each of ours
    # every Newton-Krylov (complex step) cell ran the complex-step backend and finished
    header, rows, _ = rep["tables"]["Fig. 3 (DNNs): rank"]
    assert all("finished" in r[-1] for r in rows if "complex step" in r[0])
    # the early-termination table has a number of products for each variant on both LeNet-5s
    header, rows, _ = rep["tables"]["Early termination"]
    assert len(rows) == 10
    assert all(float(r[4]) > 0 for r in rows), rows  # [label, paper, ours, ...]
    text = rep["markdown"].read_text()
    assert "QUICK run" in text and "backend='complex-step'" in text

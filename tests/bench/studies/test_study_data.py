"""The studies' data choice (the paper's set, the MNIST test set, digits) on tiny files
written here in the original formats, and the iteration runner against oracles."""

from __future__ import annotations

import pytest
import torch

from secondorder.bench.studies import run
from secondorder.bench.studies.iterations import run_iterations
from secondorder.bench.studies.problems import cnn, logistic2d, mlp, rosenbrock


def test_fashion_mnist_files_are_the_papers_data(fashion_dir):
    sp = mlp(fashion_dir, quick=True, hidden_layers=2)
    assert sp.original and sp.tag == "fashion-mnist"
    assert sp.data.startswith("Fashion-MNIST (the paper's data)")
    assert sp.problem.train.inputs.shape[1:] == (1, 28, 28)
    assert len(sp.problem.train) == 54 and len(sp.problem.test) == 40  # 10 % validation


def test_cifar10_batches_are_the_papers_data(cifar_dir):
    sp = cnn(cifar_dir, quick=True)
    assert sp.original and sp.tag == "cifar10"
    assert sp.problem.train.inputs.shape[1:] == (3, 32, 32)
    out = sp.problem.make_model(0)(sp.problem.train.inputs[:4])
    assert out.shape == (4, 10)


def test_mnist_test_set_and_digits_stand_ins(mnist_t10k_dir):
    sp = mlp(mnist_t10k_dir, quick=False, hidden_layers=1)
    assert not sp.original and sp.tag == "mnist"
    assert "MNIST test set standing in for Fashion-MNIST" in sp.data
    assert len(sp.problem.train) == 70  # 70 / 10 / 20 % of the 100 test images
    c = cnn(mnist_t10k_dir, quick=False)
    assert "MNIST test set standing in for CIFAR-10" in c.data
    assert c.problem.make_model(0)(c.problem.train.inputs[:2]).shape == (2, 10)
    d = cnn(None, quick=True)
    assert d.tag == "digits-n400" and "digits standing in for CIFAR-10" in d.data
    assert d.problem.make_model(0)(d.problem.train.inputs[:2]).shape == (2, 10)


@pytest.mark.parametrize("name", ["veitch", "filippova"])
def test_original_data_path_runs_the_study(name, request, tmp_path):
    # Both fixtures write into this test's tmp_path: one data folder with both sets.
    data_dir = request.getfixturevalue("fashion_dir" if name == "veitch" else "cifar_dir")
    rep = run(name, tmp_path / "out", data_dir=str(data_dir), quick=True, progress=False)
    md = (tmp_path / "out" / "study.md").read_text()
    paper_set = "Fashion-MNIST (the paper's data)" if name == "veitch" else \
        "CIFAR-10 (the paper's data)"
    assert paper_set in md
    table = "Table 3" if name == "veitch" else "Table 1"
    _, rows, _ = rep["tables"][table]
    assert all(r[2] != "not run" for r in rows)


def test_rosenbrock_b50_value_and_minimum():
    p = rosenbrock().problem
    model = p.make_model(0)
    x = torch.zeros(1, 1)
    assert float(model(x)[0].detach()) == pytest.approx(2.2**2 + 50 * (1 - 1.44) ** 2)
    with torch.no_grad():
        model.xy.copy_(torch.tensor([1.0, 1.0]))
    assert float(model(x)[0].detach()) == 0.0


def test_scipy_lbfgsb_and_newton_reach_the_same_logistic_minimum():
    # Full-batch convex logistic regression: Newton's minimum is the oracle for the scipy
    # path (same torch model, float64 vector) and for our L-BFGS.
    p = logistic2d().problem
    finals = {}
    for opt in ("NewtonCG", "scipy_lbfgsb", "LBFGS"):
        res = run_iterations(p, opt, {}, 0, 40, sampling="full", batch_size=len(p.train))
        assert res.status == "finished", res.error
        finals[opt] = res.measurements[-1]["train_loss"]
        assert res.measurements[0]["optimizer_counters"]["gradient_seconds"] > 0
        walls = [m["wall_time"] for m in res.measurements]
        assert walls == sorted(walls)
    assert finals["scipy_lbfgsb"] == pytest.approx(finals["NewtonCG"], abs=1e-5)
    assert finals["LBFGS"] == pytest.approx(finals["NewtonCG"], abs=1e-5)


def test_reshuffled_run_draws_new_batches_each_iteration_only():
    p = logistic2d().problem
    res = run_iterations(p, "LBFGS", {}, 0, 6, sampling="reshuffled", batch_size=10,
                         num_batches=5)
    objectives = [m["optimizer_counters"]["objective"] for m in res.measurements[1:]]
    assert len(set(objectives)) == len(objectives)  # a new eq. 28 objective per iteration
    fixed = run_iterations(p, "LBFGS", {}, 0, 6, sampling="fixed", batch_size=10)
    evals = fixed.measurements[-1]["optimizer_counters"]["evaluations"]
    assert evals >= 6  # one or more closure calls per iteration (line-search trials)


def test_failures_are_recorded_not_raised():
    p = logistic2d().problem
    res = run_iterations(p, "sgd", {"lr": -1.0}, 0, 3, sampling="full", batch_size=800)
    assert res.status == "failed" and "Invalid learning rate" in res.error
    boom = run_iterations(p, "sgd", {"lr": 1e6}, 0, 5, sampling="full", batch_size=800)
    assert boom.status == "diverged"

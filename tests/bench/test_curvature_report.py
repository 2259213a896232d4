"""``secondorder curvature``: curvature figures against closed forms, and the report files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from secondorder.bench.curvature_report import curvature_at, curvature_report
from secondorder.bench.problems import get_problem

F64 = torch.float64


def _logistic_hessian(model, problem, batch: int) -> torch.Tensor:
    """Closed form of the mean logistic loss: ``1/n sum s(1-s) z z^T``, ``z = [x, 1]``."""
    x = problem.train.inputs[:batch].double()
    z = torch.cat([x, torch.ones(len(x), 1, dtype=F64)], dim=1)
    w = torch.cat([model.linear.weight.reshape(-1), model.linear.bias]).detach().double()
    s = torch.sigmoid(z @ w)
    return (z * (s * (1 - s))[:, None]).T @ z / len(x)


def _diagonal_mass(h: torch.Tensor) -> float:
    return float(h.diagonal().abs().sum() / h.abs().sum())


def test_logistic_regression_matches_the_closed_form_hessian():
    problem = get_problem("logistic2d")
    model = problem.make_model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = curvature_at(model, problem, batch=32, top=3, seed=0)
    h = _logistic_hessian(model, problem, 32)
    exact = torch.linalg.eigvalsh(h).flip(0)
    assert out["num_params"] == 3
    np.testing.assert_allclose(out["eigenvalues"], exact.numpy(), rtol=1e-9, atol=0)
    assert out["diagonal_mass"] == pytest.approx(_diagonal_mass(h), rel=1e-10)
    assert out["wigner"] == pytest.approx(1 / 3, rel=1e-12)  # [AdaptiveNorms] Prop. 1, d = 3
    ols = math.sqrt(32) / (math.sqrt(32) + 2 * math.sqrt(2 / math.pi))  # Prop. 2, d=3, n=32
    assert out["ols"] == pytest.approx(ols, rel=1e-12)
    # Hutchinson: unbiased, within a few standard errors of the exact trace
    assert out["trace_stderr"] > 0
    assert abs(out["trace"] - float(h.trace())) < 5 * out["trace_stderr"]
    d = out["density"]
    mass = float(torch.trapezoid(d.density, d.grid))
    assert abs(mass - 1.0) < 1e-6
    # the model itself is left as it was (float32, same values)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32


def test_large_networks_skip_the_dense_figures():
    problem = get_problem("logistic2d")
    out = curvature_at(problem.make_model(0), problem, top=2, max_dense=2)
    assert out["diagonal_mass"] is None and out["wigner"] is None and out["ols"] is None
    assert len(out["eigenvalues"]) == 2


def test_rotated_quadratic_has_the_eigenvalues_of_its_matrix():
    problem = get_problem("quadratic_rotated")
    model = problem.make_model(0)
    h = model.hessian.double()  # the float32-rounded R diag(1e-2, 1e2) R^T
    tr, det = float(h.trace()), float(torch.linalg.det(h))
    root = math.sqrt(tr * tr - 4 * det)
    out = curvature_at(model, problem, top=2)
    np.testing.assert_allclose(out["eigenvalues"], [(tr + root) / 2, (tr - root) / 2],
                               rtol=1e-10, atol=0)
    assert out["eigenvalues"][0] == pytest.approx(100.0, rel=1e-6)
    assert out["eigenvalues"][1] == pytest.approx(0.01, rel=1e-3)
    h11, h22, h12 = abs(float(h[0, 0])), abs(float(h[1, 1])), abs(float(h[0, 1]))
    assert out["diagonal_mass"] == pytest.approx((h11 + h22) / (h11 + h22 + 2 * h12), rel=1e-10)
    assert out["wigner"] == 0.5  # d = 2
    # one dummy sample: n = 1
    assert out["ols"] == pytest.approx(1 / (1 + math.sqrt(2 / math.pi)), rel=1e-12)


def test_report_writes_the_table_and_figures(tmp_path):
    res = curvature_report("quadratic_axis", tmp_path, epochs=2, top=2)
    assert [ep for ep, _ in res["checkpoints"]] == [0.0, 1.0, 2.0]
    for _, c in res["checkpoints"]:  # constant Hessian diag(1e-2, 1e2)
        np.testing.assert_allclose(c["eigenvalues"], [100.0, 0.01], rtol=1e-6)
        assert c["diagonal_mass"] == 1.0
    assert res["markdown"] == tmp_path / "curvature_quadratic_axis.md"
    text = res["markdown"].read_text()
    assert text.startswith("# Curvature of quadratic_axis\n\n2 parameters; trained with adam")
    assert "for 2 epochs" in text
    rows = [r for r in res["text"].splitlines() if r.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| initialization", "| mid-training",
                                                      "| end"]
    assert "| 100, 0.01 |" in rows[1] and "| 1 | 0.5 |" in rows[1]
    assert res["text"] in text
    names = sorted(p.name for p in res["figures"])
    assert names == ["curvature_quadratic_axis_density.png", "curvature_quadratic_axis_mass.png"]
    for p in res["figures"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](figures/{p.name})" in text


def test_unknown_problem_or_optimizer_is_named_and_nothing_is_written(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"Unknown problem 'nope'; available: digits_softmax"):
        curvature_report("nope", out)
    with pytest.raises(ValueError, match=r"unknown optimizer 'nope'; valid names: "):
        curvature_report("quadratic_axis", out, optimizer="nope")
    assert not out.exists()

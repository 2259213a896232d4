"""Both closure conventions: secondorder's (return the loss) and torch.optim's (backward inside).

Gradient-only optimizers accept a closure that calls ``zero_grad()`` and ``backward()``
and use the ``.grad`` it wrote; curvature methods raise an error that shows the change.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch
from torch import nn

import secondorder.optim as so
from secondorder.optim.closure_convention import call_closure


def _logistic_data(seed: int = 0, n: int = 200, d: int = 5):
    """Noisy labels, so the data are not separable and the logistic loss has a minimizer."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, 1, generator=g, dtype=torch.float64)
    y = ((x @ w + 2.0 * torch.randn(n, 1, generator=g, dtype=torch.float64)) > 0).double()
    return x, y


def _model(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(5, 1).double()


def _scipy_minimum(x: torch.Tensor, y: torch.Tensor) -> float:
    """The logistic loss's minimum by scipy's BFGS (float64 oracle)."""
    xn, yn = x.numpy(), y.numpy()[:, 0]
    xa = np.hstack([xn, np.ones((len(xn), 1))])

    def f(w):
        z = xa @ w
        loss = np.mean(np.logaddexp(0, z) - yn * z)
        grad = xa.T @ (1 / (1 + np.exp(-z)) - yn) / len(z)
        return loss, grad

    res = scipy.optimize.minimize(f, np.zeros(6), jac=True, method="BFGS", options={"gtol": 1e-12})
    return float(res.fun)


def _run_torch_docs_example(optimizer, model, dataset, loss_fn) -> None:
    # torch.optim's documented closure ("optimizer.step(closure)", torch.optim docs), unchanged
    for input, target in dataset:

        def closure():
            optimizer.zero_grad()
            output = model(input)  # noqa: B023 (the docs' code, called in the loop)
            loss = loss_fn(output, target)  # noqa: B023
            loss.backward()
            return loss

        optimizer.step(closure)


def test_torch_docs_lbfgs_example_converges_like_torch_lbfgs():
    x, y = _logistic_data()
    dataset = [(x, y)] * 5
    loss_fn = nn.BCEWithLogitsLoss()
    final = {}
    for name, make in [
        ("torch", lambda p: torch.optim.LBFGS(p, max_iter=20, line_search_fn="strong_wolfe")),
        ("secondorder", lambda p: so.LBFGS(p, max_iter=20)),
    ]:
        model = _model()
        _run_torch_docs_example(make(model.parameters()), model, dataset, loss_fn)
        with torch.no_grad():
            final[name] = float(loss_fn(model(x), y))
    best = _scipy_minimum(x, y)
    # Both stop on tolerance_change=1e-9 about 4e-10 (relative) above scipy's minimum, and
    # agree with each other to ~3e-16: assert 1e-8 to the minimum, 1e-12 to each other.
    assert final["secondorder"] == pytest.approx(best, rel=1e-8)
    assert final["torch"] == pytest.approx(best, rel=1e-8)
    assert final["secondorder"] == pytest.approx(final["torch"], rel=1e-12)


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize(
    "make",
    [
        lambda p: so.LBFGS(p, max_iter=3),
        lambda p: so.NonlinearCG(p, max_iter=3),
        lambda p: so.BarzilaiBorwein(p, lr=1.0, mode="bb1"),
        lambda p: so.BarzilaiBorwein(p, lr=1.0, mode="sgd_bb", epoch_length=1),
    ],
    ids=["LBFGS", "NonlinearCG", "BB1", "SGD-BB"],
)
def test_torch_style_closure_gives_the_same_iterates(make, set_to_none):
    """The gradient read from ``.grad`` is the one the optimizer would compute: same iterates."""
    x, y = _logistic_data()
    loss_fn = nn.BCEWithLogitsLoss()
    plain_model, torch_model = _model(), _model()
    plain_opt, torch_opt = make(plain_model.parameters()), make(torch_model.parameters())

    def plain_closure():
        return loss_fn(plain_model(x), y)

    def torch_closure():
        torch_opt.zero_grad(set_to_none=set_to_none)
        loss = loss_fn(torch_model(x), y)
        loss.backward()
        return loss

    for _ in range(4):
        plain_opt.step(plain_closure)
        torch_opt.step(torch_closure)
        for a, b in zip(plain_model.parameters(), torch_model.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert plain_opt.counters == torch_opt.counters
    with torch.no_grad():
        assert float(plain_closure()) < 0.9 * float(loss_fn(_model()(x), y))


def test_lightning_style_closure_returning_a_detached_loss():
    """Lightning's automatic-optimization closure returns ``loss.detach().clone()``."""
    x, y = _logistic_data()
    loss_fn = nn.BCEWithLogitsLoss()
    model = _model()
    opt = so.LBFGS(model.parameters(), max_iter=20)

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss.detach().clone()

    for _ in range(5):
        opt.step(closure)
    with torch.no_grad():  # within 1e-8 of the minimum (reaches ~4e-10, as torch.optim.LBFGS)
        assert float(loss_fn(model(x), y)) == pytest.approx(_scipy_minimum(x, y), rel=1e-8)


def test_newton_cg_line_search_side_accepts_torch_style_closure():
    """NewtonCG takes the gradient and line search from a torch.optim-style closure and the
    Hessian from a separate ``hessian_closure`` in secondorder's convention."""
    x, y = _logistic_data()
    loss_fn = nn.BCEWithLogitsLoss()
    model = _model()
    opt = so.NewtonCG(model.parameters())

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    def hessian_closure():
        return loss_fn(model(x[:100]), y[:100])

    for _ in range(10):
        opt.step(closure, hessian_closure)
    with torch.no_grad():  # reaches ~7e-12 relative; asserted 1e-9
        assert float(loss_fn(model(x), y)) == pytest.approx(_scipy_minimum(x, y), rel=1e-9)


CURVATURE_METHODS = {
    "NewtonCG": lambda p: so.NewtonCG(p),
    "TrustRegion": lambda p: so.TrustRegion(p),
    "AdaptiveCubic": lambda p: so.AdaptiveCubic(p),
    "NewtonKrylov": lambda p: so.NewtonKrylov(p),
    "HessianFree": lambda p: so.HessianFree(p, curvature="hessian", preconditioner=False),
    "AdaHessian": lambda p: so.AdaHessian(p),
    "LevenbergMarquardt": lambda p: so.LevenbergMarquardt(p),
}


@pytest.mark.parametrize("name", sorted(CURVATURE_METHODS))
def test_curvature_methods_explain_the_two_line_change(name):
    x, y = _logistic_data()
    loss_fn = nn.BCEWithLogitsLoss()
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = CURVATURE_METHODS[name](model.parameters())

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(ValueError) as info:
        opt.step(closure)
    msg = str(info.value)
    assert msg.startswith(f"{name} needs the loss's graph")
    assert "called backward()" in msg
    assert "delete the `optimizer.zero_grad()` and `loss.backward()` lines" in msg
    assert "return loss_fn(model(inputs), targets)" in msg
    for p, b in zip(model.parameters(), before, strict=True):  # nothing moved
        assert torch.equal(p, b)
    # the two-line change: the same optimizer then steps
    opt.step(lambda: loss_fn(model(x), y))


def _zero_in_place_then_backward(p):
    p.grad.zero_()
    (p**2).sum().backward()


@pytest.mark.parametrize(
    "body, ran_backward",
    [
        (lambda p: (p**2).sum(), False),  # secondorder's convention
        (lambda p: p.grad.zero_(), False),  # zero_grad(set_to_none=False) only
        (lambda p: setattr(p, "grad", None), False),  # zero_grad() only
        (lambda p: (setattr(p, "grad", None), (p**2).sum().backward()), True),  # torch.optim's
        (_zero_in_place_then_backward, True),  # zero_grad(set_to_none=False), backward
        (lambda p: (p**2).sum().backward(), True),  # backward accumulating into .grad
    ],
    ids=["plain", "zero-in-place-only", "set-to-none-only", "torch", "zero-in-place-torch",
         "accumulate"],
)
def test_call_closure_detects_a_backward(body, ran_backward):
    p = torch.ones(3, requires_grad=True)
    p.grad = torch.full((3,), 5.0)
    _, detected = call_closure(lambda: body(p), [p])
    assert detected is ran_backward


def test_a_closure_that_only_zeroes_grad_in_place_is_the_secondorder_convention():
    """zero_grad(set_to_none=False) without backward leaves zeros in .grad: the optimizer
    must still differentiate the returned loss (same iterates as a plain closure)."""
    x, y = _logistic_data()
    loss_fn = nn.BCEWithLogitsLoss()
    plain_model, zeroing_model = _model(), _model()
    loss_fn(zeroing_model(x), y).backward()  # .grad tensors exist, to be zeroed in place
    plain_opt = so.LBFGS(plain_model.parameters(), max_iter=3)
    zeroing_opt = so.LBFGS(zeroing_model.parameters(), max_iter=3)

    def zeroing_closure():
        zeroing_opt.zero_grad(set_to_none=False)
        return loss_fn(zeroing_model(x), y)

    for _ in range(3):
        plain_opt.step(lambda: loss_fn(plain_model(x), y))
        zeroing_opt.step(zeroing_closure)
    for a, b in zip(plain_model.parameters(), zeroing_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)

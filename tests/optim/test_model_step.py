"""The model-based step shell: start check, gradient in a norm, trial and ratio."""

from __future__ import annotations

import math

import pytest
import torch

from secondorder.errors import NonFiniteLossError
from secondorder.optim.base import SecondOrderOptimizer
from secondorder.optim.curvature_source import local_model
from secondorder.optim.model_step import (
    AdaptiveNormOptimizer,
    Trial,
    check_finite_start,
    try_step,
)
from secondorder.optim.norms import DiagonalNorm, SphericalNorm

F64 = torch.float64
A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=F64)
RHS = torch.tensor([1.0, -2.0], dtype=F64)
NORM_DEFAULTS = {"norm": "adagrad", "beta": 0.9, "epsilon": 1.0, "power": 1.0,
                 "normalize": False}


class Probe(SecondOrderOptimizer):
    """The optimizer shell with no step."""


class NormProbe(AdaptiveNormOptimizer):
    """An adaptive-norm optimizer with no step."""


def _quadratic(w):
    """``f(w) = 0.5 w^T A w - b^T w``: gradient ``A w - b``, minimizer ``A^{-1} b``."""
    return lambda: 0.5 * w @ A @ w - RHS @ w


def _setup():
    w = torch.tensor([0.5, 1.5], dtype=F64, requires_grad=True)
    return w, Probe([w], {})


def _model_decrease(w, s):
    """``m(0) - m(s) = -(g^T s + s^T A s / 2)``, the exact decrease of the quadratic."""
    g = A @ w - RHS
    return -(g @ s + 0.5 * s @ A @ s)


def test_check_finite_start_returns_loss_and_gradient_norm():
    loss_f, gnorm = check_finite_start(torch.tensor(2.0), (torch.tensor([3.0]), torch.tensor(4.0)))
    assert (loss_f, gnorm) == (2.0, 5.0)
    with pytest.raises(NonFiniteLossError, match="loss nan or gradient norm 5.0 at the current "
                                                 "point is not finite"):
        check_finite_start(torch.tensor(float("nan")), (torch.tensor([3.0, 4.0]),))
    with pytest.raises(NonFiniteLossError, match="loss 1.0 or gradient norm inf"):
        check_finite_start(torch.tensor(1.0), (torch.tensor([float("inf")]),))


def test_newton_step_on_a_quadratic_is_accepted_with_rho_one():
    w, opt = _setup()
    w0 = w.detach().clone()
    loss = _quadratic(w)().detach()
    s = -torch.linalg.solve(A, A @ w0 - RHS)
    trial = try_step(opt, _quadratic(w), loss, (s,), _model_decrease(w0, s), eta=0.75)
    assert trial.accepted
    assert abs(trial.rho - 1.0) < 1e-12
    assert trial.predicted == pytest.approx(float(_model_decrease(w0, s)), rel=1e-14)
    assert torch.allclose(w.detach(), torch.linalg.solve(A, RHS), rtol=0, atol=1e-14)
    assert opt.counters.loss_evals == 1 and opt.counters.gradients == 0


@pytest.mark.parametrize(("eta", "accepted"), [(0.5, False), (0.2, True)])
def test_rho_against_eta(eta, accepted):
    # Report 4x the true decrease: rho = 1/4.
    w, opt = _setup()
    w0 = w.detach().clone()
    s = -0.5 * torch.linalg.solve(A, A @ w0 - RHS)
    trial = try_step(opt, _quadratic(w), _quadratic(w)().detach(), (s,),
                     4.0 * _model_decrease(w0, s), eta=eta)
    assert abs(trial.rho - 0.25) < 1e-12
    assert trial.accepted is accepted
    if accepted:
        assert torch.allclose(w.detach(), w0 + s, rtol=0, atol=1e-15)
    else:
        assert torch.equal(w.detach(), w0)


def test_rejected_steps_restore_the_parameters_bit_for_bit():
    w, opt = _setup()
    w0 = w.detach().clone()
    loss = _quadratic(w)().detach()
    uphill = A @ w0 - RHS  # the gradient: the loss goes up
    trial = try_step(opt, _quadratic(w), loss, (uphill,), torch.tensor(1.0, dtype=F64), eta=0.0)
    assert not trial.accepted and trial.rho < 0
    assert torch.equal(w.detach(), w0)

    # a positive actual decrease but a non-positive prediction: not a model to trust
    newton = -torch.linalg.solve(A, uphill)
    trial = try_step(opt, _quadratic(w), loss, (newton,), torch.tensor(0.0, dtype=F64), eta=0.0)
    assert not trial.accepted and trial.rho_or_fail == -math.inf
    assert torch.equal(w.detach(), w0)

    # a NaN trial loss
    def nan_beyond_start():
        return torch.where(w[0] > 0.6, torch.tensor(float("nan"), dtype=F64), _quadratic(w)())

    trial = try_step(opt, nan_beyond_start, loss, (torch.tensor([1.0, 0.0], dtype=F64),),
                     torch.tensor(1.0, dtype=F64), eta=0.0)
    assert not trial.accepted and math.isnan(trial.rho) and trial.rho_or_fail == -math.inf
    assert torch.equal(w.detach(), w0)


def test_rho_or_fail():
    assert Trial(2.0, 0.3, True).rho_or_fail == 0.3
    assert Trial(0.0, 0.3, False).rho_or_fail == -math.inf
    assert Trial(-1.0, 2.0, False).rho_or_fail == -math.inf
    assert Trial(1.0, math.nan, False).rho_or_fail == -math.inf
    assert Trial(1.0, math.inf, False).rho_or_fail == -math.inf


def test_subproblem_gradient_updates_the_norm_inside_the_local_model():
    w = torch.tensor([0.5, 1.5], dtype=F64, requires_grad=True)
    opt = NormProbe([w], NORM_DEFAULTS)
    g = A @ w.detach() - RHS
    with local_model(opt, _quadratic(w), "hessian") as model:
        grads = opt.subproblem_gradient(model, opt.norm, tolerance_grad=1e-8)
        hv = model.operator.matvec((torch.tensor([1.0, -1.0], dtype=F64),))[0]
    assert grads is model.grads
    assert torch.allclose(model.loss, _quadratic(w)().detach(), rtol=0, atol=1e-15)
    assert torch.allclose(grads[0], g, rtol=0, atol=1e-14)
    assert torch.allclose(hv, A @ torch.tensor([1.0, -1.0], dtype=F64), rtol=0, atol=1e-14)
    # Adagrad accumulator g^2 ([AdaptiveNorms] eq. 2), kept in the state and read back by .norm
    assert torch.allclose(opt.state["global"]["norm"]["accumulator"][0], g * g, rtol=0,
                          atol=1e-14)
    assert torch.allclose(opt.norm.diagonal()[0], g * g + 1.0, rtol=0, atol=1e-14)
    with pytest.raises(RuntimeError, match="graph has been freed"):  # freed by the with block
        model.operator.matvec((torch.ones(2, dtype=F64),))


def test_subproblem_gradient_below_the_gradient_tolerance():
    w = torch.tensor([0.5, 1.5], dtype=F64, requires_grad=True)
    opt = NormProbe([w], NORM_DEFAULTS)
    gnorm = float(torch.linalg.norm(A @ w.detach() - RHS))
    with local_model(opt, _quadratic(w), "hessian") as model:
        assert opt.subproblem_gradient(model, opt.norm, tolerance_grad=1.01 * gnorm) is None
        zeros = opt.subproblem_gradient(model, opt.norm, tolerance_grad=1.01 * gnorm,
                                        zero_small_gradient=True)
    assert torch.equal(zeros[0], torch.zeros(2, dtype=F64))
    assert "norm" not in opt.state["global"]  # [AdaptiveNorms] Alg. 1 line 4: no update
    with local_model(opt, lambda: w.sum() * float("inf"), "hessian") as model, \
            pytest.raises(NonFiniteLossError, match="not finite"):
        opt.subproblem_gradient(model, opt.norm, tolerance_grad=0.0)


def test_adaptive_norm_optimizer_builds_its_norm():
    w = torch.zeros(2, requires_grad=True)
    opt = NormProbe([w], NORM_DEFAULTS)
    assert isinstance(opt.norm, DiagonalNorm) and opt.norm.rule == "adagrad"
    assert opt.defaults["norm"] == "adagrad"

    custom = SphericalNorm()
    opt = NormProbe([w], {**NORM_DEFAULTS, "norm": custom})
    assert opt.norm is custom and opt.param_groups[0]["norm"] == "spherical"

    opt = NormProbe([{"params": [w], "norm": "rmsprop"}], NORM_DEFAULTS)
    assert isinstance(opt.norm, DiagonalNorm) and opt.norm.rule == "rmsprop"

    with pytest.raises(ValueError, match="Invalid norm value: 'bogus'; it must be one of"):
        NormProbe([w], {**NORM_DEFAULTS, "norm": "bogus"})
    v = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="norm differs between param groups"):
        NormProbe([{"params": [w]}, {"params": [v], "norm": "rmsprop"}], NORM_DEFAULTS)

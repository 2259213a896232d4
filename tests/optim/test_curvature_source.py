"""local_model and its helpers: the loss, gradient and curvature operator of one step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from secondorder import tensorlist as tl
from secondorder.curvature.ggn import GGNOperator
from secondorder.curvature.operators import HessianOperator
from secondorder.optim.base import SecondOrderOptimizer
from secondorder.optim.curvature_source import (
    CURVATURES,
    WorkingPrecisionOperator,
    check_closures,
    check_curvature,
    local_model,
    separate_operator,
)

F64 = torch.float64
A = torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]], dtype=F64)
B = torch.tensor([[1.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 7.0]], dtype=F64)
RHS = torch.tensor([1.0, -2.0, 0.5], dtype=F64)


class Probe(SecondOrderOptimizer):
    """The optimizer shell with no step: its evaluate, params and counters."""


def _quadratic(matrix, w):
    """``0.5 w^T M w - b^T w``; gradient ``M w - b``, Hessian ``M``."""
    return lambda: 0.5 * w @ matrix @ w - RHS @ w


def _setup():
    w = torch.tensor([0.3, -1.0, 2.0], dtype=F64, requires_grad=True)
    return w, Probe([w], {})


def test_check_curvature_and_check_closures_name_the_problem():
    assert CURVATURES == ("hessian", "gauss_newton")
    assert check_curvature("gauss_newton") == "gauss_newton"
    with pytest.raises(ValueError, match=r"Invalid curvature: 'newton'; choose one of "
                                         r"\('hessian', 'gauss_newton'\)"):
        check_curvature("newton")
    check_closures("hessian", None, None)
    check_closures("hessian", lambda: None, None)
    check_closures("gauss_newton", None, lambda: None)
    with pytest.raises(ValueError, match=r"curvature='gauss_newton' needs step\(closure, "
                                         r"ggn_closure=...\)"):
        check_closures("gauss_newton", None, None)
    with pytest.raises(ValueError, match="hessian_closure is only used with curvature='hessian'"):
        check_closures("gauss_newton", lambda: None, lambda: None)
    with pytest.raises(ValueError, match="ggn_closure is only used with curvature='gauss_newton'"):
        check_closures("hessian", None, lambda: None)


def test_hessian_model_is_the_closure_hessian_and_is_freed_on_exit():
    w, opt = _setup()
    with local_model(opt, _quadratic(A, w), "hessian") as model:
        assert isinstance(model.operator, HessianOperator)
        expected_loss = 0.5 * w.detach() @ A @ w.detach() - RHS @ w.detach()
        assert torch.allclose(model.loss, expected_loss, rtol=0, atol=1e-14)
        assert torch.allclose(model.grads[0], A @ w.detach() - RHS, rtol=0, atol=1e-14)
        v = torch.tensor([1.0, 2.0, -1.0], dtype=F64)
        (hv,) = model.operator.matvec((v,))
        assert torch.allclose(hv, A @ v, rtol=0, atol=1e-14)
        model.operator.matvec((v,))
        matvec = model.operator.matvec
    assert opt.counters.hvps == 2 and opt.counters.loss_evals == 1
    assert opt.counters.gradients == 1
    with pytest.raises(RuntimeError, match="graph has been freed"):
        matvec((v,))


def test_hessian_closure_gives_the_curvature_of_its_own_batch():
    w, opt = _setup()
    with local_model(opt, _quadratic(A, w), "hessian",
                     hessian_closure=_quadratic(B, w)) as model:
        assert torch.allclose(model.grads[0], A @ w.detach() - RHS, rtol=0, atol=1e-14)
        v = torch.tensor([1.0, 1.0, 1.0], dtype=F64)
        assert torch.allclose(model.operator.matvec((v,))[0], B @ v, rtol=0, atol=1e-14)
    assert opt.counters.loss_evals == 2 and opt.counters.hvps == 1


def test_per_sample_losses_give_the_sample_count():
    w, opt = _setup()
    x = torch.randn(7, 3, dtype=F64)
    with local_model(opt, lambda: (x @ w) ** 2, "hessian") as model:
        assert model.samples == 7
        # mean of (x_i^T w)^2: Hessian 2/n X^T X
        dense = torch.stack([model.operator.matvec((e,))[0] for e in torch.eye(3, dtype=F64)])
        assert torch.allclose(dense, 2.0 / 7 * x.T @ x, rtol=0, atol=1e-12)
    assert opt.counters.hvp_samples == 3 * 7


def test_gauss_newton_model_uses_the_ggn_closure_and_counts_its_products():
    torch.manual_seed(0)
    net = nn.Linear(3, 1).double()
    x, y = torch.randn(9, 3, dtype=F64), torch.randn(9, 1, dtype=F64)
    opt = Probe(net.parameters(), {})

    def closure():
        return nn.functional.mse_loss(net(x), y)

    def ggn_closure():
        return GGNOperator.from_model(net, nn.MSELoss(), x, y)

    with local_model(opt, closure, "gauss_newton", ggn_closure=ggn_closure) as model:
        design = torch.cat([x, torch.ones(9, 1, dtype=F64)], dim=1)
        v = torch.randn(4, dtype=F64)
        gv = tl.flatten(model.operator.matvec(tl.unflatten(v, opt.params())))
        # linear model + MSE: the GGN is the Hessian 2/n [X 1]^T [X 1]
        assert torch.allclose(gv, 2.0 / 9 * design.T @ design @ v, rtol=0, atol=1e-12)
    assert opt.counters.hvps == 1 and opt.counters.hvp_samples == 9


def test_a_bad_ggn_closure_is_named():
    w, opt = _setup()
    with pytest.raises(ValueError, match="ggn_closure must return a CurvatureOperator, got Tensor"):
        local_model(opt, _quadratic(A, w), "gauss_newton", ggn_closure=lambda: torch.eye(3))
    other = HessianOperator(lambda ps: (ps[0] ** 2).sum() + (ps[1] ** 2).sum(),
                            [torch.ones(3, dtype=F64), torch.ones(1, dtype=F64)])
    with pytest.raises(ValueError, match="the GGN operator's params has 2 tensors but there "
                                         "are 1 parameters"):
        separate_operator(opt, "gauss_newton", ggn_closure=lambda: other)
    with pytest.raises(ValueError, match="from a separate batch needs hessian_closure"):
        separate_operator(opt, "hessian")


def test_low_precision_parameters_get_a_float32_model():
    # f = 0.5 sum(a w^2) with a, w exact in bfloat16: gradient a w, Hessian diag(a).
    a = torch.tensor([1.0, 2.0, 4.0], dtype=torch.bfloat16)
    w = torch.tensor([1.0, -1.0, 0.5], dtype=torch.bfloat16, requires_grad=True)
    opt = Probe([w], {})
    with local_model(opt, lambda: 0.5 * (a * w * w).sum(), "hessian") as model:
        assert isinstance(model.operator, WorkingPrecisionOperator)
        assert model.grads[0].dtype == torch.float32
        assert torch.equal(model.grads[0], torch.tensor([1.0, -2.0, 2.0]))
        (hv,) = model.operator.matvec((torch.tensor([1.0, 1.0, 1.0]),))
        assert hv.dtype == torch.float32 and torch.equal(hv, torch.tensor([1.0, 2.0, 4.0]))
        assert model.operator.num_products == 1  # attributes are the wrapped operator's


def test_working_precision_rounds_to_the_operator_dtype_not_the_parameters():
    fine = 1.0 + 2.0**-12  # exact in float32, 1.0 in bfloat16
    op32 = HessianOperator(lambda ps: 0.5 * (ps[0] ** 2).sum(), [torch.ones(2)])
    wrapped = WorkingPrecisionOperator(op32, [torch.ones(2, dtype=torch.bfloat16)])
    (out,) = wrapped.matvec((torch.full((2,), fine),))
    assert out.dtype == torch.float32 and torch.equal(out, torch.full((2,), fine))
    op16 = HessianOperator(lambda ps: 0.5 * (ps[0] ** 2).sum(),
                           [torch.ones(2, dtype=torch.bfloat16)])
    (out16,) = WorkingPrecisionOperator(op16, op16.params).matvec((torch.full((2,), fine),))
    assert out16.dtype == torch.float32 and torch.equal(out16, torch.ones(2))

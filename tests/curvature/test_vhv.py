"""v^T H v for every backend, including the bicomplex step of [Shen] eq. 11."""

from __future__ import annotations

import copy

import pytest
import torch
from nets import small_cnn, tanh_mlp
from torch import nn

from secondorder import tensorlist as tl
from secondorder.curvature.bicomplex import Bicomplex, bicomplex_vhv
from secondorder.curvature.functional import functional_loss
from secondorder.curvature.hvp import BACKENDS
from secondorder.curvature.vhv import vhv
from secondorder.errors import ComplexStepUnsupportedError

F64 = torch.float64


def _dense_vhv(loss_fn, params, vec):
    sizes = [p.numel() for p in params]

    def f(w):
        return loss_fn([c.view_as(p) for c, p in zip(w.split(sizes), params, strict=True)])

    H = torch.autograd.functional.hessian(f, tl.flatten([p.detach() for p in params]))
    v = tl.flatten(vec)
    return v @ H @ v


def _bn():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Linear(4, 6), nn.BatchNorm1d(6, track_running_stats=False), nn.ELU(),
        nn.Linear(6, 3), nn.Sigmoid(), nn.Linear(3, 1),
    )
    return model.train(), nn.MSELoss(), torch.randn(8, 4), torch.randn(8, 1)


def _bce():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Softplus(), nn.Linear(6, 1))
    return model, nn.BCEWithLogitsLoss(), torch.randn(8, 4), torch.rand(8, 1)


MAKERS = {"mlp": tanh_mlp, "cnn": small_cnn, "batchnorm": _bn, "bce-layernorm": _bce}


def _problem(make):
    model, crit, x, y = make()
    model = model.double()
    y = y.double() if y.is_floating_point() else y
    loss_fn, params = functional_loss(model, crit, x.double(), y)
    torch.manual_seed(10)
    return loss_fn, params, tuple(torch.randn_like(p) for p in params)


TOLERANCE = {"autograd": 1e-12, "forward": 1e-12, "complex-step": 1e-12,
             "finite-difference": 1e-5}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(MAKERS))
def test_vhv_matches_dense_hessian(name, backend):
    if backend == "forward" and name == "batchnorm":
        pytest.skip("torch 2.13's forward-over-reverse (torch.func and forward_ad alike) fails "
                    "through batch norm without running statistics: 'ZeroTensors are immutable'")
    loss_fn, params, vec = _problem(MAKERS[name])
    ref = _dense_vhv(loss_fn, params, vec)
    got = vhv(loss_fn, params, vec, backend=backend)
    assert got.dim() == 0 and got.dtype == F64
    assert abs(float(got - ref)) <= TOLERANCE[backend] * max(abs(float(ref)), 1e-3)


@pytest.mark.parametrize("h", [1.0, 0.1, 1e-5, 1e-20])
def test_bicomplex_is_exact_for_a_cubic(h):
    torch.manual_seed(7)
    A = torch.randn(4, 4, dtype=F64)
    c = torch.randn(4, dtype=F64)

    def loss_fn(ps):
        w = ps[0]
        return (w ** 3 * c).sum() + w @ A @ w - 2.0 * w.sum() + 0.5 * (w * w * w).sum() / 3.0

    w = torch.randn(4, dtype=F64)
    v = torch.randn(4, dtype=F64)
    # Hessian: diag(6 c w + w) + A + A^T
    exact = float(v @ (torch.diag(6 * c * w + w) + A + A.T) @ v)
    got = float(bicomplex_vhv(loss_fn, [w], [v], h=h))
    assert abs(got - exact) <= 1e-13 * abs(exact)


def test_bicomplex_truncation_is_second_order_and_vanishes_for_tiny_h():
    w = torch.tensor([0.3, -0.7], dtype=F64)
    v = torch.tensor([1.0, 2.0], dtype=F64)

    def f(ps):
        return (torch.exp(ps[0]) + torch.sin(ps[0]) + torch.cosh(ps[0]) + torch.log(ps[0] + 2)
                + torch.tanh(ps[0]) + torch.sqrt(ps[0] + 1)).sum()

    # d2/dt2 f(w + t v) = sum v^2 f''(w)
    w1 = w.clone().requires_grad_(True)
    exact = float(torch.autograd.functional.hessian(lambda x: f([x]), w1) @ v @ v)

    def err(h):
        return abs(float(bicomplex_vhv(f, [w], [v], h=h)) - exact) / abs(exact)

    e2, e3 = err(1e-2), err(1e-3)
    assert 1e-5 < e3 < 1e-4  # not a polynomial: O(h^2) truncation ...
    assert 90 < e2 / e3 < 110  # ... shrinking 100x per decade of h
    for h in (1e-8, 1e-20, 1e-100):  # ... and gone below rounding, with no cancellation
        assert err(h) <= 1e-14


def test_bicomplex_float32_against_float64_oracle():
    model, crit, x, y = tanh_mlp()
    f64, p64 = functional_loss(copy.deepcopy(model).double(), crit, x.double(), y)
    f32, p32 = functional_loss(model, crit, x, y)
    torch.manual_seed(12)
    v64 = tuple(torch.randn_like(p) for p in p64)
    ref = float(_dense_vhv(f64, p64, v64))
    got = vhv(f32, p32, tuple(v.float() for v in v64), backend="complex-step")
    assert got.dtype == torch.float32
    assert abs(float(got) - ref) <= 1e-4 * abs(ref)


def test_bicomplex_multiplication_is_bicomplex_algebra():
    x = Bicomplex(torch.tensor([1.0 + 2.0j], dtype=torch.complex128),
                  torch.tensor([3.0 - 1.0j], dtype=torch.complex128))
    y = Bicomplex(torch.tensor([-0.5 + 1.0j], dtype=torch.complex128),
                  torch.tensor([2.0 + 0.5j], dtype=torch.complex128))
    p = x * y
    # (a + b i2)(c + d i2) = (ac - bd) + (ad + bc) i2
    a, b, c, d = x.z1, x.z2, y.z1, y.z2
    assert torch.allclose(p.z1, a * c - b * d) and torch.allclose(p.z2, a * d + b * c)
    q = p / y
    assert torch.allclose(q.z1, x.z1) and torch.allclose(q.z2, x.z2)


class _SortNet(nn.Module):
    def forward(self, x):
        return torch.sort(x, dim=-1).values


def test_bicomplex_unsupported_op_names_op_and_module():
    model = nn.Sequential(nn.Linear(3, 4), _SortNet(), nn.Linear(4, 1)).double()
    loss_fn, params = functional_loss(model, nn.MSELoss(), torch.randn(4, 3, dtype=F64),
                                      torch.randn(4, 1, dtype=F64))
    vec = tuple(torch.ones_like(p) for p in params)
    with pytest.raises(ComplexStepUnsupportedError, match=r"op 'sort'.*module '1' \(_SortNet\)"):
        vhv(loss_fn, params, vec, backend="complex-step")


def test_vhv_bad_backend_and_step():
    loss_fn, params, vec = _problem(tanh_mlp)
    with pytest.raises(ValueError, match="Invalid HVP backend: 'bicomplex'"):
        vhv(loss_fn, params, vec, backend="bicomplex")
    with pytest.raises(ValueError, match="Invalid complex step: h=0.0"):
        vhv(loss_fn, params, vec, backend="complex-step", h=0.0)
    with pytest.raises(ValueError, match="vec has 2 tensors but there are 4"):
        vhv(loss_fn, params, vec[:2], backend="complex-step")
    with pytest.raises(ValueError, match="bicomplex parts differ in shape"):
        Bicomplex(torch.zeros(2, dtype=torch.complex128), torch.zeros(3, dtype=torch.complex128))


def test_floating_point_query_on_a_bicomplex_tensor_answers_without_recursion():
    """Regression: the structural rule asked the Bicomplex tensor itself, which dispatched
    back to the rule (RecursionError, e.g. under a TorchFunctionMode that inspects values)."""
    from secondorder.curvature.bicomplex import Bicomplex

    x = Bicomplex(torch.tensor([2.0 + 0.5j]), torch.tensor([0.5 + 0j]))
    assert torch.is_floating_point(x) is True
    assert x.is_floating_point() is True

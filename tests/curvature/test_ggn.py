"""Tests of the generalized Gauss-Newton operator against dense float64 oracles."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from secondorder import tensorlist as tl
from secondorder.curvature.functional import functional_loss
from secondorder.curvature.ggn import GGNOperator, ggnvp

DT = torch.float64


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)


def batch(seed: int = 0, classes: bool = True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 3, generator=g, dtype=DT)
    y = (
        torch.randint(0, 3, (5,), generator=g)
        if classes
        else torch.randn(5, 3, generator=g, dtype=DT)
    )
    return x, y


CRITERIA = {
    "cross_entropy": (nn.CrossEntropyLoss(), True),
    "mse": (nn.MSELoss(), False),
}


def dense_ggn(model, criterion, x, y):
    """J^T H_L J from torch.func.jacrev and torch.func.hessian, flattened."""
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach() for _, p in model.named_parameters())

    def out_fn(*ps):
        return torch.func.functional_call(model, dict(zip(names, ps, strict=True)), (x,))

    z = out_fn(*params)
    jac = torch.func.jacrev(out_fn, argnums=tuple(range(len(params))))(*params)
    J = torch.cat([j.reshape(z.numel(), -1) for j in jac], dim=1)
    H = torch.func.hessian(lambda out: criterion(out, y))(z).reshape(z.numel(), z.numel())
    return J.T @ H @ J


def dense_hessian(loss_fn, params):
    flat = tl.flatten(params).detach()
    return torch.func.hessian(lambda v: loss_fn(tl.unflatten(v, params)))(flat)


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_ggn_equals_dense_jt_h_j(name):
    criterion, classes = CRITERIA[name]
    model = mlp(1)
    x, y = batch(2, classes)
    G = GGNOperator.from_model(model, criterion, x, y)
    expected = dense_ggn(model, criterion, x, y)
    torch.testing.assert_close(G.to_dense(), expected, atol=1e-10, rtol=0)
    # and it differs from the Hessian (the second-order term of the network is dropped)
    loss_fn, params = functional_loss(model, criterion, x, y)
    H = dense_hessian(loss_fn, params)
    assert (H - expected).abs().max() > 1e-3
    # loss and gradient at the point
    torch.testing.assert_close(G.loss, criterion(model(x), y).detach())
    g = torch.autograd.grad(criterion(model(x), y), list(model.parameters()))
    torch.testing.assert_close(tl.flatten(G.gradient), tl.flatten(g), atol=1e-12, rtol=0)


def test_ggn_equals_hessian_for_linear_model_with_mse():
    torch.manual_seed(0)
    model = nn.Linear(4, 2).to(DT)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 4, generator=g, dtype=DT), torch.randn(7, 2, generator=g, dtype=DT)
    G = GGNOperator.from_model(model, nn.MSELoss(), x, y)
    loss_fn, params = functional_loss(model, nn.MSELoss(), x, y)
    H = dense_hessian(loss_fn, params)
    torch.testing.assert_close(G.to_dense(), H, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_ggn_is_positive_semidefinite(name):
    criterion, classes = CRITERIA[name]
    model = mlp(3)
    x, y = batch(4, classes)
    G = GGNOperator.from_model(model, criterion, x, y)
    g = torch.Generator().manual_seed(5)
    for _ in range(20):
        v = tuple(torch.randn(p.shape, generator=g, dtype=DT) for p in G.params)
        assert float(tl.dot(v, G.matvec(v))) >= -1e-12
    assert float(torch.linalg.eigvalsh(G.to_dense()).min()) >= -1e-10
    # the Hessian at the same point is indefinite, the GGN is not
    loss_fn, params = functional_loss(model, criterion, x, y)
    H = dense_hessian(loss_fn, params)
    assert float(torch.linalg.eigvalsh(H).min()) < -1e-6


def test_forward_runs_once_and_products_are_linear():
    model = mlp(0)
    x, y = batch(0)
    names = [n for n, _ in model.named_parameters()]
    calls = []

    def output_fn(ps):
        calls.append(1)
        return torch.func.functional_call(model, dict(zip(names, ps, strict=True)), (x,))

    params = tuple(p.detach() for p in model.parameters())
    G = GGNOperator(output_fn, lambda z: nn.functional.cross_entropy(z, y), params)
    g = torch.Generator().manual_seed(0)
    v = tuple(torch.randn(p.shape, generator=g, dtype=DT) for p in params)
    w = tuple(torch.randn(p.shape, generator=g, dtype=DT) for p in params)
    gv, gw, gvw = G.matvec(v), G.matvec(w), G.matvec(tl.add(v, w, 2.0))
    assert len(calls) == 1 and G.num_products == 3
    torch.testing.assert_close(
        tl.flatten(gvw), tl.flatten(gv) + 2 * tl.flatten(gw), atol=1e-12, rtol=0
    )
    # symmetric: w^T G v == v^T G w
    torch.testing.assert_close(tl.dot(w, gv), tl.dot(v, gw), atol=1e-12, rtol=0)
    # the free function agrees
    one = ggnvp(output_fn, lambda z: nn.functional.cross_entropy(z, y), params, v)
    torch.testing.assert_close(tl.flatten(one), tl.flatten(gv), atol=1e-14, rtol=0)
    G.free()
    with pytest.raises(RuntimeError, match="graph has been freed"):
        G.matvec(v)


def test_pieces_jvp_loss_hvp_vjp():
    X = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.5, -1.0]], dtype=DT)
    A = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 3.0]], dtype=DT)
    G = GGNOperator(lambda ps: X @ ps[0], lambda z: 0.5 * z @ A @ z, [torch.ones(2, dtype=DT)])
    v = torch.tensor([1.0, -2.0], dtype=DT)
    torch.testing.assert_close(G.jvp((v,)), X @ v)
    torch.testing.assert_close(G.loss_hvp(X @ v), A @ X @ v)
    torch.testing.assert_close(G.vjp(A @ X @ v)[0], X.T @ A @ X @ v)
    torch.testing.assert_close(G.to_dense(), X.T @ A @ X)
    # a loss linear in the outputs has H_L = 0
    Z = GGNOperator(lambda ps: X @ ps[0], lambda z: z.sum(), [torch.ones(2, dtype=DT)])
    assert float(Z.to_dense().abs().max()) == 0.0


def test_unused_and_frozen_parameters():
    model = mlp(0)
    model[0].weight.requires_grad_(False)
    x, y = batch(0)
    G = GGNOperator.from_model(model, nn.CrossEntropyLoss(), x, y)
    assert len(G.params) == 3  # the frozen weight is not a variable
    unused = torch.ones(2, dtype=DT)
    H = GGNOperator(
        lambda ps: ps[0] * 2.0, lambda z: (z**2).sum(), [torch.ones(3, dtype=DT), unused]
    )
    torch.testing.assert_close(H.to_dense()[:3, :3], 8.0 * torch.eye(3, dtype=DT))
    assert float(H.to_dense()[3:].abs().max()) == 0.0


def test_ggn_bad_inputs():
    p = [torch.ones(2, dtype=DT)]
    with pytest.raises(ValueError, match="output_fn must return a tensor"):
        GGNOperator(lambda ps: [ps[0]], lambda z: z.sum(), p)
    with pytest.raises(ValueError, match="the loss must be a scalar"):
        GGNOperator(lambda ps: ps[0], lambda z: z * 2, p)
    with pytest.raises(ValueError, match="params must be a sequence of tensors"):
        GGNOperator(lambda ps: ps[0], lambda z: z.sum(), torch.ones(2))
    with pytest.raises(ValueError, match=r"vec\[0\] has shape \(3,\)"):
        ggnvp(lambda ps: ps[0], lambda z: z.sum(), p, [torch.ones(3, dtype=DT)])
    frozen = nn.Linear(2, 1)
    frozen.requires_grad_(False)
    with pytest.raises(ValueError, match="Linear has no parameter that requires grad"):
        GGNOperator.from_model(frozen, nn.MSELoss(), torch.ones(1, 2), torch.ones(1, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = mlp(1)
    x, y = batch(2, True)
    expected = GGNOperator.from_model(model, nn.CrossEntropyLoss(), x, y).to_dense()
    G = GGNOperator.from_model(model.cuda(), nn.CrossEntropyLoss(), x.cuda(), y.cuda())
    dense = G.to_dense()
    assert dense.is_cuda
    torch.testing.assert_close(dense.cpu(), expected, atol=1e-12, rtol=0)


def test_from_model_never_changes_batch_norm_statistics():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    stats = {n: b.clone() for n, b in model.named_buffers()}
    op = GGNOperator.from_model(model, nn.CrossEntropyLoss(), x, y)
    op @ tuple(torch.ones_like(p) for p in op.params)
    assert all(torch.equal(b, stats[n]) for n, b in model.named_buffers())
    model(x)  # a plain training-mode forward does update them: the check has teeth
    assert not torch.equal(model[1].running_mean, stats["1.running_mean"])

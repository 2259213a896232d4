"""Adaptive norms: accumulators against seed 001 eqs. 2-3 by hand, operators against dense."""

import pytest
import torch

from secondorder import tensorlist as tl
from secondorder.optim.norms import (
    DiagonalNorm,
    FullMatrixNorm,
    SphericalNorm,
    accumulate_diagonal,
    make_norm,
)

D = torch.float64


def _grads(seed=0, t=3):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, 3, generator=gen, dtype=D), torch.randn(4, generator=gen, dtype=D))
            for _ in range(t)]


def test_rmsprop_diagonal_matches_eq3_by_hand():
    beta, eps = 0.7, 1e-3
    gs = _grads()
    norm = DiagonalNorm("rmsprop", beta=beta, epsilon=eps, power=0.5)
    for g in gs:
        norm.update(g)
    t = len(gs)
    flat = [tl.flatten(g) for g in gs]
    # eq. 3 diagonal: (1 - beta) sum_k beta^(t-k) g_k^2 + eps, k = 1..t
    expected = (1 - beta) * sum(beta ** (t - k) * flat[k - 1] ** 2 for k in range(1, t + 1)) + eps
    torch.testing.assert_close(tl.flatten(norm.diagonal()), expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(tl.flatten(norm.metric()), expected.sqrt(), rtol=1e-14, atol=0)
    assert norm.steps == 3


def test_adagrad_diagonal_matches_eq2_by_hand():
    eps = 1e-2
    gs = _grads(1)
    norm = DiagonalNorm("adagrad", epsilon=eps, power=1.0)
    for g in gs:
        norm.update(g)
    G = torch.stack([tl.flatten(g) for g in gs], dim=1)  # G_t = [g_1, ..., g_t]
    expected = torch.diagonal(G @ G.T) + eps  # diag(G G^T + eps I), eq. 2
    torch.testing.assert_close(tl.flatten(norm.diagonal()), expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(tl.flatten(norm.metric()), expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("rule", ["rmsprop", "adagrad"])
def test_full_matrix_matches_eqs_2_3_and_dense_powers(rule):
    beta, eps, power = 0.8, 1e-1, 0.5
    gs = _grads(2, t=4)
    norm = FullMatrixNorm(rule, beta=beta, epsilon=eps, power=power)
    for g in gs:
        norm.update(g)
    G = torch.stack([tl.flatten(g) for g in gs], dim=1)
    t = G.shape[1]
    if rule == "adagrad":
        A = G @ G.T
    else:  # (1 - beta) G diag(beta^(t-1), ..., beta^0) G^T
        w = torch.tensor([beta ** (t - k) for k in range(1, t + 1)], dtype=D)
        A = (1 - beta) * (G * w) @ G.T
    A = A + eps * torch.eye(A.shape[0], dtype=D)
    torch.testing.assert_close(norm.matrix(), A, rtol=1e-13, atol=1e-15)
    e, V = torch.linalg.eigh(A)
    M = (V * e**power) @ V.T
    v = _grads(3, t=1)[0]
    fv = tl.flatten(v)
    torch.testing.assert_close(tl.flatten(norm.solve(v)), torch.linalg.solve(M, fv), rtol=1e-10,
                               atol=1e-12)
    Minv_half = (V * e ** (-power / 2)) @ V.T
    torch.testing.assert_close(tl.flatten(norm.inv_sqrt(v)), Minv_half @ fv, rtol=1e-10,
                               atol=1e-12)
    torch.testing.assert_close(norm.norm(v), torch.sqrt(fv @ M @ fv), rtol=1e-12, atol=0)


def test_diagonal_operators_are_consistent():
    norm = DiagonalNorm("rmsprop", beta=0.9, epsilon=1e-4)
    g, v = _grads(4, t=2)
    norm.update(g)
    m = tl.flatten(norm.metric())
    fv = tl.flatten(v)
    torch.testing.assert_close(tl.flatten(norm.solve(v)), fv / m, rtol=1e-15, atol=0)
    torch.testing.assert_close(tl.flatten(norm.inv_sqrt(v)), fv / m.sqrt(), rtol=1e-15, atol=0)
    torch.testing.assert_close(norm.norm(v), torch.sqrt((m * fv * fv).sum()), rtol=1e-14, atol=0)
    # the transformed variables make the region a ball: ||M^{-1/2} u||_M = ||u||
    torch.testing.assert_close(norm.norm(norm.inv_sqrt(v)), tl.norm(v), rtol=1e-14, atol=0)


def test_spherical_is_identity():
    (v,) = _grads(5, t=1)
    n = SphericalNorm()
    assert n.metric() is None
    assert all(torch.equal(a, b) for a, b in zip(n.solve(v), v, strict=True))
    assert torch.equal(n.norm(v), tl.norm(v))


def test_state_dict_round_trip_continues_identically():
    gs = _grads(6, t=4)
    a = DiagonalNorm("rmsprop", beta=0.5)
    for g in gs[:2]:
        a.update(g)
    b = DiagonalNorm("rmsprop", beta=0.5)
    b.load_state_dict(a.state_dict())
    for g in gs[2:]:
        a.update(g)
        b.update(g)
    assert all(torch.equal(x, y) for x, y in zip(a.diagonal(), b.diagonal(), strict=True))
    assert b.steps == 4


def test_accumulate_does_not_modify_input():
    g = (torch.ones(3, dtype=D),)
    acc = accumulate_diagonal(None, g, "rmsprop", 0.9)
    before = acc[0].clone()
    accumulate_diagonal(acc, g, "rmsprop", 0.9)
    assert torch.equal(acc[0], before)


def test_errors():
    with pytest.raises(ValueError, match="Invalid beta value: 1.0"):
        DiagonalNorm("rmsprop", beta=1.0)
    with pytest.raises(ValueError, match="Invalid epsilon value: 0.0"):
        FullMatrixNorm("adagrad", epsilon=0.0)
    with pytest.raises(ValueError, match="Invalid power value: -1"):
        DiagonalNorm(power=-1)
    with pytest.raises(ValueError, match="Invalid accumulation rule: 'adam'"):
        DiagonalNorm("adam")
    with pytest.raises(ValueError, match="Invalid norm: 'ellipse'"):
        make_norm("ellipse")
    with pytest.raises(RuntimeError, match="no gradient yet"):
        DiagonalNorm().diagonal()
    with pytest.raises(RuntimeError, match="not diagonal"):
        FullMatrixNorm().metric()

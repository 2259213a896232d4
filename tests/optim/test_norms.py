"""Adaptive norms: accumulators against [AdaptiveNorms] eqs. 2-3 by hand, operators against
   dense."""

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


@pytest.mark.parametrize("normalize", [True, False])
def test_rmsprop_diagonal_matches_eq3_by_hand(normalize):
    beta, eps = 0.7, 1e-3
    gs = _grads()
    norm = DiagonalNorm("rmsprop", beta=beta, epsilon=eps, power=0.5, normalize=normalize)
    for g in gs:
        norm.update(g)
    t = len(gs)
    flat = [tl.flatten(g) for g in gs]
    # eq. 3 diagonal: (1 - beta) sum_k beta^(t-k) g_k^2 + eps, k = 1..t
    expected = (1 - beta) * sum(beta ** (t - k) * flat[k - 1] ** 2 for k in range(1, t + 1)) + eps
    torch.testing.assert_close(tl.flatten(norm.diagonal()), expected, rtol=1e-14, atol=0)
    m = expected.sqrt()  # M = A^{1/2}, [AdaptiveNorms] Corollary 1 ...
    if normalize:  # ... over its mean diagonal
        m = m / m.mean()
    torch.testing.assert_close(tl.flatten(norm.metric()), m, rtol=1e-14, atol=0)
    assert norm.steps == 3


@pytest.mark.parametrize("normalize", [True, False])
def test_adagrad_diagonal_matches_eq2_by_hand(normalize):
    eps = 1e-2
    gs = _grads(1)
    norm = DiagonalNorm("adagrad", epsilon=eps, power=1.0, normalize=normalize)
    for g in gs:
        norm.update(g)
    G = torch.stack([tl.flatten(g) for g in gs], dim=1)  # G_t = [g_1, ..., g_t]
    expected = torch.diagonal(G @ G.T) + eps  # diag(G G^T + eps I), eq. 2
    torch.testing.assert_close(tl.flatten(norm.diagonal()), expected, rtol=1e-14, atol=0)
    m = expected / expected.mean() if normalize else expected
    torch.testing.assert_close(tl.flatten(norm.metric()), m, rtol=1e-14, atol=0)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("rule", ["rmsprop", "adagrad"])
def test_full_matrix_matches_eqs_2_3_and_dense_powers(rule, normalize):
    beta, eps, power = 0.8, 1e-1, 0.5
    gs = _grads(2, t=4)
    norm = FullMatrixNorm(rule, beta=beta, epsilon=eps, power=power, normalize=normalize)
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
    if normalize:  # mean eigenvalue (= mean diagonal) 1
        c = torch.trace(M) / M.shape[0]
        M, e = M / c, e / c ** (1 / power)
        torch.testing.assert_close(torch.trace(M) / M.shape[0], torch.ones((), dtype=D))
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


def test_normalized_metric_is_scale_free():
    # A_t -> c^2 A_t (gradients times c, eps times c^2) leaves the normalized M unchanged;
    # the raw M = A^{1/2} scales by c.
    gs, c = _grads(7, t=3), 1e3
    for normalize in (True, False):
        a = DiagonalNorm("rmsprop", epsilon=1e-3, normalize=normalize)
        b = DiagonalNorm("rmsprop", epsilon=1e-3 * c * c, normalize=normalize)
        for g in gs:
            a.update(g)
            b.update(tl.scale(g, c))
        torch.testing.assert_close(tl.flatten(b.diagonal()), c * c * tl.flatten(a.diagonal()),
                                   rtol=1e-14, atol=0)
        factor = 1.0 if normalize else c
        torch.testing.assert_close(tl.flatten(b.metric()), factor * tl.flatten(a.metric()),
                                   rtol=1e-14, atol=0)
    full_a, full_b = FullMatrixNorm("adagrad", epsilon=1e-3), FullMatrixNorm("adagrad", epsilon=1e3)
    for g in gs:
        full_a.update(g)
        full_b.update(tl.scale(g, c))
    v = _grads(8, t=1)[0]
    torch.testing.assert_close(full_b.norm(v), full_a.norm(v), rtol=1e-12, atol=0)


def test_normalized_metric_of_isotropic_accumulator_is_identity():
    # A_t = a I (all squared gradients equal): M = I, the spherical region.
    g = (torch.tensor([[0.37, -0.37, 0.37], [-0.37, 0.37, 0.37]], dtype=D),
         torch.tensor([0.37, -0.37, -0.37, 0.37], dtype=D))
    (v,) = _grads(9, t=1)
    for norm in (DiagonalNorm("rmsprop"), DiagonalNorm("adagrad", power=1.0)):
        for _ in range(3):
            norm.update(g)
        torch.testing.assert_close(tl.flatten(norm.metric()), torch.ones(10, dtype=D),
                                   rtol=4e-16, atol=0)
        torch.testing.assert_close(norm.norm(v), tl.norm(v), rtol=1e-15, atol=0)
    full = FullMatrixNorm("rmsprop", epsilon=1.0)  # A = eps I before any outer product
    full.update(tl.scale(g, 0.0))
    torch.testing.assert_close(tl.flatten(full.inv_sqrt(v)), tl.flatten(v), rtol=1e-14,
                               atol=1e-15)


def test_normalized_first_steepest_step_has_euclidean_length_radius():
    # After one update M_i ~ |g_i| / mean|g|: the M-steepest-descent step -M^{-1} g scaled to
    # ||s||_M = radius is a sign step of Euclidean length radius (raw M ~ 0.3|g|: gradient
    # entries ~1e-2 as in a small MLP make it ~18 times longer).
    g = tl.scale(_grads(10, t=1)[0], 1e-2)
    radius = 0.7
    lengths = {}
    for normalize in (True, False):
        norm = DiagonalNorm("rmsprop", beta=0.9, epsilon=1e-24, normalize=normalize)
        norm.update(g)
        d = norm.solve(g)
        s = tl.scale(d, radius / float(norm.norm(d)))
        lengths[normalize] = float(tl.norm(s))
    assert lengths[True] == pytest.approx(radius, rel=1e-9)
    flat = tl.flatten(g)
    raw = radius * (flat.numel() / (flat.abs().sum() * 0.1**0.5)) ** 0.5  # sqrt(d / sum M_i)
    assert lengths[False] == pytest.approx(float(raw), rel=1e-9)
    assert lengths[False] > 10 * lengths[True]


def test_normalized_metric_stays_uniformly_equivalent():
    # [AdaptiveNorms] Def. 1 / Lemma 2: eps <= a_i <= L^2 + eps gives M_i in [(eps/(L^2+eps))^p, d].
    eps, power = 1e-6, 0.5
    norm = DiagonalNorm("rmsprop", epsilon=eps, power=power)
    g = (torch.cat([torch.zeros(9, dtype=D), torch.full((1,), 5.0, dtype=D)]),)
    for _ in range(20):
        norm.update(g)
    m = tl.flatten(norm.metric())
    big = float(tl.flatten(norm.diagonal()).max())
    assert float(m.min()) >= (eps / big) ** power * (1 - 1e-12)
    assert float(m.max()) <= 10 * (1 + 1e-12)
    assert float(m.mean()) == pytest.approx(1.0, rel=1e-14)


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
    with pytest.raises(ValueError, match="Invalid rule value: 'adam'"):
        DiagonalNorm("adam")
    with pytest.raises(ValueError, match="Invalid norm value: 'ellipse'"):
        make_norm("ellipse")
    with pytest.raises(RuntimeError, match="no gradient yet"):
        DiagonalNorm().diagonal()
    with pytest.raises(RuntimeError, match="not diagonal"):
        FullMatrixNorm().metric()

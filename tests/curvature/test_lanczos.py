"""Lanczos tridiagonalization against dense float64 eigen-decompositions."""

import pytest
import torch
from torch import nn

from secondorder import tensorlist as tl
from secondorder.curvature import HessianOperator, functional_loss
from secondorder.curvature.lanczos import lanczos

DT = torch.float64


def _sym(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=DT)
    return a + a.T


def _mv(a):
    return lambda v: (a @ v[0],)


def test_basis_orthonormal_and_tridiagonal_is_projection():
    a = _sym(30)
    v0 = (torch.randn(30, dtype=DT, generator=torch.Generator().manual_seed(1)),)
    res = lanczos(_mv(a), v0, 12)
    q = torch.stack([b[0] for b in res.basis], dim=1)
    assert res.num_steps == 12 and not res.breakdown
    torch.testing.assert_close(q.T @ q, torch.eye(12, dtype=DT), atol=1e-12, rtol=0)
    torch.testing.assert_close(q.T @ a @ q, res.tridiagonal(), atol=1e-10, rtol=0)
    # v0 = ||v0|| q_1
    torch.testing.assert_close(res.combine(torch.eye(12, dtype=DT)[0]), (v0[0] / res.v0_norm,))


def test_full_dimension_gives_exact_spectrum_and_breakdown():
    a = _sym(10, seed=3)
    res = lanczos(_mv(a), (torch.ones(10, dtype=DT),), 25)
    assert res.breakdown and res.num_steps == 10
    torch.testing.assert_close(
        torch.linalg.eigvalsh(res.tridiagonal()), torch.linalg.eigvalsh(a), atol=1e-10, rtol=0
    )


def test_early_breakdown_on_invariant_subspace():
    # v0 in the span of 2 eigenvectors: the Krylov space has dimension 2.
    a = torch.diag(torch.arange(1.0, 7.0, dtype=DT))
    v0 = (torch.tensor([1.0, 0, 0, 0, 0, 1.0], dtype=DT),)
    res = lanczos(_mv(a), v0, 6)
    assert res.breakdown and res.num_steps == 2
    torch.testing.assert_close(res.ritz()[0], torch.tensor([1.0, 6.0], dtype=DT))


def test_reorthogonalization_removes_ghost_eigenvalues():
    # A spectrum with well separated large eigenvalues: plain Lanczos loses orthogonality
    # after those converge and repeats them; full reorthogonalization keeps Q orthonormal.
    n = 200
    evals = torch.cat([torch.tensor([100.0, 90.0]), torch.linspace(0, 1, n - 2)]).to(DT)
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
    a = u @ torch.diag(evals) @ u.T
    v0 = (torch.randn(n, generator=g, dtype=DT),)
    plain = lanczos(_mv(a), v0, 60, reorthogonalize=False)
    full = lanczos(_mv(a), v0, 60)
    qf = torch.stack([b[0] for b in full.basis], 1)
    qp = torch.stack([b[0] for b in plain.basis], 1)
    assert (qf.T @ qf - torch.eye(60, dtype=DT)).abs().max() < 1e-12
    assert (qp.T @ qp - torch.eye(60, dtype=DT)).abs().max() > 1e-3
    near100 = lambda r: int(((r.ritz()[0] - 100.0).abs() < 1e-6).sum())  # noqa: E731
    assert near100(full) == 1 and near100(plain) >= 2


def test_top_ritz_values_match_mlp_hessian():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(DT)
    x, y = torch.randn(20, 4, dtype=DT), torch.randint(0, 3, (20,))
    loss_fn, params = functional_loss(model, nn.CrossEntropyLoss(), x, y)
    op = HessianOperator(loss_fn, params)
    dense = op.to_dense()
    v0 = tuple(torch.randn_like(p) for p in params)
    res = lanczos(op.matvec, v0, op.dim)
    top = torch.linalg.eigvalsh(dense)[-3:]
    torch.testing.assert_close(res.ritz()[0][-3:], top, rtol=1e-8, atol=0)


def test_lanczos_on_tuples_of_several_tensors():
    a = _sym(7, seed=5)

    def mv(v):
        x = torch.cat([v[0].reshape(-1), v[1]])
        y = a @ x
        return (y[:4].reshape(2, 2), y[4:])

    res = lanczos(mv, (torch.ones(2, 2, dtype=DT), torch.ones(3, dtype=DT)), 7)
    torch.testing.assert_close(
        torch.linalg.eigvalsh(res.tridiagonal()), torch.linalg.eigvalsh(a), atol=1e-10, rtol=0
    )
    assert tl.norm(res.basis[-1]).sub(1).abs() < 1e-12


def test_bad_inputs():
    v0 = (torch.ones(3, dtype=DT),)
    with pytest.raises(ValueError, match="Invalid num_steps: 0"):
        lanczos(lambda v: v, v0, 0)
    with pytest.raises(ValueError, match="v0 is zero"):
        lanczos(lambda v: v, (torch.zeros(3, dtype=DT),), 2)
    with pytest.raises(ValueError, match="tuple of tensors"):
        lanczos(lambda v: v, torch.ones(3), 2)
    res = lanczos(lambda v: v, v0, 1)
    with pytest.raises(ValueError, match=r"coeffs must have shape \(1,\)"):
        res.combine(torch.ones(2, dtype=DT))


def test_restart_continues_past_breakdown_to_the_whole_spectrum():
    # Eigenvalue 2 has multiplicity 3 and v0 misses eigenvalue 5: one Krylov space cannot
    # see them all; restarts in the orthogonal complement do.
    evals = torch.tensor([2.0, 2.0, 2.0, 5.0, -1.0, 0.0, 0.0], dtype=DT)
    u, _ = torch.linalg.qr(torch.randn(7, 7, generator=torch.Generator().manual_seed(2), dtype=DT))
    a = u @ torch.diag(evals) @ u.T
    v0 = (u[:, 0] + u[:, 4] + u[:, 5],)
    res = lanczos(_mv(a), v0, 20, restart=True, generator=torch.Generator().manual_seed(0))
    # Blocks: {2, -1, 0} from v0, then the distinct {2, 5, 0} of the complement, then 2.
    assert res.num_steps == 7 and res.block_starts == (0, 3, 6) and res.breakdown
    assert all(float(res.betas[b - 1]) == 0.0 for b in res.block_starts[1:])
    q = res.flat_basis
    torch.testing.assert_close(q @ q.T, torch.eye(7, dtype=DT), atol=1e-12, rtol=0)
    torch.testing.assert_close(res.ritz()[0], torch.sort(evals).values, atol=1e-12, rtol=0)
    # Without restart the same v0 stops at its 3-dimensional Krylov space.
    assert lanczos(_mv(a), v0, 20).num_steps == 3


def test_ritz_residuals_are_the_true_residuals_and_stop_ends_early():
    a = _sym(40, seed=6)
    v0 = (torch.randn(40, dtype=DT, generator=torch.Generator().manual_seed(3)),)
    seen = []

    def stop(partial):
        seen.append(partial.num_steps)
        return partial.num_steps == 9

    res = lanczos(_mv(a), v0, 30, stop=stop)
    assert res.num_steps == 9 and seen == list(range(1, 10)) and not res.breakdown
    theta, s = res.ritz()
    for i in range(9):
        y = res.combine(s[:, i])[0]
        true_r = torch.linalg.vector_norm(a @ y - theta[i] * y)
        torch.testing.assert_close(res.ritz_residuals(s)[i], true_r, atol=1e-10, rtol=1e-8)


def test_restart_needs_reorthogonalization():
    with pytest.raises(ValueError, match="restart=True needs reorthogonalize=True"):
        lanczos(_mv(_sym(3)), (torch.ones(3, dtype=DT),), 3, restart=True, reorthogonalize=False)

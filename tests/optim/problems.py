"""Shared optimization test problems with float64 oracles (keep this interface stable).

Each :class:`Problem` is a smooth loss of one flat float64 parameter vector, with a starting
point and, where known, the minimizer. ``scipy_minimize`` runs scipy.optimize on the same
function (numpy float64 <-> torch) so tests compare against scipy's iterates and ``nit``.

* :func:`logistic_regression`: L2-regularized logistic regression on scikit-learn's breast
  cancer data (standardized features, with intercept), seed 003 eq. 15-18 plus
  ``lam / 2 |w|^2``; ``per_sample`` gives the per-sample losses (regularizer included in
  each, so their mean is the loss).
* :func:`rosenbrock`: ``(a - x)^2 + b (y - x^2)^2`` (seed 003 eq. 6), a = 1, b = 100,
  from (-1.2, 1).
* :func:`quadratic`: ``x^T A x / 2 - b^T x`` with a random SPD ``A`` of known spectrum.
* :func:`digits_mlp`: a 64-32-10 tanh MLP on scikit-learn digits, with mini-batches;
  :func:`digits_minibatch_losses` trains it with an optimizer, checking every iterate is
  finite.
* :func:`assert_state_dict_lockstep`: torch's ``_test_state_dict`` pattern (an optimizer
  and its reloaded copy step in lockstep, bit for bit).
* :func:`split_quadratic`: :func:`quadratic` with its vector split into two tensors (two
  param groups), with the minimizer over the first tensor when the second is held fixed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch
from torch import Tensor, nn

__all__ = [
    "Problem",
    "SplitQuadratic",
    "assert_state_dict_lockstep",
    "digits_data",
    "digits_minibatch_losses",
    "digits_mlp",
    "logistic_regression",
    "minibatches",
    "quadratic",
    "rosenbrock",
    "scipy_minimize",
    "split_quadratic",
]


@dataclass
class Problem:
    """A loss of one flat float64 vector.

    Attributes:
        name: short name for test ids.
        loss: ``loss(x) -> 0-dim tensor``, differentiable in ``x``.
        x0: the starting point (1-D float64).
        solution: the minimizer when known in closed form (else None).
        per_sample: optional ``per_sample(x) -> 1-D tensor`` whose mean is ``loss(x)``.
    """

    name: str
    loss: Callable[[Tensor], Tensor]
    x0: Tensor
    solution: Tensor | None = None
    per_sample: Callable[[Tensor], Tensor] | None = None

    def param(self) -> Tensor:
        """A fresh leaf copy of ``x0`` that requires grad."""
        return self.x0.clone().requires_grad_(True)

    def fun_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Loss and gradient at a numpy point (for scipy)."""
        t = torch.as_tensor(x, dtype=torch.float64).requires_grad_(True)
        f = self.loss(t)
        (g,) = torch.autograd.grad(f, t)
        return float(f.detach()), g.numpy().copy()

    def hessp(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Hessian-vector product at a numpy point (for scipy's Newton-CG)."""
        t = torch.as_tensor(x, dtype=torch.float64).requires_grad_(True)
        (g,) = torch.autograd.grad(self.loss(t), t, create_graph=True)
        (hv,) = torch.autograd.grad(g, t, torch.as_tensor(v, dtype=torch.float64))
        return hv.numpy().copy()


def scipy_minimize(problem: Problem, method: str, **options) -> scipy.optimize.OptimizeResult:
    """``scipy.optimize.minimize`` on ``problem`` (with ``hessp`` for Newton-CG)."""
    kw = {"hessp": problem.hessp} if method == "Newton-CG" else {}
    return scipy.optimize.minimize(
        problem.fun_and_grad, problem.x0.numpy(), jac=True, method=method, options=options, **kw
    )


def logistic_regression(lam: float = 1e-2) -> Problem:
    """L2-regularized logistic regression on breast cancer (569 x 30, standardized)."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    Xt = torch.as_tensor(X, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.float64)
    n_feat = Xt.shape[1]

    def per_sample(x: Tensor) -> Tensor:
        w, b = x[:n_feat], x[n_feat]
        z = Xt @ w + b
        bce = torch.nn.functional.binary_cross_entropy_with_logits(z, yt, reduction="none")
        return bce + 0.5 * lam * (w * w).sum()

    def loss(x: Tensor) -> Tensor:
        return per_sample(x).mean()

    return Problem("logistic", loss, torch.zeros(n_feat + 1, dtype=torch.float64), None, per_sample)


def rosenbrock(a: float = 1.0, b: float = 100.0) -> Problem:
    """The Rosenbrock function (seed 003 eq. 6), minimizer (a, a^2)."""

    def loss(x: Tensor) -> Tensor:
        return (a - x[0]) ** 2 + b * (x[1] - x[0] ** 2) ** 2

    x0 = torch.tensor([-1.2, 1.0], dtype=torch.float64)
    return Problem("rosenbrock", loss, x0, torch.tensor([a, a * a], dtype=torch.float64))


def quadratic(n: int = 20, cond: float = 100.0, seed: int = 0) -> Problem:
    """``x^T A x / 2 - b^T x``, ``A`` SPD with eigenvalues log-spaced in ``[1, cond]``."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    eig = torch.logspace(0, float(np.log10(cond)), n, dtype=torch.float64)
    A = (q * eig) @ q.T
    A = 0.5 * (A + A.T)
    bvec = torch.randn(n, generator=gen, dtype=torch.float64)

    def loss(x: Tensor) -> Tensor:
        return 0.5 * x @ (A @ x) - bvec @ x

    p = Problem("quadratic", loss, torch.zeros(n, dtype=torch.float64), torch.linalg.solve(A, bvec))
    p.A, p.b = A, bvec  # type: ignore[attr-defined]
    return p


def digits_data(dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """scikit-learn digits (1797 x 64 scaled to [0, 1]) and integer labels."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return torch.as_tensor(X / 16.0, dtype=dtype), torch.as_tensor(y, dtype=torch.long)


def digits_mlp(seed: int = 0, hidden: int = 32, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A 64-hidden-10 tanh MLP with deterministic initialization."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10)).to(dtype)


def minibatches(n: int, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Index batches of one shuffled epoch (the last partial batch dropped)."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    for i in range(0, n - batch_size + 1, batch_size):
        yield perm[i : i + batch_size]


def digits_minibatch_losses(
    make_optimizer: Callable[[Iterable[Tensor]], torch.optim.Optimizer],
    epochs: int,
    batch_size: int,
    seeds: Iterable[int] = (0, 1, 2),
) -> list[float]:
    """Train :func:`digits_mlp` (float64) on digits mini-batches, one run per seed.

    Epoch ``e`` of seed ``s`` visits :func:`minibatches` with shuffle seed ``10 s + e``; after
    every step all parameters must be finite (asserted).

    Returns:
        Each seed's final cross-entropy on all 1797 samples.
    """
    X, y = digits_data(torch.float64)
    ce = nn.functional.cross_entropy
    finals = []
    for seed in seeds:
        model = digits_mlp(seed, dtype=torch.float64)
        opt = make_optimizer(model.parameters())
        for epoch in range(epochs):
            for idx in minibatches(len(X), batch_size, seed * 10 + epoch):
                opt.step(lambda i=idx, m=model: ce(m(X[i]), y[i]))
                assert all(bool(torch.isfinite(q).all()) for q in model.parameters())
        with torch.no_grad():
            finals.append(float(ce(model(X), y)))
    return finals


def assert_state_dict_lockstep(
    make_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer],
    problem: Problem,
    warmup: int,
    steps: int,
) -> None:
    """Step ``warmup`` times, reload the state into a fresh optimizer, then step both in lockstep.

    The reloaded optimizer starts from a copy of the point and a deep copy of
    ``state_dict()``; the two iterates must stay bit-identical for ``steps`` steps.
    """
    x1 = problem.param()
    o1 = make_optimizer([x1])
    for _ in range(warmup):
        o1.step(lambda: problem.loss(x1))
    x2 = x1.detach().clone().requires_grad_(True)
    o2 = make_optimizer([x2])
    o2.load_state_dict(copy.deepcopy(o1.state_dict()))
    for _ in range(steps):
        o1.step(lambda: problem.loss(x1))
        o2.step(lambda: problem.loss(x2))
        assert torch.equal(x1, x2)


@dataclass
class SplitQuadratic:
    """``x^T A x / 2 - b^T x`` over ``x = (u, v)``, ``u`` the first ``k`` entries.

    Attributes:
        A: the SPD matrix.
        b: the linear term.
        k: the size of ``u``.
        u0: the start of ``u``.
        v0: the start of ``v``.
    """

    A: Tensor
    b: Tensor
    k: int
    u0: Tensor
    v0: Tensor

    def params(self) -> tuple[Tensor, Tensor]:
        """Fresh leaf copies of ``(u0, v0)`` that require grad."""
        return self.u0.clone().requires_grad_(True), self.v0.clone().requires_grad_(True)

    def loss(self, u: Tensor, v: Tensor) -> Tensor:
        x = torch.cat([u, v])
        return 0.5 * x @ (self.A @ x) - self.b @ x

    def grad(self, x: Tensor) -> Tensor:
        """The gradient ``A x - b`` at the concatenated point."""
        return self.A @ x - self.b

    def conditional_minimizer(self, v: Tensor) -> Tensor:
        """``argmin_u f(u, v)`` = ``A_uu^{-1} (b_u - A_uv v)``."""
        k = self.k
        return torch.linalg.solve(self.A[:k, :k], self.b[:k] - self.A[:k, k:] @ v)


def split_quadratic(n: int = 6, k: int = 4, cond: float = 10.0, seed: int = 0) -> SplitQuadratic:
    """:func:`quadratic` split into ``u`` (first ``k`` entries) and ``v``, from a random start."""
    p = quadratic(n=n, cond=cond, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x0 = torch.randn(n, generator=gen, dtype=torch.float64)
    return SplitQuadratic(p.A, p.b, k, x0[:k].clone(), x0[k:].clone())  # type: ignore[attr-defined]

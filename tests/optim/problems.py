"""Shared optimization test problems with float64 oracles (keep this interface stable).

Each :class:`Problem` is a smooth loss of one flat float64 parameter vector, with a starting
point and, where known, the minimizer. ``scipy_minimize`` runs scipy.optimize on the same
function (numpy float64 <-> torch) so tests compare against scipy's iterates and ``nit``.

* :func:`logistic_regression`: L2-regularized logistic regression on scikit-learn's breast
  cancer data (standardized features, with intercept), [Veitch] eq. 15-18 plus
  ``lam / 2 |w|^2``; ``per_sample`` gives the per-sample losses (regularizer included in
  each, so their mean is the loss).
* :func:`rosenbrock`: ``(a - x)^2 + b (y - x^2)^2`` ([Veitch] eq. 6), a = 1, b = 100,
  from (-1.2, 1).
* :func:`quadratic`: ``x^T A x / 2 - b^T x`` with a random SPD ``A`` of known spectrum.
* :func:`digits_mlp`: a 64-32-10 tanh MLP on scikit-learn digits, with mini-batches;
  :func:`digits_minibatch_losses` trains it with an optimizer, checking every iterate is
  finite.
* :func:`assert_state_dict_lockstep`: torch's ``_test_state_dict`` pattern (an optimizer
  and its reloaded copy step in lockstep, bit for bit).
* :func:`split_quadratic`: :func:`quadratic` with its vector split into two tensors (two
  param groups), with the minimizer over the first tensor when the second is held fixed.
* :class:`DenseOperator`: ``v -> A v`` on one-tensor tuples (a curvature operator stand-in).
* :func:`live_tensors` / :func:`assert_no_tensor_growth`: graphs are freed, no growth over
  many steps.
* :func:`digits_subset_loss`: a 64-16-10 MLP on the first 600 digits, batches of 100.
* :func:`tanh_mlp_acceptance`: accepted flags and final loss of a model-based optimizer on a
  small full-batch tanh MLP.
* :func:`steps_with_rejections`: steps a model-based optimizer on a :class:`Problem`,
  asserting that every rejected step leaves the point bit-identical.
* :func:`assert_hyperparameter_agrees`: an optimizer with one global state rejects param
  groups that differ in a hyperparameter (in ``__init__``, ``add_param_group`` and ``step``).
"""

from __future__ import annotations

import copy
import gc
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.optimize
import torch
from torch import Tensor, nn

__all__ = [
    "DenseOperator",
    "Problem",
    "SplitQuadratic",
    "assert_hyperparameter_agrees",
    "assert_no_tensor_growth",
    "assert_state_dict_lockstep",
    "digits_data",
    "digits_minibatch_losses",
    "digits_mlp",
    "digits_subset_loss",
    "live_tensors",
    "logistic_regression",
    "minibatches",
    "quadratic",
    "rosenbrock",
    "scipy_minimize",
    "split_quadratic",
    "steps_with_rejections",
    "tanh_mlp_acceptance",
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
    """The Rosenbrock function ([Veitch] eq. 6), minimizer (a, a^2)."""

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


class DenseOperator:
    """``v -> (A v[0],)``: a dense matrix as a curvature operator on one-tensor tuples."""

    def __init__(self, A: Tensor):
        self.A = A

    def matvec(self, v):
        return (self.A @ v[0],)


def live_tensors() -> int:
    """Number of tensors the garbage collector can see (after a collection)."""
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def assert_no_tensor_growth(step: Callable[[], Tensor], warmup: int = 5, steps: int = 50) -> None:
    """Call ``step`` ``warmup`` times, then ``steps`` times: no more live tensors than before,
    and the returned loss carries no graph."""
    for _ in range(warmup):
        loss = step()
    before = live_tensors()
    for _ in range(steps):
        loss = step()
    assert loss.grad_fn is None and not loss.requires_grad
    assert live_tensors() <= before


def digits_subset_loss(
    make_optimizer: Callable[[Iterable[Tensor]], torch.optim.Optimizer],
    seed: int,
    epochs: int,
    step: Callable[[torch.optim.Optimizer, Callable[[], Tensor], Callable[[], Tensor]], object]
    | None = None,
) -> float:
    """Train ``digits_mlp(seed, hidden=16)`` (float64) on the first 600 digits.

    Batches of 100 from :func:`minibatches` with shuffle seed ``10 seed + epoch``.
    ``step(optimizer, batch_closure, full_closure)`` takes one step (default:
    ``optimizer.step(batch_closure)``).

    Returns:
        The final cross-entropy on the 600 samples (asserted finite).
    """
    X, y = digits_data(torch.float64)
    X, y = X[:600], y[:600]
    model = digits_mlp(seed, hidden=16, dtype=torch.float64)
    crit = nn.CrossEntropyLoss()
    opt = make_optimizer(model.parameters())
    for epoch in range(epochs):
        for idx in minibatches(len(X), 100, seed * 10 + epoch):
            batch = lambda idx=idx: crit(model(X[idx]), y[idx])  # noqa: E731
            if step is None:
                opt.step(batch)
            else:
                step(opt, batch, lambda: crit(model(X), y))
    with torch.no_grad():
        final = float(crit(model(X), y))
    assert math.isfinite(final)
    return final


def tanh_mlp_acceptance(
    make_optimizer: Callable[[Iterable[Tensor]], torch.optim.Optimizer], steps: int = 10
) -> tuple[list[bool], float]:
    """Full-batch 5-7-3 tanh MLP on 64 random points (loss 1.0976 at the start).

    Returns:
        ``state["global"]["accepted"]`` after each step, and the final loss.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(torch.float64)
    opt = make_optimizer(model.parameters())

    def closure():
        return nn.functional.cross_entropy(model(x), y)

    accepted = []
    for _ in range(steps):
        opt.step(closure)
        accepted.append(opt.state["global"]["accepted"])
    with torch.no_grad():
        return accepted, float(closure())


def steps_with_rejections(
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    loss: Callable[[Tensor], Tensor],
    steps: int,
    stop: Callable[[Tensor], bool] | None = None,
) -> int:
    """Step ``optimizer`` on ``loss(x)`` up to ``steps`` times (until ``stop(x)``), asserting
    that each step with ``state["global"]["accepted"]`` false left ``x`` bit-identical.

    Returns:
        The number of rejected steps.
    """
    rejected = 0
    for _ in range(steps):
        before = x.detach().clone()
        optimizer.step(lambda: loss(x))
        if not optimizer.state["global"]["accepted"]:
            rejected += 1
            assert torch.equal(x.detach(), before)
        if stop is not None and stop(x.detach()):
            break
    return rejected


def assert_hyperparameter_agrees(
    make_optimizer: Callable[[list], torch.optim.Optimizer], key: str, value: object, owner: str
) -> None:
    """Groups differing in ``key`` are refused with ``ValueError`` naming it and ``owner``.

    Checked in the constructor (two groups), in ``add_param_group`` (the group is not
    added) and at ``step`` after ``param_groups[1][key]`` is rewritten (nothing moves).
    """
    match = rf"{key} differs between param groups: .*{owner} keeps one global state"
    a = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match=match):
        make_optimizer([{"params": [a]}, {"params": [b], key: value}])
    opt = make_optimizer([a])
    with pytest.raises(ValueError, match=match):
        opt.add_param_group({"params": [b], key: value})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [b]})
    opt.param_groups[1][key] = value
    with pytest.raises(ValueError, match=match):
        opt.step(lambda: torch.cat([(a - 1) ** 2, (b + 1) ** 2]))
    assert not a.detach().any() and not b.detach().any()

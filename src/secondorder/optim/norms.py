"""Adaptive norms ``||s||_M`` for trust-region and cubic-regularization steps ([AdaptiveNorms]).

[AdaptiveNorms] (Sec. 3) reads adaptive gradient methods as first-order trust-region methods whose
region is an ellipsoid shaped by their preconditioner, and uses the same ellipsoids as the
constraint of second-order trust-region steps ([AdaptiveNorms] eq. 7, Alg. 1 line 5). The
preconditioning matrices are

- Adagrad, [AdaptiveNorms] eq. 2: ``A_ada,t = G_t G_t^T + eps I = sum_{k<=t} g_k g_k^T + eps I``;
- RMSProp, [AdaptiveNorms] eq. 3: ``A_rms,t = (1 - beta) sum_{k<=t} beta^(t-k) g_k g_k^T + eps I``,
  i.e. the running average ``V_t = beta V_{t-1} + (1 - beta) g_t g_t^T`` (``V_0 = 0``) plus
  ``eps I``;

and their diagonals (what is used in practice). Corollary 1 of [AdaptiveNorms] shows that the
RMSProp step ``-eta A^{-1/2} g`` minimizes the linear model in the ellipsoid of
``A^{1/2}``, so the norm of the region is ``||s||_M = sqrt(s^T M s)`` with ``M = A_t^{1/2}``
by default (``power=0.5``; ``power=1`` uses ``A_t`` itself).

Scale of the metric (``normalize``, on by default). The seed's argument is about the *shape*
of the ellipsoid: in eqs. 5-6 (Corollary 1) the implicit radius is
``eta_t ||g_t||_{A_t^{-1/2}}``, so any overall factor ``c`` in ``M -> c M`` is absorbed by the
radius (``||s||_{cM} <= Delta`` is ``||s||_M <= Delta / sqrt(c)``), and an ARC weight ``sigma``
likewise becomes ``sigma c^{3/2}``. The raw scale of ``A_t^{1/2}`` is that of the gradients,
and with ``V_0 = 0`` the RMSProp average of eq. 3 starts at ``V_1 = (1 - beta) g_1^2``: on a
66-parameter tanh MLP (``|g_i| ~ 1e-2``) ``M = A_1^{1/2} ~ 0.3 |g|`` has mean 3.6e-3, so the
``M``-ball of radius 1 reaches about 20 Euclidean units along a typical axis, and Algorithm 1
(or ARC with ``sigma = 1``) rejects step after step until the radius has halved (``sigma``
doubled) often enough -- ten rejections for ARC. With ``normalize=True`` the norms use
``M = A_t^power / (tr(A_t^power) / d)``, whose mean diagonal (mean eigenvalue) is 1: the shape
is the seed's, the radius keeps its Euclidean meaning (averaged over directions,
``E ||u||_M^2 = ||u||^2``; after the first update of a diagonal ``A^{1/2}`` norm, with ``eps``
negligible, the ``M``-steepest-descent step ``-M^{-1} g`` scaled to the boundary is a sign step
of Euclidean length ``Delta``), and ``A_t = c I`` gives ``M = I``, the spherical region (up
to rounding). Adam's bias correction (dividing ``V_t`` by ``1 - beta^t``) would not help: it
is a scalar too, so it changes the shape only through the relative size of ``eps``, and it
leaves the scale tied to the gradients. Uniform equivalence ([AdaptiveNorms] Def. 1, Lemma 2) is
kept: with ``eps <= a_i <= L^2 + eps`` the normalized eigenvalues lie in
``[(eps / (L^2 + eps))^power, d]``. :meth:`AdaptiveNorm.diagonal` / :meth:`AdaptiveNorm.matrix`
still return the seed's ``A_t`` itself (eqs. 2-3); ``normalize=False`` restores the raw
``M = A_t^power``.

Each norm is a small strategy object: :meth:`AdaptiveNorm.update` adds a gradient to the
accumulator; :meth:`AdaptiveNorm.diagonal` / :meth:`AdaptiveNorm.matrix` give ``A_t``;
the trust-region and ARC solvers use :meth:`AdaptiveNorm.metric` (the diagonal of ``M``,
for :func:`~secondorder.optim.krylov.steihaug_cg`), :meth:`AdaptiveNorm.solve`
(``M^{-1} v``), :meth:`AdaptiveNorm.inv_sqrt` (``M^{-1/2} v``, the change of variables
``s = M^{-1/2} u`` that makes the region a ball) and :meth:`AdaptiveNorm.norm`. The
accumulator lives in :meth:`AdaptiveNorm.state_dict` so the optimizers can keep it in their
``state["global"]``.

The full-matrix variants store a ``d x d`` matrix and take an eigendecomposition after
each update: they are meant for small models ([AdaptiveNorms] Sec. 3.2, Fig. 1 right).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.optim import hyperparameters as hyper
from secondorder.tensorlist import TensorList

NORMS = ("spherical", "rmsprop", "adagrad", "full_rmsprop", "full_adagrad")

__all__ = [
    "NORMS",
    "AdaptiveNorm",
    "DiagonalNorm",
    "FullMatrixNorm",
    "SphericalNorm",
    "accumulate_diagonal",
    "accumulate_matrix",
    "make_norm",
    "norm_of_group",
]


def accumulate_diagonal(acc: TensorList | None, grad: Sequence[Tensor], rule: str, beta: float):
    """One update of the diagonal accumulator ([AdaptiveNorms] eqs. 2-3, diagonal part).

    Args:
        acc: the previous accumulator (``None`` for ``V_0 = 0``).
        grad: the gradient ``g_t``.
        rule: ``"adagrad"`` (``V_t = V_{t-1} + g_t^2``) or ``"rmsprop"``
            (``V_t = beta V_{t-1} + (1 - beta) g_t^2``).
        beta: the RMSProp decay (ignored for Adagrad).

    Returns:
        The new accumulator (new tensors; ``acc`` is not modified).
    """
    sq = tl.mul(grad, grad)
    if acc is None:
        return sq if rule == "adagrad" else tl.scale(sq, 1.0 - beta)
    if rule == "adagrad":
        return tl.add(acc, sq)
    return tl.add(tl.scale(acc, beta), sq, 1.0 - beta)


def accumulate_matrix(acc: Tensor | None, grad: Sequence[Tensor], rule: str, beta: float) -> Tensor:
    """One update of the full ``d x d`` accumulator ([AdaptiveNorms] eqs. 2-3).

    Same rules as :func:`accumulate_diagonal` with ``g_t g_t^T`` in place of ``g_t^2``.
    """
    g = tl.flatten(grad)
    outer = torch.outer(g, g)
    if acc is None:
        return outer if rule == "adagrad" else (1.0 - beta) * outer
    if rule == "adagrad":
        return acc + outer
    return beta * acc + (1.0 - beta) * outer


class AdaptiveNorm:
    """Strategy interface: the norm ``||s||_M`` of a trust region or cubic regularizer.

    Attributes:
        name: the norm's name (one of :data:`NORMS`, or a custom one).
        is_diagonal: ``M`` is diagonal (``metric()`` is usable).
    """

    name = "abstract"
    is_diagonal = True

    def update(self, grad: Sequence[Tensor]) -> None:
        """Add the gradient ``g_t`` to the accumulator (before solving step ``t``)."""

    def metric(self) -> TensorList | None:
        """The diagonal of ``M`` (``None`` for the Euclidean norm)."""
        raise NotImplementedError

    def solve(self, vec: Sequence[Tensor]) -> TensorList:
        """``M^{-1} vec``."""
        raise NotImplementedError

    def inv_sqrt(self, vec: Sequence[Tensor]) -> TensorList:
        """``M^{-1/2} vec``."""
        raise NotImplementedError

    def norm(self, vec: Sequence[Tensor]) -> Tensor:
        """``||vec||_M = sqrt(vec^T M vec)`` (0-dim tensor)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The accumulator and step count (tensors are not copied)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class SphericalNorm(AdaptiveNorm):
    """The Euclidean norm, ``M = I`` (the usual spherical trust region)."""

    name = "spherical"

    def metric(self) -> None:
        return None

    def solve(self, vec: Sequence[Tensor]) -> TensorList:
        return tuple(vec)

    def inv_sqrt(self, vec: Sequence[Tensor]) -> TensorList:
        return tuple(vec)

    def norm(self, vec: Sequence[Tensor]) -> Tensor:
        return tl.norm(vec)


def _check_common(rule: str, beta: float, epsilon: float, power: float) -> None:
    hyper.one_of(("rmsprop", "adagrad"))("rule", rule)
    hyper.in_range(0, 1)("beta", beta)
    hyper.positive("epsilon", epsilon)
    hyper.positive("power", power)


class DiagonalNorm(AdaptiveNorm):
    """``M = diag(A_t)^power`` with ``A_t`` the Adagrad or RMSProp matrix ([AdaptiveNorms] eqs.
       2-3).

    Args:
        rule: ``"rmsprop"`` (eq. 3) or ``"adagrad"`` (eq. 2).
        beta: RMSProp decay in (0, 1).
        epsilon: ``eps > 0`` added to the accumulator (keeps the norms uniformly
            equivalent, [AdaptiveNorms] Def. 1 and Lemma 2).
        power: ``M = A_t^power``; 0.5 is the ellipsoid of [AdaptiveNorms] Corollary 1.
        normalize: divide ``A_t^power`` by its mean diagonal, so ``M`` has mean diagonal 1
            (scale-free shape; see the module docstring). ``False``: ``M = A_t^power``.

    Raises:
        ValueError: if ``rule``, ``beta``, ``epsilon`` or ``power`` is out of range.

    Example:
        >>> norm = DiagonalNorm("adagrad", epsilon=1.0, power=1.0)
        >>> norm.update((torch.tensor([1.0, 2.0]),))
        >>> norm.diagonal()  # A_t of eq. 2: g^2 + eps
        (tensor([2., 5.]),)
        >>> norm.metric()  # A_t / mean(diag A_t) = [2, 5] / 3.5
        (tensor([0.5714, 1.4286]),)
    """

    def __init__(self, rule: str = "rmsprop", beta: float = 0.9, epsilon: float = 1e-8,
                 power: float = 0.5, normalize: bool = True):
        _check_common(rule, beta, epsilon, power)
        self.name = rule
        self.rule, self.beta, self.epsilon, self.power = rule, beta, epsilon, power
        self.normalize = bool(normalize)
        self.accumulator: TensorList | None = None
        self.steps = 0
        self._cache: tuple[Any, TensorList] | None = None

    def update(self, grad: Sequence[Tensor]) -> None:
        self.accumulator = accumulate_diagonal(
            self.accumulator, tuple(g.detach() for g in grad), self.rule, self.beta
        )
        self.steps += 1

    def diagonal(self) -> TensorList:
        """The diagonal of ``A_t`` (eq. 2 or 3), accumulator plus ``epsilon``.

        Raises:
            RuntimeError: before the first :meth:`update`.
        """
        if self.accumulator is None:
            raise RuntimeError("the norm has seen no gradient yet: call update(grad) first")
        return tuple(a + self.epsilon for a in self.accumulator)

    def matrix(self) -> Tensor:
        """``diag(A_t)`` as a dense ``d x d`` matrix."""
        return torch.diag(tl.flatten(self.diagonal()))

    def metric(self) -> TensorList:
        """The diagonal of ``M = diag(A_t)^power``, divided by its mean if ``normalize``
        (cached until the next update)."""
        if self._cache is None or self._cache[0] is not self.accumulator:
            m = tuple(torch.pow(a, self.power) for a in self.diagonal())
            if self.normalize:
                # one scalar, kept on the device: sum over all entries / d
                total = torch.stack([x.sum() for x in m]).sum()
                count = sum(x.numel() for x in m)
                m = tuple(torch._foreach_div(list(m), total / count))
            self._cache = (self.accumulator, m)
        return self._cache[1]

    def solve(self, vec: Sequence[Tensor]) -> TensorList:
        return tuple(torch._foreach_div(list(vec), list(self.metric())))

    def inv_sqrt(self, vec: Sequence[Tensor]) -> TensorList:
        return tuple(v * torch.rsqrt(m) for v, m in zip(vec, self.metric(), strict=True))

    def norm(self, vec: Sequence[Tensor]) -> Tensor:
        return torch.sqrt(tl.dot(vec, tl.mul(self.metric(), vec)))

    def state_dict(self) -> dict[str, Any]:
        return {"accumulator": self.accumulator, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        acc = state.get("accumulator")
        self.accumulator = None if acc is None else tuple(acc)
        self.steps = int(state.get("steps", 0))


class FullMatrixNorm(AdaptiveNorm):
    """``M = A_t^power`` with the full Adagrad or RMSProp matrix ([AdaptiveNorms] eqs. 2-3).

    Stores a ``d x d`` matrix and takes one symmetric eigendecomposition per update
    (``O(d^3)``): for small models only ([AdaptiveNorms] Sec. 3.2, Fig. 1 right).

    Args:
        rule: ``"rmsprop"`` (eq. 3) or ``"adagrad"`` (eq. 2).
        beta: RMSProp decay in (0, 1).
        epsilon: ``eps > 0`` added to the diagonal.
        power: ``M = A_t^power``.
        normalize: divide ``A_t^power`` by ``tr(A_t^power) / d`` (mean eigenvalue 1; see the
            module docstring). ``False``: ``M = A_t^power``.

    Raises:
        ValueError: if ``rule``, ``beta``, ``epsilon`` or ``power`` is out of range.
    """

    is_diagonal = False

    def __init__(self, rule: str = "rmsprop", beta: float = 0.9, epsilon: float = 1e-8,
                 power: float = 0.5, normalize: bool = True):
        _check_common(rule, beta, epsilon, power)
        self.name = "full_" + rule
        self.rule, self.beta, self.epsilon, self.power = rule, beta, epsilon, power
        self.normalize = bool(normalize)
        self.accumulator: Tensor | None = None
        self.steps = 0
        self._like: TensorList | None = None
        self._cache: tuple[Any, Tensor, Tensor] | None = None

    def update(self, grad: Sequence[Tensor]) -> None:
        grad = tuple(g.detach() for g in grad)
        self._like = grad
        self.accumulator = accumulate_matrix(self.accumulator, grad, self.rule, self.beta)
        self.steps += 1

    def matrix(self) -> Tensor:
        """``A_t`` (eq. 2 or 3) as a dense ``d x d`` matrix.

        Raises:
            RuntimeError: before the first :meth:`update`.
        """
        if self.accumulator is None:
            raise RuntimeError("the norm has seen no gradient yet: call update(grad) first")
        eye = torch.eye(self.accumulator.shape[0], dtype=self.accumulator.dtype,
                        device=self.accumulator.device)
        return self.accumulator + self.epsilon * eye

    def diagonal(self) -> Tensor:
        """The diagonal of ``A_t`` as a flat tensor."""
        return torch.diagonal(self.matrix())

    def _eig(self) -> tuple[Tensor, Tensor]:
        """Eigenvalues of ``M`` (normalized if asked) and the eigenvectors of ``A_t``."""
        if self._cache is None or self._cache[0] is not self.accumulator:
            evals, evecs = torch.linalg.eigh(self.matrix())
            # A_t >= eps I in exact arithmetic; clamp the rounding below it.
            mvals = torch.pow(torch.clamp(evals, min=self.epsilon), self.power)
            if self.normalize:
                mvals = mvals / mvals.mean()
            self._cache = (self.accumulator, mvals, evecs)
        return self._cache[1], self._cache[2]

    def _apply_power(self, vec: Sequence[Tensor], exponent: float) -> TensorList:
        """``M^exponent vec``."""
        mvals, evecs = self._eig()
        v = tl.flatten(vec)
        out = evecs @ (torch.pow(mvals, exponent) * (evecs.T @ v))
        return tl.unflatten(out, vec)

    def metric(self) -> TensorList:
        """Not available: ``M`` is not diagonal (use :meth:`matrix` or :meth:`inv_sqrt`).

        Raises:
            RuntimeError: always.
        """
        raise RuntimeError(f"the {self.name} norm is not diagonal; use inv_sqrt()/solve()")

    def solve(self, vec: Sequence[Tensor]) -> TensorList:
        return self._apply_power(vec, -1.0)

    def inv_sqrt(self, vec: Sequence[Tensor]) -> TensorList:
        return self._apply_power(vec, -0.5)

    def norm(self, vec: Sequence[Tensor]) -> Tensor:
        return torch.sqrt(tl.dot(vec, self._apply_power(vec, 1.0)))

    def state_dict(self) -> dict[str, Any]:
        return {"accumulator": self.accumulator, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accumulator = state.get("accumulator")
        self.steps = int(state.get("steps", 0))


def make_norm(norm: str | AdaptiveNorm, *, beta: float = 0.9, epsilon: float = 1e-8,
              power: float = 0.5, normalize: bool = True) -> AdaptiveNorm:
    """Build a norm from its name (one of :data:`NORMS`) or pass an instance through.

    ``beta``, ``epsilon``, ``power`` and ``normalize`` go to :class:`DiagonalNorm` /
    :class:`FullMatrixNorm` (an instance keeps its own).

    Raises:
        ValueError: if the name is unknown or a hyperparameter is out of range.
    """
    if isinstance(norm, AdaptiveNorm):
        return norm
    _check_common("rmsprop", beta, epsilon, power)
    if norm == "spherical":
        return SphericalNorm()
    if norm in ("rmsprop", "adagrad"):
        return DiagonalNorm(norm, beta=beta, epsilon=epsilon, power=power, normalize=normalize)
    if norm in ("full_rmsprop", "full_adagrad"):
        return FullMatrixNorm(norm[len("full_"):], beta=beta, epsilon=epsilon, power=power,
                              normalize=normalize)
    raise hyper.invalid("norm", norm, f"one of {NORMS} or an AdaptiveNorm")


NORM_KEYS = ("norm", "beta", "epsilon", "power", "normalize")


def norm_of_group(norm: AdaptiveNorm, group: dict[str, Any], defaults: dict[str, Any]):
    """The norm a param group asks for: ``norm`` (built from ``defaults``) unless the group
    overrides one of ``norm``, ``beta``, ``epsilon``, ``power``, ``normalize``; then
    :func:`make_norm` builds it from the group's values.

    Raises:
        ValueError: if the group's norm name or values are invalid.
    """
    if all(group[k] == defaults[k] for k in NORM_KEYS):
        return norm
    return make_norm(group["norm"], beta=group["beta"], epsilon=group["epsilon"],
                     power=group["power"], normalize=group["normalize"])

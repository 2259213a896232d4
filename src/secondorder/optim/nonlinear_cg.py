"""Nonlinear conjugate gradients with a strong Wolfe line search ([Veitch], section 2).

``d_k = -g_k + beta_k d_{k-1}`` ([NocedalWright2006] Alg. 5.4 and eq. 5.41-5.49; [HagerZhang2005]
2006 for ``"hager_zhang"``), with ``x_{k+1} = x_k + t_k d_k`` and ``t_k`` from the strong
Wolfe search (``c2 = 0.1`` by default, as NLCG practice asks so that ``d_k`` stays a descent
direction). Restarts (``beta = 0``): every ``restart_every`` iterations (default: the number
of parameters), when consecutive gradients are far from orthogonal
(``|g_k^T g_{k-1}| >= 0.2 |g_k|^2``, Powell; [NocedalWright2006] eq. 5.52), and whenever ``d_k`` is
not a
descent direction. The initial trial step is [NocedalWright2006] eq. 3.60, ``2 (f_k - f_{k-1}) /
(-g^T d)``
(capped by ``lr``), so one closure call per iteration is the common case.

The beta formulas are pure functions (:func:`cg_beta`); :class:`NonlinearCG` is the shell.
Stochastic safeguards are those of :mod:`secondorder.optim.lbfgs`: rollback to the last
finite iterate on a NaN/Inf loss or gradient, and ``full_batch`` reuse of the line search's
evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.optim import direction_groups as ds
from secondorder.optim import hyperparameters as hyper
from secondorder.optim.base import Closure, SecondOrderOptimizer
from secondorder.optim.line_objective import (
    LineObjective,
    finite_start,
    is_finite,
    max_abs,
    search,
    versions,
)

__all__ = ["BETA_RULES", "NonlinearCG", "cg_beta"]

BETA_RULES = (
    "polak_ribiere_plus",
    "fletcher_reeves",
    "hestenes_stiefel",
    "dai_yuan",
    "hager_zhang",
)


def _safe_div(a: Tensor, b: Tensor) -> Tensor:
    return torch.where(b != 0, a / torch.where(b != 0, b, torch.ones_like(b)), torch.zeros_like(a))


def cg_beta(
    rule: str, grad: Sequence[Tensor], grad_old: Sequence[Tensor], dir_old: Sequence[Tensor]
) -> Tensor:
    """The conjugacy coefficient ``beta_k`` (0-dim tensor, no host sync).

    With ``y = g_k - g_{k-1}`` and ``d = d_{k-1}`` ([NocedalWright2006] eq. 5.41-5.49):
    Fletcher-Reeves ``|g_k|^2 / |g_{k-1}|^2``; Polak-Ribiere+ ``max(0, g_k^T y /
    |g_{k-1}|^2)``; Hestenes-Stiefel ``g_k^T y / d^T y``; Dai-Yuan ``|g_k|^2 / d^T y``;
    Hager-Zhang ``(y - 2 d |y|^2 / d^T y)^T g_k / d^T y``, truncated below at
    ``-1 / (|d| min(0.01, |g_{k-1}|))``. A zero denominator gives ``beta = 0`` (restart).

    Raises:
        ValueError: for an unknown rule.
    """
    if rule not in BETA_RULES:
        raise ValueError(f"Invalid beta: {rule!r} (choose from {BETA_RULES})")
    if rule == "fletcher_reeves":
        return _safe_div(tl.dot(grad, grad), tl.dot(grad_old, grad_old))
    y = tl.sub(grad, grad_old)
    if rule == "polak_ribiere_plus":
        return _safe_div(tl.dot(grad, y), tl.dot(grad_old, grad_old)).clamp(min=0)
    dy = tl.dot(dir_old, y)
    if rule == "hestenes_stiefel":
        return _safe_div(tl.dot(grad, y), dy)
    if rule == "dai_yuan":
        return _safe_div(tl.dot(grad, grad), dy)
    yy = tl.dot(y, y)
    beta = _safe_div(tl.dot(y, grad) - 2 * _safe_div(yy, dy) * tl.dot(dir_old, grad), dy)
    eta = -1.0 / (tl.norm(dir_old) * torch.clamp(tl.norm(grad_old), max=0.01))
    return torch.maximum(beta, eta)


class NonlinearCG(ds.SharedHyperparameters, SecondOrderOptimizer):
    """Nonlinear CG with a strong Wolfe line search (see module doc).

    Param groups may differ in ``lr`` only, read at every step (per-group scaling of the
    one direction: :mod:`secondorder.optim.direction_groups`).

    Args:
        params: parameters or param groups.
        lr: cap on the initial trial step (the first iteration after a restart starts from
            ``lr * min(1, 1 / |diag(lr_g / lr_max) g|_1)``, i.e. ``lr * min(1, 1 / |g|_1)`` with
            one group).
        beta: ``"polak_ribiere_plus"``, ``"fletcher_reeves"``, ``"hestenes_stiefel"``,
            ``"dai_yuan"`` or ``"hager_zhang"``.
        restart_every: restart every this many iterations (``None``: number of parameters).
        powell_restart: restart when ``|g_k^T g_{k-1}| >= 0.2 |g_k|^2``.
        max_iter, tolerance_grad, tolerance_change, c1, c2, max_ls_evals: the keys of the
            line-search optimizers, as documented once in
            :class:`~secondorder.optim.direction_groups.SharedHyperparameters`.
        full_batch: reuse the line search's loss and gradient at the next step (the closure
            must then compute the same function at every call).

    Raises:
        ValueError: for an invalid value (an unknown ``beta`` rule, ``c2`` outside
            ``(c1, 1)``...) or a shared hyperparameter that differs by group; the message
            names it.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1.0,
        beta: str = "polak_ribiere_plus",
        restart_every: int | None = None,
        powell_restart: bool = True,
        max_iter: int = 1,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        c1: float = 1e-4,
        c2: float = 0.1,
        max_ls_evals: int = 25,
        full_batch: bool = False,
    ):
        defaults = dict(
            lr=lr, beta=beta, restart_every=restart_every, powell_restart=powell_restart,
            max_iter=max_iter, tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
            c1=c1, c2=c2, max_ls_evals=max_ls_evals, full_batch=full_batch,
        )  # fmt: skip
        super().__init__(params, defaults)

    HYPERPARAMETERS = {
        **ds.SharedHyperparameters.HYPERPARAMETERS,
        "beta": hyper.one_of(BETA_RULES),
        "restart_every": hyper.optional(hyper.integer(1)),
    }

    def _direction(self, st: dict[str, Any], g: tuple[Tensor, ...], grp: dict[str, Any]):
        restart_every = grp["restart_every"] or sum(p.numel() for p in self.params())
        d_old, g_old = st.get("d"), st.get("g")
        if d_old is None or st["since_restart"] >= restart_every:
            return tl.neg(g), True
        beta = cg_beta(grp["beta"], g, g_old, d_old)
        if grp["powell_restart"]:
            beta = torch.where(tl.dot(g, g_old).abs() >= 0.2 * tl.dot(g, g), 0.0, beta)
        d = tl.add(tl.neg(g), d_old, beta)
        return d, bool(beta == 0)

    #: steps replace their state tensors, never write into them (the step transaction
    #: of :mod:`secondorder.optim.base` then copies none of them)
    state_mutated_in_place = frozenset[str]()

    def step(self, closure: Closure) -> Tensor:  # type: ignore[override]
        """Run up to ``max_iter`` NLCG iterations on ``closure``.

        The closure, the return value and the errors: see
        :class:`~secondorder.optim.direction_groups.SharedHyperparameters`.
        """
        grp = self.shared_hyperparameters()
        st = self.state["global"]
        st.setdefault("since_restart", 0)
        st.setdefault("step_scale", 1.0)
        full_batch = grp["full_batch"]
        orig_loss, loss, g = finite_start(self, closure, st, full_batch, self.reset_memory)
        if g is None:
            return orig_loss
        if not full_batch:  # a new batch: the previous loss does not predict this step
            st.pop("loss", None)
        scale = ds.GroupScale.of(self)
        tol_change = grp["tolerance_change"]
        for _ in range(grp["max_iter"]):
            if scale.lr == 0 or max_abs(g) <= grp["tolerance_grad"]:
                break
            d, restarted = self._direction(st, g, grp)
            step_dir = scale.apply(d)  # the direction searched: diag(lr_g / lr_max) d
            gtd = tl.dot(g, step_dir)
            if not bool(gtd < 0):
                d, restarted = tl.neg(g), True
                step_dir = scale.apply(d)
                gtd = -tl.dot(g, scale.apply(g))
            if float(gtd) > -tol_change:
                break
            if restarted:
                st["since_restart"] = 0
            lr = scale.lr * st["step_scale"]
            if st.get("loss") is not None and not restarted:
                t0 = min(lr, float(1.01 * 2 * (loss - st["loss"]) / gtd))
                t0 = t0 if t0 > 0 else lr
            else:
                g1 = float(sum(x.abs().sum() for x in scale.apply(g)))
                t0 = min(1.0, 1.0 / g1) * lr
            x0 = self.params_at_start()
            phi = LineObjective(self, closure, x0, step_dir)
            t, new_loss, new_g = search(
                phi, "strong_wolfe", loss, g, gtd, step=t0, c1=grp["c1"], c2=grp["c2"],
                tolerance_change=tol_change, max_evals=grp["max_ls_evals"],
            )  # fmt: skip
            if new_g is None:
                new_loss, new_g = phi(t)
            if not is_finite(new_loss, new_g):
                self.set_params(x0)
                self.reset_memory()
                st["step_scale"] *= 0.5
                break
            st["step_scale"] = 1.0
            st.update(d=d, g=g, loss=loss)
            st["since_restart"] += 1
            prev_loss = loss
            loss, g = new_loss, new_g
            if t * max_abs(step_dir) <= tol_change or abs(float(loss - prev_loss)) < tol_change:
                break
        if full_batch:
            st["cache"] = (loss, g, versions(self.params()))
        return orig_loss

    def reset_memory(self) -> None:
        """Forget the previous direction, gradient and loss: the next step restarts."""
        st = self.state["global"]
        for k in ("d", "g", "loss", "cache"):
            st.pop(k, None)
        st["since_restart"] = 0

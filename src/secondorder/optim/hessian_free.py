"""Hessian-free optimization ([Martens2010], "Deep learning via Hessian-free optimization").

Each step minimizes the damped quadratic model::

    q(p) = g^T p + p^T (B + lambda I) p / 2

with ``B`` the generalized Gauss-Newton matrix (default; [Schraudolph2002] or the Hessian,
by preconditioned CG (:func:`secondorder.optim.krylov.truncated_cg`) with Martens' ideas:

- Levenberg-Marquardt damping (Martens Sec. 4.1): ``rho = (f(w + p) - f(w)) / q(p)``;
  ``lambda <- 2/3 lambda`` if ``rho > 3/4``, ``lambda <- 3/2 lambda`` if ``rho < 1/4``;
- CG stopping by relative progress (Sec. 4.4), :class:`MartensProgress`: stop at
  iteration ``i`` when ``i > k = max(10, 0.1 i)``, ``q(p_i) < 0`` and
  ``(q(p_i) - q(p_{i-k})) / q(p_i) < k * 5e-4``;
- warm start from the previous CG solution times ``decay`` (Sec. 4.5);
- CG-iterate backtracking (Sec. 4.6): the iterates at ``ceil(1.3^j)`` are kept, and going
  backwards from the last one the iterate with the best loss is taken;
- diagonal preconditioner (Sec. 4.7) ``M = (diag(F) + lambda)^0.75`` with ``F`` the
  empirical Fisher of the mean loss, ``diag(F) = (1/n) sum_i (grad l_i)^2`` computed from
  the per-sample losses the closure returns: an unbiased Rademacher-probe estimate of
  ``sum_i (grad l_i)^2`` (:func:`squared_gradients_estimate`, a few backward passes) or,
  with ``fisher_probes=0``, the exact per-sample sum (:func:`per_sample_squared_gradients`,
  vectorized but slow). Martens writes the sum over the
  per-case terms of his (summed) objective; with a mean loss the average is the matrix of
  the same scale as ``B`` and ``lambda``;
- a backtracking line search on the chosen step (Martens' code: Armijo with ``c = 1e-2``,
  factor 0.8, up to 60 trials; :func:`secondorder.optim.line_search.backtracking`).

The closure returns the **per-sample losses** (e.g. ``reduction="none"``) when the
preconditioner is on; the GGN comes from ``step(closure, ggn_closure=...)`` (see
:mod:`secondorder.optim.curvature_source`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.curvature.attention import double_differentiable_attention
from secondorder.curvature.operators import CurvatureOperator, HessianOperator
from secondorder.optim import hyperparameters as hyper
from secondorder.optim.base import (
    Closure,
    SecondOrderOptimizer,
    needs_working_precision,
    to_working_precision,
)
from secondorder.optim.closure_convention import BackwardWatch
from secondorder.optim.curvature_source import (
    CURVATURES,
    CurvatureClosure,
    WorkingPrecisionOperator,
    check_closures,
    separate_operator,
)
from secondorder.optim.distributed import data_parallel_hessian_free_evaluate
from secondorder.optim.krylov import truncated_cg
from secondorder.optim.line_search import backtracking
from secondorder.optim.model_step import check_finite_start
from secondorder.tensorlist import TensorList

__all__ = [
    "HessianFree",
    "MartensProgress",
    "backtracking_iterations",
    "damping_update",
    "per_sample_squared_gradients",
    "squared_gradients_estimate",
]


class MartensProgress:
    """Martens' relative-progress stopping rule for CG, as a ``truncated_cg`` callback.

    With ``b`` the right-hand side and ``r = b - A x`` the residual CG passes, the
    quadratic ``phi(x) = x^T A x / 2 - b^T x = -x^T (b + r) / 2`` costs no product. Stops
    at iteration ``i`` when ``i > k = max(min_iters, ceil(fraction * i))``, ``phi_i < 0``
    and ``(phi_i - phi_{i-k}) / phi_i < k * tol`` ([Martens2010] Sec. 4.4). Returns a 0-dim
    bool tensor (no host sync). ``values`` keeps every ``phi_i`` (the model value of CG
    iterate ``i``), which :class:`HessianFree` reuses for the reduction ratio.

    Args:
        b: the right-hand side.
        tol: the relative-progress threshold per iteration (Martens: 5e-4).
        min_iters: smallest window ``k`` (Martens: 10).
        fraction: the window grows as ``fraction * i`` (Martens: 0.1).
    """

    def __init__(self, b: Sequence[Tensor], *, tol: float = 5e-4, min_iters: int = 10,
                 fraction: float = 0.1):
        self.b = tuple(b)
        self.tol, self.min_iters, self.fraction = tol, min_iters, fraction
        self.values: dict[int, Tensor] = {}

    def __call__(self, i: int, x: TensorList, r: TensorList) -> bool | Tensor:
        phi = -0.5 * tl.dot(x, tl.add(self.b, r))
        self.values[i] = phi
        k = max(self.min_iters, math.ceil(self.fraction * i))
        if i <= k or (i - k) not in self.values:
            return False
        # (phi_i - phi_{i-k}) / phi_i < k tol, multiplied through by phi_i < 0
        return (phi < 0) & ((phi - self.values[i - k]) > k * self.tol * phi)


def backtracking_iterations(max_iter: int, ratio: float = 1.3) -> list[int]:
    """Iterations whose CG iterate Martens keeps: ``ceil(ratio^j)``, distinct, ``<= max_iter``.

    Example:
        >>> backtracking_iterations(10)
        [1, 2, 3, 4, 5, 7, 9]
    """
    out, j = [], 0
    while True:
        i = math.ceil(ratio**j)
        if i > max_iter:
            return out
        if not out or i > out[-1]:
            out.append(i)
        j += 1


def damping_update(damping: float, rho: float, *, drop: float = 2.0 / 3.0,
                   boost: float = 1.5) -> float:
    """Martens' Levenberg-Marquardt rule: ``drop * lambda`` if ``rho > 3/4``, ``boost *
    lambda`` if ``rho < 1/4`` (or NaN), else unchanged."""
    if rho > 0.75:
        return damping * drop
    if not rho >= 0.25:
        return damping * boost
    return damping


def squared_gradients_estimate(losses: Tensor, params: Sequence[Tensor], probes: int) -> TensorList:
    """Unbiased estimate of ``sum_i (grad l_i)^2`` with Rademacher probes (graph kept).

    For independent signs ``z_i = +-1``, ``v = grad(sum_i z_i l_i)`` has
    ``E[v^2] = sum_i (grad l_i)^2`` (elementwise; the cross terms have mean zero), so the
    average of ``v^2`` over ``probes`` draws estimates the per-sample sum at the cost of
    ``probes`` backward passes, whatever the batch size. Uses the global torch RNG.

    Args:
        losses: 1-D tensor of per-sample losses with a graph to ``params``.
        params: the parameters.
        probes: number of sign vectors (>= 1).

    Returns:
        One tensor per parameter.
    """
    out = [torch.zeros_like(p) for p in params]
    for _ in range(probes):
        z = torch.randint(0, 2, losses.shape, device=losses.device).to(losses.dtype) * 2 - 1
        gs = torch.autograd.grad(losses, params, grad_outputs=z, retain_graph=True,
                                 allow_unused=True)
        for o, g in zip(out, gs, strict=True):
            if g is not None:
                o.addcmul_(g, g, value=1.0 / probes)
    return tuple(out)


def per_sample_squared_gradients(losses: Tensor, params: Sequence[Tensor], *,
                                 chunk_size: int = 256) -> TensorList:
    """``sum_i (grad l_i)^2`` for the 1-D per-sample losses ``l`` (graph kept).

    Exact, vectorized over samples with ``torch.autograd.grad(is_grads_batched=True)``
    (vmap over the backward pass), ``chunk_size`` samples at a time to bound memory at
    ``chunk_size * d`` numbers. Slow on CPU (measured about 30 s for 1797 samples of a
    5k-parameter MLP); :func:`squared_gradients_estimate` is the default in
    :class:`HessianFree`.

    Args:
        losses: 1-D tensor of per-sample losses with a graph to ``params``.
        params: the parameters.
        chunk_size: samples per vectorized backward.

    Returns:
        One tensor per parameter.
    """
    n = losses.numel()
    out = [torch.zeros_like(p) for p in params]
    for start in range(0, n, chunk_size):
        rows = torch.arange(start, min(start + chunk_size, n), device=losses.device)
        seeds = torch.zeros(rows.numel(), n, dtype=losses.dtype, device=losses.device)
        seeds[torch.arange(rows.numel(), device=losses.device), rows] = 1.0
        gs = torch.autograd.grad(losses, params, grad_outputs=seeds, is_grads_batched=True,
                                 retain_graph=True, allow_unused=True)
        for o, g in zip(out, gs, strict=True):
            if g is not None:
                o.add_((g * g).sum(0))
    return tuple(out)


class HessianFree(hyper.Hyperparameters, SecondOrderOptimizer):
    """[Martens2010] Hessian-free optimizer (module docstring).

    ``step(closure, ggn_closure=...)``: ``closure`` returns the per-sample losses on the
    batch (a scalar is accepted when ``preconditioner=False``); ``ggn_closure`` returns the
    GGN operator at the current parameters (``curvature="gauss_newton"``, e.g.
    ``lambda: GGNOperator.from_model(model, criterion, x, y)``). With
    ``curvature="hessian"`` the Hessian of the closure's loss is used, or of
    ``hessian_closure``'s loss on a separate batch. The damping ``lambda``, the CG warm start
    and the last ``rho`` live in ``state["global"]``. A step that the line search cannot make
    decrease the loss leaves the parameters bit-identical.

    Args:
        params: parameters or param groups. The damping and the CG warm start are global,
            so every hyperparameter must be the same in all groups (``ValueError`` naming
            the key otherwise, when a group is added and at each step).
        damping: initial ``lambda > 0``.
        curvature: ``"gauss_newton"`` (default) or ``"hessian"``.
        max_cg_iter: most CG products per step (>= 1).
        cg_rtol: CG's relative residual tolerance (>= 0); Martens' rule usually stops first.
        decay: warm-start factor in [0, 1] (0 starts CG from zero).
        preconditioner: use Martens' diagonal preconditioner (needs per-sample losses).
        preconditioner_power: the exponent ``xi`` of ``(diag(F) + lambda)^xi`` (Martens:
            0.75), in (0, 1].
        fisher_probes: Rademacher probes of :func:`squared_gradients_estimate` for the
            preconditioner's ``sum_i (grad l_i)^2`` (>= 1), or 0 for the exact per-sample
            sum (:func:`per_sample_squared_gradients`, slow on large batches).
        progress_tol: Martens' relative-progress threshold (5e-4), >= 0.
        line_search: run Martens' backtracking line search on the chosen step.
        c1: its sufficient-decrease constant in (0, 1) (Martens: 1e-2).
        ls_shrink: its step factor in (0, 1) (Martens: 0.8).
        max_ls_evals: most line-search evaluations (>= 1; Martens: 60).

    Raises:
        ValueError: if a hyperparameter is out of range, a name is unknown, or a value
            differs between param groups.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        damping: float = 1.0,
        curvature: str = "gauss_newton",
        max_cg_iter: int = 250,
        cg_rtol: float = 1e-6,
        decay: float = 0.95,
        preconditioner: bool = True,
        preconditioner_power: float = 0.75,
        fisher_probes: int = 4,
        progress_tol: float = 5e-4,
        line_search: bool = True,
        c1: float = 1e-2,
        ls_shrink: float = 0.8,
        max_ls_evals: int = 60,
    ):
        defaults = dict(
            damping=damping, curvature=curvature, max_cg_iter=max_cg_iter, cg_rtol=cg_rtol,
            decay=decay, preconditioner=preconditioner,
            preconditioner_power=preconditioner_power, fisher_probes=fisher_probes,
            progress_tol=progress_tol,
            line_search=line_search, c1=c1, ls_shrink=ls_shrink, max_ls_evals=max_ls_evals,
        )
        super().__init__(params, defaults)

    NEEDS_CURVATURE = True
    SUPPORTS_GAUSS_NEWTON = True
    HYPERPARAMETERS = {
        "damping": hyper.positive,
        "curvature": hyper.one_of(CURVATURES),
        "max_cg_iter": hyper.integer(1),
        "cg_rtol": hyper.nonnegative,
        "decay": hyper.in_range(0, 1, "[]"),
        "preconditioner_power": hyper.in_range(0, 1, "(]"),
        "fisher_probes": hyper.integer(0),
        "progress_tol": hyper.nonnegative,
        "c1": hyper.in_range(0, 1),
        "ls_shrink": hyper.in_range(0, 1),
        "max_ls_evals": hyper.integer(1),
    }

    # ------------------------------------------------------------------ evaluation
    @data_parallel_hessian_free_evaluate  # averages across ranks under torch.distributed
    def _evaluate(
        self, closure: Closure, *, fisher: bool, create_graph: bool
    ) -> tuple[Tensor, TensorList, TensorList | None, HessianOperator | None]:
        """Loss, gradient, optional Fisher diagonal and optional Hessian, one forward."""
        closure = BackwardWatch(closure, self.params(), graph_needed_by=type(self).__name__)
        with torch.enable_grad(), double_differentiable_attention(enabled=create_graph):
            out, loss, n, params = self.call_closure(closure)
            if fisher and out.dim() != 1:
                raise ValueError(
                    "preconditioner=True needs the closure to return the per-sample losses "
                    f"(a 1-D tensor, e.g. reduction='none'), got shape {tuple(out.shape)}; "
                    "return them or pass preconditioner=False"
                )
            c = self.counters
            grads = torch.autograd.grad(loss, params, create_graph=create_graph,
                                        retain_graph=fisher or create_graph, allow_unused=True)
            c.gradients += 1
            c.gradient_samples += n
            diag = None
            if fisher:
                probes = self.param_groups[0]["fisher_probes"]
                sq = (per_sample_squared_gradients(out, params) if probes == 0
                      else squared_gradients_estimate(out, params, probes))
                diag = tl.scale(sq, 1.0 / n)
                c.gradients += max(probes, 1)
                c.gradient_samples += max(probes, 1) * n
        hessian = None
        if create_graph:
            hessian = HessianOperator.from_gradient(params, grads, loss)
            hessian.on_product = lambda: self.count_hvps(1, n)
            grads = hessian.gradient
        else:
            grads = tuple(torch.zeros_like(p) if g is None else g.detach()
                          for p, g in zip(params, grads, strict=True))
        self.watch_start(loss, (*grads, *(diag or ())), hessian)
        return loss.detach(), grads, diag, hessian

    def _loss_at(self, closure: Closure, point: TensorList) -> Tensor:
        self.set_params(point)
        out = self.evaluate(closure, grad=False).loss
        return torch.where(torch.isfinite(out), out, torch.full_like(out, math.inf))

    #: steps replace their state tensors, never write into them (the step transaction
    #: of :mod:`secondorder.optim.base` then copies none of them)
    state_mutated_in_place = frozenset[str]()

    # ------------------------------------------------------------------ step
    def step(
        self,
        closure: Closure,
        *,
        ggn_closure: CurvatureClosure | None = None,
        hessian_closure: Closure | None = None,
    ) -> Tensor:
        """One Hessian-free iteration (module docstring).

        Args:
            closure: returns the per-sample losses (or the loss, without preconditioner).
            ggn_closure: returns the GGN operator (``curvature="gauss_newton"``).
            hessian_closure: optional loss closure on a separate batch for the Hessian.

        Returns:
            The loss at the start of the step.

        Raises:
            ValueError: if the closures do not fit the curvature, the closure's output
                does not fit the preconditioner, or a hyperparameter differs between groups.
            NonFiniteLossError: if the loss or gradient at the current point is not finite.
        """
        hp = self.shared_hyperparameters()
        gstate = self.state["global"]
        damping = float(gstate.get("damping", hp["damping"]))
        curvature = hp["curvature"]
        check_closures(curvature, hessian_closure, ggn_closure)
        own_hessian = curvature == "hessian" and hessian_closure is None
        loss, grads, fisher, hessian = self._evaluate(
            closure, fisher=hp["preconditioner"], create_graph=own_hessian
        )
        op: CurvatureOperator | None = hessian
        try:
            loss_f, gnorm_f = check_finite_start(loss, grads)
            if gnorm_f == 0.0:
                gstate.update(damping=damping, rho=float("nan"), accepted=False, cg_iterations=0)
                return loss
            if op is None:
                op = separate_operator(self, curvature, hessian_closure=hessian_closure,
                                       ggn_closure=ggn_closure)
            if needs_working_precision(self.params()):  # float16/bfloat16: solve in float32
                op = WorkingPrecisionOperator(op, self.params())  # type: ignore[assignment]
                grads = to_working_precision(grads)
                fisher = None if fisher is None else to_working_precision(fisher)
            res, values = self._solve(op.matvec, grads, damping, fisher, hp)
        finally:
            release = getattr(op, "free", None)
            if callable(release):
                release()
        return self._finish(closure, loss, loss_f, grads, damping, res, values, hp)

    def _solve(self, matvec: Callable, grads: TensorList, damping: float,
               fisher: TensorList | None, hp: dict[str, Any]):
        gstate = self.state["global"]

        def damped(v: TensorList) -> TensorList:
            return tl.add(tuple(matvec(v)), v, damping)

        precond = None
        if fisher is not None:
            # (fisher + damping)^power written over the Fisher diagonal, not needed after
            m = tuple(f.add_(damping).pow_(hp["preconditioner_power"]) for f in fisher)

            def precond(r: TensorList) -> TensorList:
                return tuple(torch._foreach_div(list(r), list(m)))

        b = tl.neg(grads)
        x0 = gstate.get("cg_init")
        if x0 is not None and hp["decay"] > 0:
            x0 = tl.scale(tuple(x0), hp["decay"])
        else:
            x0 = None
        progress = MartensProgress(b, tol=hp["progress_tol"])
        keep = backtracking_iterations(hp["max_cg_iter"])
        res = truncated_cg(damped, b, x0=x0, rtol=hp["cg_rtol"], max_iter=hp["max_cg_iter"],
                           preconditioner=precond, callback=progress, keep_iterates=keep)
        gstate["cg_init"] = res.solution
        values = progress.values
        if res.iterations not in values:  # no CG iteration ran: q of the start point
            x = res.solution
            values[res.iterations] = tl.dot(grads, x) + 0.5 * tl.dot(x, damped(x))
        return res, values

    def _finish(self, closure: Closure, loss: Tensor, loss_f: float, grads: TensorList,
                damping: float, res: Any, values: dict[int, Tensor], hp: dict[str, Any]) -> Tensor:
        gstate = self.state["global"]
        candidates = dict(res.iterates)
        candidates.pop(0, None)
        candidates[res.iterations] = res.solution
        order = sorted(candidates)
        old = self.params_at_start()

        # Martens' CG backtracking: from the last kept iterate backwards while the loss drops.
        best_i = order[-1]
        best_loss = self._loss_at(closure, tl.add(old, candidates[best_i]))
        best_f = float(best_loss)
        for i in reversed(order[:-1]):
            trial = self._loss_at(closure, tl.add(old, candidates[i]))
            trial_f = float(trial)
            if not trial_f < best_f:
                break
            best_i, best_loss, best_f = i, trial, trial_f
        p = candidates[best_i]

        # Reduction ratio against the damped model q(p), recorded by the CG callback.
        q_f = float(values[best_i])
        rho = (best_f - loss_f) / q_f if q_f < 0 else -math.inf
        new_damping = damping_update(damping, rho)

        # Martens' line search on the chosen step.
        slope = tl.dot(grads, p)
        if hp["line_search"]:
            def phi(t: float, need_grad: bool = False):
                if t == 1.0:
                    return best_loss, None
                return self._loss_at(closure, tl.add(old, p, t)), None

            ls = backtracking(phi, loss, slope, c1=hp["c1"], shrink=hp["ls_shrink"],
                              max_evals=hp["max_ls_evals"], interpolate=False)
            t = ls.step if ls.success or (ls.loss is not None and float(ls.loss) < loss_f) else 0.0
        else:
            t = 1.0 if best_f < loss_f else 0.0
        if t > 0:
            self.set_params(tl.add(old, p, t))
        else:
            self.set_params(old)
        gstate.update(damping=new_damping, rho=rho, accepted=t > 0, step_size=t,
                      cg_iterations=res.iterations, cg_status=res.status, cg_backtrack=best_i)
        return loss

"""Truncated Newton (Newton-CG) with Hessian-vector products and optional Hessian sub-sampling.

Each step solves ``H p = -g`` approximately by CG (:func:`secondorder.optim.krylov.truncated_cg`)
with exact Hessian-vector products (Pearlmutter, through the closure's own gradient graph:
:attr:`~secondorder.optim.base.Evaluation.hessian`), then moves ``x + t p`` ([Veitch] eq. 1;
[NocedalWright2006] Alg. 7.1). ``t`` comes from a line search, or is the fixed ``lr`` with
``line_search=None`` ([Veitch]'s "Newton (noLS)": ``x_{k+1} = x_k - lr H^{-1} g``).

* **Forcing**: CG stops when ``|r| <= eta_k |g_k|``. ``"sqrt_gradient"`` (the default) is
  ``eta_k = min(0.5, sqrt(|g_k|))`` in the Euclidean norm ([NocedalWright2006] Alg. 7.1):
  superlinear near a minimizer, loose far from it. (scipy's and pytorch-minimize's
  ``newton-cg`` take the same rule in the L1 norm, for ``|g_k|`` and ``|r|`` alike, which
  on many parameters keeps ``eta_k`` at 0.5 longer and solves more loosely.)
  ``"eisenstat_walker"`` is [EisenstatWalker1996] choice 2, ``eta_k = 0.9 (|g_k| /
  |g_{k-1}|)^2`` safeguarded by ``0.9 eta_{k-1}^2`` when that exceeds 0.1, capped at 0.5;
  it tightens as fast as the gradient falls, so once the outer iteration converges quickly
  every solve runs to a tiny tolerance (66 against 36 products to the same loss on MNIST
  softmax regression, ``benchmarks/full_batch_solvers.py``). A float is a constant ``eta``.
* **Negative curvature**: CG stops and returns its last iterate, or a steepest-descent step
  when it meets ``p^T H p <= 0`` at the first iteration (the contract of ``truncated_cg``).
* **Hessian sub-sampling** ([Xu2020]): with ``hessian_fraction`` the closure must
  return per-sample losses; one forward serves both the full gradient and the Hessian of a
  random ``hessian_fraction`` of the samples (counted as one loss evaluation, one gradient on
  all samples, one on the subset, and HVPs on the subset). Or pass
  ``step(closure, hessian_closure)`` to take the Hessian on a separate sub-batch (one more
  forward, counted).

The graph is freed before ``step`` returns, except with ``full_batch=True``: there the line
search's accepted trial is evaluated with its gradient and Hessian graph, and the next step
starts from it instead of evaluating the closure again (one forward pass less per step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.curvature.attention import double_differentiable_attention
from secondorder.curvature.operators import HessianOperator
from secondorder.errors import NonFiniteLossError
from secondorder.optim import direction_groups as ds
from secondorder.optim import hyperparameters as hyper
from secondorder.optim import krylov
from secondorder.optim.base import Closure, SecondOrderOptimizer
from secondorder.optim.line_objective import LineObjective, is_finite, search

__all__ = ["NewtonCG", "eisenstat_walker"]

NEWTON_LINE_SEARCHES = ("armijo", "strong_wolfe", None)
FORCING_RULES = ("eisenstat_walker", "sqrt_gradient")


def eisenstat_walker(
    grad_norm: float, prev_grad_norm: float | None, prev_eta: float | None, eta_max: float = 0.5
) -> float:
    """Eisenstat-Walker forcing term, choice 2 (gamma = 0.9, alpha = 2), with safeguard.

    Args:
        grad_norm: ``|g_k|``.
        prev_grad_norm: ``|g_{k-1}|`` (None at the first iteration).
        prev_eta: ``eta_{k-1}`` (None at the first iteration).
        eta_max: upper bound (also the first value).

    Returns:
        ``eta_k`` in ``(0, eta_max]``.
    """
    if prev_grad_norm is None or prev_eta is None or prev_grad_norm == 0:
        return eta_max
    eta = 0.9 * (grad_norm / prev_grad_norm) ** 2
    safeguard = 0.9 * prev_eta**2
    if safeguard > 0.1:
        eta = max(eta, safeguard)
    return float(min(max(eta, 1e-12), eta_max))


class NewtonCG(ds.SharedHyperparameters, SecondOrderOptimizer):
    """Truncated Newton with CG on exact (or sub-sampled) Hessian products (see module doc).

    Param groups may differ in ``lr`` only, read at every step (per-group scaling of the
    one direction: :mod:`secondorder.optim.direction_groups`).

    Args:
        params: parameters or param groups.
        lr: initial step of the line search, or the fixed step with ``line_search=None``.
        line_search: ``"armijo"`` (backtracking on loss values only), ``"strong_wolfe"`` or
            ``None``.
        max_cg_iter: CG iterations per step (``None``: number of parameters, capped at 250).
        forcing: ``"sqrt_gradient"``, ``"eisenstat_walker"`` (module doc) or a constant
            relative CG tolerance in ``(0, 1)``.
        hessian_fraction: fraction in ``(0, 1]`` of the closure's per-sample losses whose
            Hessian is used (``None``: all samples).
        tolerance_grad: no step when ``max |g| <= tolerance_grad``.
        c1: sufficient-decrease constant.
        c2: curvature constant for ``"strong_wolfe"``.
        max_ls_evals: closure calls allowed per line search.
        generator: random generator for the Hessian sub-sample.
        full_batch: the closure computes the same function at every call (full-batch
            training): each line-search trial is evaluated with its gradient and Hessian
            graph, and the next step starts from the accepted one instead of evaluating the
            closure again (one forward pass less per step, one backward pass more per
            rejected trial; the graph is kept between the two steps). It is used only
            while the parameters have not been written since (their in-place versions; a
            write through ``p.data`` bumps no version, so change parameters between steps
            with in-place ops under ``torch.no_grad()``), with a line search, no
            ``hessian_fraction`` and no ``hessian_closure``. The iterates are those of
            ``full_batch=False`` (to the bit, except for models with scaled-dot-product
            attention, whose trials are then evaluated with the math kernel).
        max_iter: Newton iterations per ``step`` call (default 1; see "iterations per step"
            in :mod:`secondorder.optim.base`); ``step(closure, callback=...)`` can end them
            early.

    Raises:
        ValueError: for an invalid value or a shared hyperparameter that differs by group.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1.0,
        line_search: str | None = "armijo",
        max_cg_iter: int | None = None,
        forcing: str | float = "sqrt_gradient",
        hessian_fraction: float | None = None,
        tolerance_grad: float = 1e-7,
        c1: float = 1e-4,
        c2: float = 0.9,
        max_ls_evals: int = 30,
        generator: torch.Generator | None = None,
        full_batch: bool = False,
        max_iter: int = 1,
    ):
        defaults = dict(
            lr=lr, line_search=line_search, max_cg_iter=max_cg_iter, forcing=forcing,
            hessian_fraction=hessian_fraction, tolerance_grad=tolerance_grad, c1=c1, c2=c2,
            max_ls_evals=max_ls_evals, full_batch=full_batch, max_iter=max_iter,
        )  # fmt: skip
        super().__init__(params, defaults)
        self.generator = generator

    NEEDS_CURVATURE = True
    HYPERPARAMETERS = {
        **ds.SharedHyperparameters.HYPERPARAMETERS,
        "line_search": hyper.one_of(NEWTON_LINE_SEARCHES),
        "max_cg_iter": hyper.optional(hyper.integer(1)),
        "forcing": hyper.Rule(
            lambda f: f in FORCING_RULES if isinstance(f, str) else 0 < f < 1,
            f"one of {FORCING_RULES} or a float in (0, 1)",
        ),
        "hessian_fraction": hyper.optional(hyper.in_range(0, 1, "(]")),
        "full_batch": hyper.boolean,
    }

    def reset_memory(self) -> None:
        """Forget the previous gradient norm and forcing term (Eisenstat-Walker restarts)."""
        for k in ("gnorm", "eta"):
            self.state["global"].pop(k, None)

    # ------------------------------------------------------------------ evaluation
    def _evaluate_with_hessian(self, closure: Closure, hessian_closure: Closure | None, frac):
        if hessian_closure is not None:
            ev = self.evaluate(closure)
            hev = self.evaluate(hessian_closure, create_graph=True)
            return ev.loss, ev.grads, hev.hessian
        if frac is None:
            ev = self.evaluate(closure, create_graph=True)
            return ev.loss, ev.grads, ev.hessian
        with torch.enable_grad(), double_differentiable_attention():  # HVPs run through it
            out, _, _, params = self.call_closure(closure)
        if out.dim() != 1:
            raise ValueError(
                "hessian_fraction needs a closure that returns per-sample losses (a 1-D tensor, "
                f"e.g. reduction='none'); got {type(out).__name__} of shape "
                f"{tuple(getattr(out, 'shape', ()))}"
            )
        n = out.numel()
        k = max(1, int(round(frac * n)))
        idx = torch.randperm(n, generator=self.generator)[:k].to(out.device)
        with torch.enable_grad():
            loss, sub_loss = out.mean(), out[idx].mean()
            g_sub = torch.autograd.grad(sub_loss, params, create_graph=True, allow_unused=True)
            # retain the forward: the Hessian products still run through it
            g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        g = tuple(
            torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, g, strict=True)
        )
        hess = HessianOperator.from_gradient(params, g_sub, sub_loss)
        hess.on_product = lambda: self.count_hvps(1, k)
        self.watch_start(loss, g, hess)
        c = self.counters  # one forward (counted above), gradients on n and on k samples
        c.gradients += 2
        c.gradient_samples += n + k
        return loss.detach(), g, hess

    #: steps replace their state tensors and containers, never write into them (the step
    #: transaction of :mod:`secondorder.optim.base` then copies one dict)
    state_mutated_in_place = frozenset[str]()
    state_containers_replaced = True

    # ------------------------------------------------------------------ step
    def step(self, closure: Closure, hessian_closure: Closure | None = None, *,  # type: ignore[override]
             callback: Callable[[], bool | None] | None = None) -> Tensor:
        """Up to ``max_iter`` truncated Newton iterations.

        Args:
            closure: returns the loss (per-sample losses with ``hessian_fraction``) without
                calling backward.
            hessian_closure: optional closure over a sub-batch whose Hessian is used.
            callback: called with no arguments after each iteration that moved the
                parameters (and whose start was finite); returning ``True`` ends the step
                there.

        Returns:
            The loss at the start of the step.

        Raises:
            ValueError: with ``hessian_fraction``, if the closure does not return per-sample
                losses.
        """
        grp = self.shared_hyperparameters()
        scale = ds.GroupScale.of(self)  # (read once per step, as the other settings)
        return self.run_iterations(
            lambda: self._iteration(closure, hessian_closure, grp, scale),
            grp.get("max_iter", self.defaults.get("max_iter", 1)), callback)

    def _iteration(self, closure: Closure, hessian_closure: Closure | None,
                   grp: dict[str, Any], scale: ds.GroupScale) -> tuple[Tensor, bool]:
        """One truncated Newton iteration: the loss at its start, and whether it moved the
        parameters (``False`` at a non-finite start, on which the iteration's transaction
        then raises, at a gradient below ``tolerance_grad``, and when the line search found
        no step or landed on a non-finite loss and went back)."""
        st = self.state["global"]
        frac = grp["hessian_fraction"]
        keep = (grp.get("full_batch", False) and hessian_closure is None and frac is None
                and grp["line_search"] is not None)
        x_good = st.pop("x_good", None)  # left by a fixed step that did not check its landing
        if keep:
            start = self.take_kept_evaluation()
        else:  # (full_batch switched off since the last step: free what it kept)
            self.discard_kept_evaluation()
            start = None
        if start is not None:  # the previous step's accepted trial: the parameters are there
            loss, g, hess = start.loss, start.grads, start.hessian
            self.watch_start(None, (), hess)  # (loss and gradient: read and checked below)
        else:
            loss, g, hess = self._evaluate_with_hessian(closure, hessian_closure, frac)
        if x_good is not None and not is_finite(loss, g):  # reject that step, start from x_good
            if hess is not None:
                hess.free()
            self.set_params(x_good)
            self.restart_step()
            self.reset_memory()
            loss, g, hess = self._evaluate_with_hessian(closure, hessian_closure, frac)
        try:
            # the loss, max |g| and |g| in one read (the values of max_abs(g) and
            # float(tl.norm(g))); max |g| is finite exactly when every entry of g is
            # (max propagates NaN), so this is also the finiteness check of the start
            gmax_t = g[0].abs().max()
            if len(g) > 1:
                gmax_t = torch.stack([gmax_t, *(x.abs().max() for x in g[1:])]).max()
            loss_f, gmax, gnorm = tl.read_floats([loss, gmax_t, tl.norm(g)])
            if not (math.isfinite(loss_f) and math.isfinite(gmax)):  # undone (optim.base)
                raise NonFiniteLossError(
                    f"NewtonCG: the loss ({loss_f}) or the gradient (max |g| = {gmax}) at the "
                    "current parameters is not finite; the step (in a step of several "
                    "iterations, this iteration) was undone: parameters and optimizer state are "
                    "as before it")
            if scale.lr == 0 or gmax <= grp["tolerance_grad"]:
                return loss, False
            if grp["forcing"] == "eisenstat_walker":
                eta = eisenstat_walker(gnorm, st.get("gnorm"), st.get("eta"))
            elif grp["forcing"] == "sqrt_gradient":
                eta = krylov.sqrt_gradient_forcing(gnorm)
            else:
                eta = float(grp["forcing"])
            n = sum(p.numel() for p in self.params())
            max_iter = grp["max_cg_iter"] or min(n, 250)
            res = krylov.truncated_cg(hess.matvec, tl.neg(g), rtol=eta, max_iter=max_iter)
        finally:
            if hess is not None:
                hess.free()
        p = scale.apply(res.solution)  # the direction searched: diag(lr_g / lr_max) p
        gtd = tl.dot(g, p)
        gtd_f = float(gtd)
        # the floats the line search would read itself (loss_f is float(loss), exactly)
        start_values: tuple[float, float] | None = (loss_f, gtd_f)
        if not (math.isfinite(gtd_f) and gtd_f < 0):  # safeguard: steepest descent
            p = scale.apply(tl.neg(g))
            gtd = -tl.dot(g, scale.apply(g))
            start_values = None
        st.update(gnorm=gnorm, eta=eta, cg_iterations=res.iterations, cg_status=res.status)
        x0 = self.params_at_start()
        phi = LineObjective(self, closure, x0, p, keep_graph=keep)
        t, new_loss, _ = search(
            phi, grp["line_search"], loss, g, gtd, step=scale.lr, c1=grp["c1"], c2=grp["c2"],
            max_evals=grp["max_ls_evals"], start_values=start_values,
        )  # fmt: skip
        kept = phi.take_kept() if keep else None
        moved = t != 0
        if new_loss is None:  # fixed step: the next iteration checks the landing point
            st["x_good"] = x0
        elif not bool(torch.isfinite(new_loss)):
            self.set_params(x0)
            moved = False
        elif kept is not None:
            self.keep_evaluation(kept)
            kept = None
        if kept is not None:
            kept.hessian.free()
        return loss, moved

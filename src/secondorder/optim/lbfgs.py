"""L-BFGS that never returns NaN: two-loop recursion, line searches, stochastic safeguards.

The direction is ``d = -H g`` with ``H`` the L-BFGS inverse-Hessian approximation from the
last ``history_size`` pairs ``s = x_{k+1} - x_k``, ``y = g_{k+1} - g_k`` and the initial
scaling ``H_0 = (s^T y / y^T y) I`` ([Filippova] Alg. 1; [NocedalWright2006] Alg. 7.4/7.5). The
math lives in :func:`secondorder.optim.quasi_newton.two_loop` and
:class:`~secondorder.optim.quasi_newton.LBFGSMemory`; this module is the optimizer shell.

[Filippova] reports that ``torch.optim.LBFGS`` "did not converge at all and returned NaN" in
mini-batch training. The safeguards here:

* **Curvature check** once, in the memory: a pair with ``s^T y <= curvature_eps |s| |y|`` is
  skipped (``curvature_rule="skip"``) or Powell-damped (``"powell"``).
* **Consistent pairs.** With a line search, ``y`` is measured on the batch of the step that
  took it (the line search evaluates the same closure at ``x_{k+1}``), never as the
  difference of two different batches' gradients. ``overlap_closure`` measures ``y`` on a
  sub-batch instead (multi-batch L-BFGS, [Berahas2016]: pass a closure over
  the samples this batch shares with the next one (or any fixed sub-batch); it is evaluated
  at ``x_k`` and ``x_{k+1}`` (two gradients on the overlap, counted).
* **Restart**: when ``-H g`` is not a descent direction the memory is reset and the step is
  steepest descent.
* **Rollback**: when the loss or gradient at a new point is NaN/Inf, the parameters go back
  to the last finite iterate, the memory is reset and the next initial step is halved.

In ``full_batch`` mode the closure is assumed to compute the same function at every call
(the whole data set, or [Veitch]'s fixed-batch objective eq. 28), so the loss and gradient
the line search computed at the accepted point are reused by the next ``step`` instead of
calling the closure again: about one gradient per iteration, where ``torch.optim.LBFGS``
called once per step pays one more.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
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
    max_abs,
    search,
    versions,
)
from secondorder.optim.quasi_newton import CURVATURE_RULES, LBFGSMemory

__all__ = ["FIRST_STEP_NORMS", "LBFGS", "LINE_SEARCHES"]

LINE_SEARCHES = ("strong_wolfe", "armijo", None)
#: Norms of ``g`` in the first trial step ``lr * min(1, 1 / |g|)`` (torch's, scipy's).
FIRST_STEP_NORMS = ("l1", "l2")


class LBFGS(ds.SharedHyperparameters, SecondOrderOptimizer):
    """Limited-memory BFGS with a line search and stochastic safeguards (see module doc).

    Param groups may differ in ``lr`` only, read at every step (per-group scaling of the
    one direction: :mod:`secondorder.optim.direction_groups`).

    Args:
        params: parameters or param groups.
        lr: initial step of the line search (the fixed step when ``line_search=None``). The
            very first iteration, and the first after a reset, starts from
            ``lr * min(1, 1 / |diag(lr_g / lr_max) g|_1)``, i.e. ``lr * min(1, 1 / |g|_1)``
            with one group as in ``torch.optim.LBFGS`` (``first_step_norm="l1"``).
        history_size: number of curvature pairs kept (>= 1). The default 100 is
            ``torch.optim.LBFGS``'s and pytorch-minimize's; it holds ``2 * history_size``
            vectors the size of the parameters (a smaller value saves memory on large
            models: 10 took 52 instead of 38 iterations to the same loss on MNIST softmax
            regression, ``benchmarks/full_batch_solvers.py``).
        line_search: ``"strong_wolfe"`` ([NocedalWright2006] Alg. 3.5/3.6), ``"armijo"``
            (backtracking, Alg. 3.1) or ``None`` (fixed step ``lr``).
        max_iter: iterations per ``step`` call (each reuses the closure).
        tolerance_grad: stop when ``max |g| <= tolerance_grad``.
        tolerance_change: stop when the step or the loss change falls below it.
        c1: sufficient-decrease constant.
        c2: curvature constant of the strong Wolfe conditions.
        max_ls_evals: closure calls allowed per line search.
        curvature_eps: pairs with ``s^T y <= curvature_eps |s| |y|`` are skipped or damped.
        curvature_rule: ``"skip"`` or ``"powell"``.
        full_batch: reuse the line search's loss and gradient at the next step (the closure
            must then compute the same function at every call).
        first_step_norm: the norm in that first trial ``lr * min(1, 1 / |g|)``: ``"l1"``
            (``torch.optim.LBFGS``'s) or ``"l2"`` (scipy's L-BFGS-B, ``1 / |g|_2``). On a
            model with ``n`` parameters the L1 trial can be up to ``sqrt(n)`` times shorter,
            and the first curvature pair, hence the whole trajectory, differs. On [Veitch]'s
            784-300-100-10 sigmoid MLP ``"l2"`` left a plateau at training loss 1.9 within
            100 iterations on 3 of 3 seeds, ``"l1"`` on 1 of 3 (docs/studies/veitch.md).

    Raises:
        ValueError: for an invalid value or a shared hyperparameter that differs by group.

    Example:
        >>> import torch
        >>> x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        >>> a = torch.tensor([1.0, 10.0], dtype=torch.float64)
        >>> opt = LBFGS([x], full_batch=True)
        >>> for _ in range(10):
        ...     _ = opt.step(lambda: 0.5 * (a * (x - 1) ** 2).sum())
        >>> bool(torch.allclose(x, torch.ones(2, dtype=torch.float64)))
        True
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1.0,
        history_size: int = 100,
        line_search: str | None = "strong_wolfe",
        max_iter: int = 1,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        c1: float = 1e-4,
        c2: float = 0.9,
        max_ls_evals: int = 25,
        curvature_eps: float = 1e-8,
        curvature_rule: str = "skip",
        full_batch: bool = False,
        first_step_norm: str = "l1",
    ):
        defaults = dict(
            lr=lr, history_size=history_size, line_search=line_search, max_iter=max_iter,
            tolerance_grad=tolerance_grad, tolerance_change=tolerance_change, c1=c1, c2=c2,
            max_ls_evals=max_ls_evals, curvature_eps=curvature_eps, curvature_rule=curvature_rule,
            full_batch=full_batch, first_step_norm=first_step_norm,
        )  # fmt: skip
        super().__init__(params, defaults)

    HYPERPARAMETERS = {
        **ds.SharedHyperparameters.HYPERPARAMETERS,
        "history_size": hyper.integer(1),
        "line_search": hyper.one_of(LINE_SEARCHES),
        "curvature_eps": hyper.nonnegative,
        "curvature_rule": hyper.one_of(CURVATURE_RULES),
        "first_step_norm": hyper.one_of(FIRST_STEP_NORMS),
    }

    # ------------------------------------------------------------------ helpers
    def _global(self) -> dict[str, Any]:
        st = self.state["global"]
        st.setdefault("fresh", True)
        st.setdefault("step_scale", 1.0)
        st.setdefault("n_iter", 0)
        return st

    #: steps replace their state tensors and containers, never write into them (the step
    #: transaction of :mod:`secondorder.optim.base` then copies one dict)
    state_mutated_in_place = frozenset[str]()
    state_containers_replaced = True

    # ------------------------------------------------------------------ step
    def step(self, closure: Closure, overlap_closure: Closure | None = None, *,  # type: ignore[override]
             callback: Callable[[], bool | None] | None = None) -> Tensor:
        """Run up to ``max_iter`` L-BFGS iterations on ``closure``.

        Args:
            closure: returns the loss (or per-sample losses) without calling backward.
            overlap_closure: optional closure over a sub-batch on which ``y`` is measured
                (multi-batch L-BFGS, see the module doc).
            callback: called with no arguments after each iteration that moved the
                parameters; returning ``True`` ends the step there ("iterations per step"
                in :mod:`secondorder.optim.base`).

        Returns:
            The loss at the start of the step (as ``torch.optim.LBFGS``).

        Raises:
            ValueError: if a shared hyperparameter was changed in one group only.
        """
        grp = self.shared_hyperparameters()
        st = self._global()
        mem = LBFGSMemory(st, grp["history_size"], grp["curvature_eps"], grp["curvature_rule"])
        full_batch = grp["full_batch"]

        def rollback() -> None:
            self.reset_memory()
            st["step_scale"] *= 0.5

        known = st.pop("cache_floats", None)  # (loss, float(loss), max |g|) with the cache
        orig_loss, loss, g = finite_start(self, closure, st, full_batch, rollback)
        if g is None:
            return orig_loss
        pending = st.pop("pending", None)
        if pending is not None:
            mem.update(pending[0], tl.sub(g, pending[1]))

        scale = ds.GroupScale.of(self)
        lr = scale.lr
        tol_change = grp["tolerance_change"]
        at_current = True  # (loss, g) are at the current parameters
        # max |g| and float(loss) once read: with the landing checks, or by the previous
        # step when its cached evaluation is the start of this one
        gmax: float | None = None
        loss_f: float | None = None
        if known is not None and known[0] is loss:
            loss_f, gmax = known[1], known[2]
        for it in range(grp["max_iter"]):
            if lr == 0 or (max_abs(g) if gmax is None else gmax) <= grp["tolerance_grad"]:
                break
            x0 = self.params_at_start()
            d = scale.apply(mem.descent_direction(g))
            gtd = tl.dot(g, d)
            # one read for both tests (the same sign test as gtd < 0) and for the line
            # search's start values (the floats it would read itself)
            if loss_f is None:
                loss_f, gtd_f = torch.stack([loss.reshape(()), gtd]).double().tolist()
            else:
                gtd_f = float(gtd)
            start_values: tuple[float, float] | None = (loss_f, gtd_f)
            if not gtd_f < 0:  # not a descent direction: restart from steepest descent
                mem.reset()
                st["fresh"] = True
                d = scale.apply(tl.neg(g))
                gtd = -tl.dot(g, scale.apply(g))
                gtd_f = float(gtd)
                start_values = None  # (the search computes g . d itself)
            if gtd_f > -tol_change:
                break
            if st["fresh"]:
                sg = scale.apply(g)
                if grp.get("first_step_norm", "l1") == "l1":  # (older state_dicts lack it)
                    gn = float(sum(x.abs().sum() for x in sg))
                else:
                    gn = float(sum((x * x).sum() for x in sg)) ** 0.5
                t0 = min(1.0, 1.0 / gn) * lr * st["step_scale"]
            else:
                t0 = lr * st["step_scale"]
            g_ov0 = None
            if overlap_closure is not None:
                g_ov0 = self.evaluate(overlap_closure).grads
            phi = LineObjective(self, closure, x0, d)
            t, new_loss, new_g = search(
                phi, grp["line_search"], loss, g, gtd, step=t0, c1=grp["c1"], c2=grp["c2"],
                tolerance_change=tol_change, max_evals=grp["max_ls_evals"], need_grad=True,
                start_values=start_values,
            )  # fmt: skip
            if new_g is None and it < grp["max_iter"] - 1:
                new_loss, new_g = phi(t)
            s = d  # the step t d, scaled in place: d is not needed any more (per tensor:
            for x in s:  # torch._foreach_mul_ by a float rounds unlike tl.scale in bf16)
                x.mul_(t)
            st["n_iter"] += 1
            y = None
            if overlap_closure is not None:
                ev_o = self.evaluate(overlap_closure)
                if ev_o.is_finite():
                    y = tl.sub(ev_o.grads, g_ov0)
            elif new_g is not None:
                y = tl.sub(new_g, g)
            if new_g is None:  # fixed step, last iteration: g at the new point comes next step
                if y is not None:
                    mem.update(s, y)
                elif overlap_closure is None:
                    st["pending"] = (s, g)
                st["fresh"] = False
                st["x_good"] = x0  # unchecked landing point: the next start may reject it
                at_current = False
                if t != 0 and callback is not None:
                    self.commit_iteration()  # (module doc of optim.base)
                    if self.call_iteration_callback(callback)[1]:  # it wrote the parameters:
                        st.pop("pending", None)  # a pair would straddle the write
                break
            # one read for the landing checks and the next iteration's max |g|: the values
            # of is_finite(new_loss, new_g), max_abs(new_g) and max_abs(s) (max |g| is
            # finite exactly when every entry is); the loss change on the host
            new_f, gmax, smax = _landing_values(new_loss, new_g, s)
            change = new_f - loss_f
            if not (math.isfinite(new_f) and math.isfinite(gmax)):
                self.set_params(x0)
                rollback()
                gmax = None  # (the landing's: (loss, g) are the start's again)
                break
            st["step_scale"] = 1.0
            if y is not None:
                mem.update(s, y)
            st["fresh"] = False
            loss, g, loss_f = new_loss, new_g, new_f
            if callback is not None or it + 1 < grp["max_iter"]:
                self.commit_iteration()  # the iteration stands (module doc of optim.base)
            if callback is not None and t != 0:
                stop, wrote = self.call_iteration_callback(callback)
                if wrote:  # (loss, g) are not at the parameters: the next step evaluates
                    at_current = False
                    break
                if stop:
                    break
            if smax <= tol_change or abs(change) < tol_change:
                break
        if full_batch and at_current:
            st["cache"] = (loss, g, versions(self.params()))
            if loss_f is not None and gmax is not None:
                st["cache_floats"] = (loss, loss_f, gmax)
        return orig_loss

    def reset_memory(self) -> None:
        """Forget the curvature pairs: the next direction is steepest descent."""
        st = self._global()
        LBFGSMemory(st, self.param_groups[0]["history_size"]).reset()
        st["fresh"] = True
        st.pop("pending", None)
        st.pop("cache", None)
        st.pop("cache_floats", None)


def _max_abs_tensor(v: Sequence[Tensor]) -> Tensor:
    """``max_i |v_i|`` as a 0-dim tensor, by the operations of
    :func:`~secondorder.optim.line_objective.max_abs`."""
    if len(v) == 1:
        return v[0].abs().max()
    return torch.stack([x.abs().max() for x in v]).max()


def _landing_values(new_loss: Tensor, new_g: Sequence[Tensor], s: Sequence[Tensor]
                    ) -> tuple[float, float, float]:
    """``(f(x + s), max |g(x + s)|, max |s|)`` as floats, in one host read.

    Each value is what reading it alone gives (:func:`~secondorder.tensorlist.read_floats`).
    """
    new_f, gmax, smax = tl.read_floats(
        [new_loss, _max_abs_tensor(new_g), _max_abs_tensor(s)])
    return new_f, gmax, smax

"""The L-BFGS memory: the two-loop recursion and the curvature-pair store.

:class:`LBFGSMemory` is the quasi-Newton memory as a strategy object (pytorch-minimize's
``bfgs.py`` shape): :meth:`LBFGSMemory.solve` applies the inverse-Hessian approximation by the
two-loop recursion ([Filippova] Alg. 1; [NocedalWright2006] Alg. 7.4) and :meth:`LBFGSMemory.update`
adds a curvature pair, doing the curvature-condition skip or Powell damping once, here. The
memory keeps its tensors in a plain dict (the optimizer's ``state["global"]``) as tuples that
are replaced, never mutated, so ``state_dict()`` round-trips and two optimizers loaded from
one state never share a list that one of them appends to.

The line objective and the other helpers the line-search optimizers share are in
:mod:`secondorder.optim.line_objective`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.optim.host_scalars import scalar_in_range

__all__ = ["CURVATURE_RULES", "LBFGSMemory", "two_loop"]

CURVATURE_RULES = ("skip", "powell")


def two_loop(
    grad: Sequence[Tensor],
    s_hist: Sequence[Sequence[Tensor]],
    y_hist: Sequence[Sequence[Tensor]],
    rho_hist: Sequence[Tensor],
    gamma: Tensor | float,
) -> tuple[Tensor, ...]:
    """``H grad`` by the L-BFGS two-loop recursion ([Filippova] Alg. 1, [NocedalWright2006] Alg.
       7.4).

    Args:
        grad: the vector to multiply (a tuple of tensors).
        s_hist: steps ``s_i``, oldest first.
        y_hist: gradient differences ``y_i``, oldest first.
        rho_hist: ``1 / (s_i^T y_i)`` as 0-dim tensors.
        gamma: the initial scaling ``H_0 = gamma I``, usually ``s^T y / y^T y`` of the newest
            pair.

    Returns:
        ``H grad`` where ``H`` is the L-BFGS inverse-Hessian approximation (no device sync:
        on a CPU the coefficients are read as floats, which costs none).
    """
    if len(grad) == 1 and not grad[0].is_complex() and grad[0].is_contiguous():
        return (_two_loop_one(grad[0], s_hist, y_hist, rho_hist, gamma,
                              host_scalars=grad[0].device.type == "cpu"),)
    q = tl.clone(grad)  # updated in place below: one allocation per call, not 2 per pair
    alphas = []
    for s, y, rho in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist), strict=True):
        a = rho * tl.dot(s, q)
        _add_scaled_(q, y, a, -1)
        alphas.append(a)
    r = q
    for x in r:  # H_0 q in place: no third vector (per tensor: torch._foreach_mul_ by a
        x.mul_(gamma)  # Python float rounds differently from _foreach_mul in bf16/fp16)
    for s, y, rho, a in zip(s_hist, y_hist, rho_hist, reversed(alphas), strict=True):
        b = rho * tl.dot(y, r)
        _add_scaled_(r, s, a - b)
    return r


def _add_scaled_(a: Sequence[Tensor], b: Sequence[Tensor], c: Tensor, sign: int = 1) -> None:
    """``a += sign c b`` in place for a 0-dim tensor ``c``: one fused kernel per tensor
    (``sign = -1`` rounds as ``c -> -c``: the negation is exact)."""
    if len(a) == 1:
        a[0].addcmul_(b[0], c, value=sign)
    else:
        torch._foreach_addcmul_(list(a), list(b), [c] * len(a), value=sign)


def _two_loop_one(
    grad: Tensor,
    s_hist: Sequence[Sequence[Tensor]],
    y_hist: Sequence[Sequence[Tensor]],
    rho_hist: Sequence[Tensor],
    gamma: Tensor | float,
    *,
    host_scalars: bool = False,
) -> Tensor:
    """:func:`two_loop` for one real contiguous tensor, on flat views, without the per-pair
    tensor-list calls.

    With ``host_scalars=False``, the same operations in the same order (so the same bits);
    ``q -= a y`` is ``addcmul_(y, a, value=-1)``, which rounds as ``addcmul_(y, -a)``
    (negation is exact) and saves the negation kernel. With ``host_scalars=True`` (a CPU
    tensor, whose 0-dim values are read without a device sync) the coefficients ``a`` and
    ``b`` are Python floats: per pair, two kernels instead of three in the first loop and
    four in the second (the same recursion, rounded in float64 scalars).
    """
    q = (grad.detach() if grad.requires_grad else grad).clone()
    qf = q if q.dim() == 1 else q.view(-1)
    if q.dim() == 1:
        flat = [(s[0], y[0]) for s, y in zip(s_hist, y_hist, strict=True)]
    else:
        flat = [(s[0].reshape(-1), y[0].reshape(-1)) for s, y in zip(s_hist, y_hist, strict=True)]
    if host_scalars:
        *rhos, gamma_f = _read_scalars([*rho_hist, gamma])
        largest = torch.finfo(q.dtype).max  # (float16: a coefficient may exceed its range)
        alphas_f = []
        for (s, y), rho in zip(reversed(flat), reversed(rhos), strict=True):
            a_f = scalar_in_range(rho * float(torch.dot(s, qf)), largest)
            qf.add_(y, alpha=-a_f)
            alphas_f.append(a_f)
        qf.mul_(scalar_in_range(gamma_f, largest))
        for (s, y), rho, a_f in zip(flat, rhos, reversed(alphas_f), strict=True):
            qf.add_(s, alpha=scalar_in_range(a_f - rho * float(torch.dot(y, qf)), largest))
        return q
    alphas = []
    for (s, y), rho in zip(reversed(flat), reversed(rho_hist), strict=True):
        a = rho * torch.dot(s, qf)
        qf.addcmul_(y, a, value=-1)
        alphas.append(a)
    qf.mul_(gamma)
    for (s, y), rho, a in zip(flat, rho_hist, reversed(alphas), strict=True):
        qf.addcmul_(s, a - rho * torch.dot(y, qf))
    return q


def _read_scalars(values: Sequence[Tensor | float]) -> list[float]:
    """Python floats of 0-dim tensors and floats (the tensors in one read)."""
    tensors = [v for v in values if isinstance(v, Tensor)]
    read = iter(tl.read_floats(tensors) if tensors else ())
    return [next(read) if isinstance(v, Tensor) else float(v) for v in values]


class LBFGSMemory:
    """The last ``history_size`` curvature pairs, stored in ``store`` (a dict).

    Args:
        store: where the pairs live (``optimizer.state["global"]``); keys ``lbfgs_s``,
            ``lbfgs_y``, ``lbfgs_rho`` (tuples, oldest first) and ``lbfgs_gamma``.
        history_size: pairs kept.
        curvature_eps: a pair is acceptable when ``s^T y > curvature_eps * |s| |y|``.
        curvature_rule: ``"skip"`` drops an unacceptable pair; ``"powell"`` damps it
            ([NocedalWright2006] Proc. 18.2 with ``B = I / gamma``): ``y <- theta y + (1 - theta)
            B s`` so that ``s^T y = 0.2 s^T B s``.
    """

    def __init__(
        self,
        store: dict[str, Any],
        history_size: int,
        curvature_eps: float = 1e-8,
        curvature_rule: str = "skip",
    ):
        self.store = store
        self.history_size = history_size
        self.curvature_eps = curvature_eps
        self.curvature_rule = curvature_rule
        store.setdefault("lbfgs_s", ())
        store.setdefault("lbfgs_y", ())
        store.setdefault("lbfgs_rho", ())
        store.setdefault("lbfgs_gamma", None)

    def __len__(self) -> int:
        return len(self.store["lbfgs_s"])

    def reset(self) -> None:
        """Forget all pairs (the next direction is steepest descent)."""
        self.store.update(lbfgs_s=(), lbfgs_y=(), lbfgs_rho=(), lbfgs_gamma=None)

    def solve(self, grad: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """``H grad`` (``grad`` itself when the memory is empty)."""
        st = self.store
        if not st["lbfgs_s"]:
            return tuple(grad)
        return two_loop(grad, st["lbfgs_s"], st["lbfgs_y"], st["lbfgs_rho"], st["lbfgs_gamma"])

    def descent_direction(self, grad: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """``-H grad``, new tensors (the two-loop result negated in place: no extra copy)."""
        st = self.store
        if not st["lbfgs_s"]:
            return tl.neg(grad)
        r = two_loop(grad, st["lbfgs_s"], st["lbfgs_y"], st["lbfgs_rho"], st["lbfgs_gamma"])
        torch._foreach_neg_(list(r))
        return r

    def update(self, s: Sequence[Tensor], y: Sequence[Tensor]) -> bool:
        """Add the pair ``(s, y)`` after the curvature check (one host read).

        Returns:
            Whether a pair (possibly damped) was stored.
        """
        s, y = tuple(s), tuple(y)
        sy = tl.dot(s, y)
        ss = tl.dot(s, s)
        yy = tl.dot(y, y)
        # the values of the tests below in one read; |s| |y| on the host (float64: the
        # tensor's value for float64 pairs)
        sy_f, ss_f, yy_f = tl.read_floats([sy, ss, yy])
        norms_f = math.sqrt(ss_f * yy_f)  # (never negative; NaN stays NaN)
        if not (math.isfinite(sy_f) and math.isfinite(yy_f)) or ss_f == 0.0:
            return False
        if sy_f <= self.curvature_eps * norms_f:
            if self.curvature_rule != "powell":
                return False
            gamma = self.store["lbfgs_gamma"]
            inv_gamma = 1.0 if gamma is None else 1.0 / gamma
            sbs = ss * inv_gamma
            theta = 0.8 * sbs / (sbs - sy)
            y = tl.add(tl.scale(y, theta), s, (1 - theta) * inv_gamma)
            sy = tl.dot(s, y)
            yy = tl.dot(y, y)
        st = self.store
        m = self.history_size
        st["lbfgs_s"] = (*st["lbfgs_s"], s)[-m:]
        st["lbfgs_y"] = (*st["lbfgs_y"], y)[-m:]
        st["lbfgs_rho"] = (*st["lbfgs_rho"], 1.0 / sy)[-m:]
        st["lbfgs_gamma"] = sy / yy
        return True

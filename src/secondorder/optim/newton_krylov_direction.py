"""The Krylov loop and the post-batch screening of stochastic Newton-Krylov ([Shen] Alg. 1).

The direction half of :class:`~secondorder.optim.newton_krylov.NewtonKrylov` (whose module
docstring gives the whole algorithm and the choices made where the printed one is ambiguous):

* :func:`krylov_direction`, Alg. 1 lines 10-28: CG on ``H_j dw = -g`` with early termination
  at negative curvature and the temporary damping of tiny curvatures (line 19);
* :func:`post_screen`, Alg. 1 lines 29-30: a direction with ``dw . g > 0`` has its component
  along ``g`` reflected.

Both are pure functions of the products they are given (``Product``: ``p -> H p``;
``Curvature``: ``p -> p^T H p``), testable without an optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from secondorder import tensorlist as tl

Product = Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]]
Curvature = Callable[[tuple[Tensor, ...]], Tensor]

__all__ = ["Curvature", "KrylovDirection", "Product", "krylov_direction", "post_screen"]


@dataclass
class KrylovDirection:
    """Result of :func:`krylov_direction`.

    Attributes:
        direction: ``dw``, a tuple shaped like the gradient.
        quadratic: ``dw^T H dw`` (0-dim tensor), for ``E_Q``.
        iterations: curvature evaluations done (Krylov iterations started).
        status: ``"converged"``, ``"max_iter"`` or ``"negative_curvature"``.
        damped: how many times the temporary damping of line 19 was applied.
    """

    direction: tuple[Tensor, ...]
    quadratic: Tensor
    iterations: int
    status: str
    damped: int


def krylov_direction(
    product: Product,
    curvature: Curvature,
    grad: Sequence[Tensor],
    *,
    x0: Sequence[Tensor] | None = None,
    rtol: float = 1e-4,
    max_iter: int = 20,
    damping_threshold: float = 1e-8,
    damping_scale: float = 0.01,
    early_termination: bool = True,
    printed_step: bool = False,
) -> KrylovDirection:
    """[Shen] Alg. 1 lines 10-28: CG on ``H dw = -g`` with early termination.

    Args:
        product: ``p -> H p``.
        curvature: ``p -> p^T H p`` (0-dim tensor); called before ``product(p)``.
        grad: ``g`` (the global gradient in Alg. 1).
        x0: warm start ``dw~`` (default zero; a nonzero one costs one product).
        rtol: stop when ``||r|| <= rtol ||g||``.
        max_iter: most Krylov iterations.
        damping_threshold: curvatures in ``[0, damping_threshold)`` are damped (line 18).
        damping_scale: the damped curvature is ``damping_scale * ||p||`` (line 19).
        early_termination: stop at ``kappa < 0`` (lines 14-16); ``False`` runs plain CG
            through it (the ablation of [Shen] supplementary "Early termination").
        printed_step: ``alpha = ||r|| / kappa`` as line 21 prints it, instead of CG's
            ``||r||^2 / kappa`` (for measuring the departure only).

    Returns:
        A :class:`KrylovDirection`; the docstring of
        :mod:`secondorder.optim.newton_krylov` lists the choices made.

    Example:
        >>> import torch
        >>> A = torch.tensor([[2.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
        >>> prod = lambda v: (A @ v[0],)
        >>> curv = lambda p: p[0] @ A @ p[0]
        >>> krylov_direction(prod, curv, (torch.tensor([2.0, 4.0], dtype=torch.float64),)).direction
        (tensor([-1., -1.], dtype=torch.float64),)
    """
    g = tuple(t.detach() for t in grad)
    tol2 = float(rtol * tl.norm(g)) ** 2
    if x0 is None:
        x = tl.zeros_like(g)
        r = tl.neg(g)
        moved = False
    else:
        x = tuple(t.detach() for t in x0)
        r = tl.neg(tl.add(g, product(x)))
        moved = True
    p = r
    rr = tl.dot(r, r)
    status, damped, iterations = "max_iter", 0, 0
    quad = None
    for _ in range(max_iter):
        if float(rr) <= tol2:
            status = "converged"
            break
        kappa = curvature(p)
        iterations += 1
        k = float(kappa)
        if k < 0 and early_termination:
            status = "negative_curvature"
            if not moved:
                # Nothing to return yet: steepest descent p_0 = -g, curvature kappa_0.
                x, quad = p, kappa
            break
        if 0 <= k < damping_threshold:
            kappa = damping_scale * tl.norm(p)
            damped += 1
        alpha = rr.sqrt() / kappa if printed_step else rr / kappa
        q = product(p)
        x = tl.add(x, p, alpha)
        r = tl.sub(r, tl.scale(q, alpha))
        rr_new = tl.dot(r, r)
        p = tl.add(r, p, rr_new / rr)
        rr = rr_new
        moved = True
    else:
        if float(rr) <= tol2:
            status = "converged"
    if quad is None:
        # r = -(g + H x) holds exactly (r is updated with true products), so
        # x^T H x = -x . (r + g).
        quad = -tl.dot(x, tl.add(r, g))
    return KrylovDirection(x, quad, iterations, status, damped)


def post_screen(direction: Sequence[Tensor], grad: Sequence[Tensor], *,
                printed: bool = False) -> tuple[tuple, bool]:
    """[Shen] Alg. 1 lines 29-30: make ``dw`` a descent direction for ``g``.

    If ``dw . g > 0``, the component of ``dw`` along ``g`` is reflected:
    ``dw - 2 (dw . g / |g|^2) g`` (our reading of line 30; see the docstring of
    :mod:`secondorder.optim.newton_krylov`).

    ``printed=True`` applies line 30 as printed instead, a positive rescaling that leaves
    ``dw . g > 0`` (for measuring the departure only).

    Returns:
        ``(direction, screened)``: the (possibly) corrected direction and whether it was.

    Example:
        >>> import torch
        >>> d, s = post_screen((torch.tensor([1.0, 1.0]),), (torch.tensor([1.0, 0.0]),))
        >>> d[0], s
        (tensor([-1.,  1.]), True)
    """
    d = tuple(direction)
    s = tl.dot(d, grad)
    if not float(s) > 0:
        return d, False
    if printed:  # line 30 as printed: dw <- (1 + dw.g / (|dw| |g|)) dw, still uphill
        return tl.scale(d, 1.0 + s / (tl.norm(d) * tl.norm(grad))), True
    return tl.add(d, grad, -2.0 * s / tl.dot(grad, grad)), True

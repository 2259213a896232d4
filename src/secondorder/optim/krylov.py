"""Krylov solvers on lists of tensors, written once and reused.

``matvec(v: tuple) -> tuple`` applies a symmetric operator (e.g.
:meth:`HessianOperator.matvec <secondorder.curvature.operators.HessianOperator.matvec>`);
vectors are tuples of tensors shaped like the parameters.

- :func:`truncated_cg`: (preconditioned) conjugate gradients for ``A x = b`` that stops on
  convergence, on an iteration budget, on negative curvature (the truncated Newton rule of
  [NocedalWright2006] Alg. 7.1) or on a user callback (Martens' relative-progress rule).
- :func:`steihaug_cg`: Steihaug-Toint CG for the trust-region subproblem ([NocedalWright2006]
  Alg. 7.2) in the ellipsoidal norm ``||s||_M = sqrt(s^T M s)`` of [AdaptiveNorms] (eq. 7).

Both can run without host synchronization inside the loop: every scalar is a 0-dim tensor
on the vectors' device, termination is a 0-dim boolean ``active`` flag, and each update is
masked (a finished solve takes steps of length 0 and keeps its search direction). The host
reads the flag only every ``check_every`` iterations; a value above 1 removes the syncs on
an accelerator at the price of up to ``check_every - 1`` wasted (masked) products after
termination. ``check_every=1`` (the default) reads every iteration, which costs nothing on
a CPU, so the iteration branches on the host instead of masking, and its scalar arithmetic
is done in Python floats: half the tensor operations or fewer (a Newton or trust-region
step on a small model is dominated by them). It makes the masked loop's decisions in the
same order, on numbers that differ by rounding: in float64 the exits and iteration counts
agree and the iterates agree to rounding; in float32 an exit decided by a near tie may come
one iteration earlier or later. (A scalar beyond the dtype's range becomes an infinity, as
a 0-dim tensor of that dtype would: :func:`~secondorder.optim.host_scalars.scalar_in_range`.)

Lanczos tridiagonalization lives in :mod:`secondorder.curvature.lanczos` (spectra and the
ARC subproblem both use it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.optim.host_scalars import ieee_divide, scalar_in_range
from secondorder.tensorlist import TensorList

MatVec = Callable[[TensorList], Sequence[Tensor]]
Preconditioner = Callable[[TensorList], Sequence[Tensor]]
CGCallback = Callable[[int, TensorList, TensorList], "bool | Tensor"]

STATUSES = ("max_iter", "converged", "negative_curvature", "callback", "boundary")

__all__ = ["CGResult", "STATUSES", "sqrt_gradient_forcing", "steihaug_cg", "truncated_cg"]

# Status codes kept in a 0-dim integer tensor during the loop (index into STATUSES).
_RUNNING, _CONVERGED, _NEGATIVE, _CALLBACK, _BOUNDARY = 0, 1, 2, 3, 4


@dataclass
class CGResult:
    """Outcome of :func:`truncated_cg` or :func:`steihaug_cg`.

    Attributes:
        solution: the returned vector (tuple of tensors shaped like ``b``).
        iterations: products with the operator done by the iteration (the extra product
            that forms the initial residual from ``x0`` is not counted).
        status: ``"converged"``, ``"max_iter"``, ``"negative_curvature"``, ``"callback"``
            or ``"boundary"`` (the step reached the trust-region boundary with positive
            curvature; a negative-curvature exit of :func:`steihaug_cg` also lies on the
            boundary and reports ``"negative_curvature"``).
        residual_norm: ``||b - A x||`` for :func:`truncated_cg`, ``||g + B s||`` for
            :func:`steihaug_cg` (Euclidean, 0-dim tensor, no host sync), computed from
            ``residual`` when first read (a caller that does not read it pays nothing;
            it is not a constructor argument).
        negative_curvature: the search direction ``p`` with ``p^T A p <= 0`` that stopped
            the solve, else ``None``.
        hits_boundary: whether the solution lies on the trust-region boundary (always
            ``False`` for :func:`truncated_cg`).
        iterates: ``{iteration: x}`` for the iterations listed in ``keep_iterates`` that
            were reached (iteration 0 is the starting point); an iterate may be the same
            tensors as ``solution`` (they are not copied: CG never writes into them).
        residual: the residual vector itself, ``b - A x`` for :func:`truncated_cg` and
            ``-(g + B s)`` for :func:`steihaug_cg`, kept by the recurrence (no product).
            With it the model value of the solution costs no product:
            ``g^T s + s^T B s / 2 = (g^T s - s^T r) / 2`` (:func:`steihaug_cg`).
        initial_curvature: ``p_0^T A p_0`` of the first search direction (0-dim tensor),
            ``None`` when no product was taken. For :func:`steihaug_cg`, ``p_0 = -M^{-1} g``
            is the Cauchy direction, so this is the curvature the Cauchy point needs.
        initial_residual_sqnorm: for :func:`steihaug_cg` with ``check_every=1`` or a
            forcing term, ``g^T M^{-1} g`` (the Cauchy point's ``nu^2``) as the float the
            solve read; ``None`` otherwise, and always for :func:`truncated_cg`.
    """

    solution: TensorList
    iterations: int
    status: str
    residual: TensorList
    negative_curvature: TensorList | None = None
    hits_boundary: bool = False
    iterates: dict[int, TensorList] = field(default_factory=dict)
    initial_curvature: Tensor | None = None
    initial_residual_sqnorm: float | None = None

    @cached_property
    def residual_norm(self) -> Tensor:
        """``||residual||`` (class docstring)."""
        return tl.norm(self.residual)


def _where(cond: Tensor, a: Sequence[Tensor], b: Sequence[Tensor]) -> TensorList:
    return tuple(torch.where(cond, x, y) for x, y in zip(a, b, strict=True))


def _check_common(rtol: float, atol: float, max_iter: int | None, check_every: int) -> None:
    if not rtol >= 0:
        raise ValueError(f"Invalid rtol value: {rtol}; it must be >= 0")
    if not atol >= 0:
        raise ValueError(f"Invalid atol value: {atol}; it must be >= 0")
    if max_iter is not None and max_iter < 0:
        raise ValueError(f"Invalid max_iter value: {max_iter}; it must be >= 0")
    if check_every < 1:
        raise ValueError(f"Invalid check_every value: {check_every}; it must be >= 1")


def _checked_rtol(rtol: float) -> float:
    """A forcing term's answer, checked like a given ``rtol``."""
    if not rtol >= 0:
        raise ValueError(f"Invalid rtol value from the forcing term: {rtol}; it must be >= 0")
    return rtol


def _as_vector(vec: Sequence[Tensor], name: str) -> TensorList:
    if isinstance(vec, Tensor):
        raise ValueError(
            f"{name} must be a sequence of tensors, got a single tensor of shape "
            f"{tuple(vec.shape)}; wrap it: [tensor]"
        )
    vec = tuple(vec)
    if len(vec) == 0:
        raise ValueError(f"{name} is empty: there is nothing to solve for")
    return tuple(v.detach() if v.requires_grad else v for v in vec)


def truncated_cg(
    matvec: MatVec,
    b: Sequence[Tensor],
    *,
    x0: Sequence[Tensor] | None = None,
    rtol: float = 1e-5,
    atol: float = 0.0,
    max_iter: int | None = None,
    preconditioner: Preconditioner | None = None,
    callback: CGCallback | None = None,
    check_every: int = 1,
    keep_iterates: Iterable[int] | None = None,
) -> CGResult:
    """Solve ``A x = b`` by (preconditioned) conjugate gradients, truncated Newton style.

    Preconditioned CG ([NocedalWright2006] Alg. 5.3) with the stopping rules of the truncated
    Newton method ([NocedalWright2006] Alg. 7.1; [Shen] solves ``H dw = -g`` this way):

    - convergence: ``||b - A x|| <= max(rtol * ||b||, atol)`` (Euclidean norm);
    - ``max_iter`` products (default: the dimension of ``b``);
    - negative or zero curvature ``p^T A p <= 0``: the solve stops and returns the last
      iterate, whose model value is lower than at the start. When this happens at the first
      iteration (no step taken yet) it returns ``x0 + tau * p0`` with ``p0 = M^{-1} r0``
      (``r0 = b`` when ``x0`` is None, so this is the steepest-descent direction ``b`` for
      ``b = -g``) scaled to ``tau = r0^T p0 / |p0^T A p0|`` -- the minimizer along ``p0``
      of the model with the curvature replaced by its absolute value -- or ``tau = 1``
      when the curvature is exactly zero. ``negative_curvature`` holds ``p``.
    - ``callback(i, x, r)`` returning True (a Python bool, or a 0-dim bool tensor, which
      avoids a host sync) after iteration ``i`` with iterate ``x`` and residual
      ``r = b - A x``. Martens' relative-progress rule for Hessian-free is such a callback.

    Args:
        matvec: the symmetric operator ``v -> A v`` on tuples of tensors.
        b: the right-hand side (e.g. ``-g`` for a Newton step).
        x0: the starting point (default zero; a nonzero ``x0`` costs one extra product).
        rtol: relative residual tolerance.
        atol: absolute residual tolerance.
        max_iter: most products in the iteration (default: number of entries of ``b``).
        preconditioner: ``r -> M^{-1} r`` for a symmetric positive definite ``M``.
        callback: custom stopping rule, called after every iteration (see above). With
            ``check_every > 1`` it may be called up to ``check_every - 1`` more times after
            termination with the final, unchanged ``x`` and ``r``.
        check_every: read the termination flag on the host every this many iterations
            (see the module docstring); results depend on it only through rounding.
        keep_iterates: iteration numbers whose iterate to keep in ``CGResult.iterates``
            (Martens' CG backtracking); only iterations actually reached are kept.

    Returns:
        A :class:`CGResult`.

    Raises:
        ValueError: if ``b`` is a single tensor or empty, ``x0`` is not shaped like ``b``,
            or a tolerance, ``max_iter`` or ``check_every`` is out of range.

    Example:
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> b = (torch.tensor([1.0, 2.0], dtype=torch.float64),)
        >>> res = truncated_cg(lambda v: (A @ v[0],), b)
        >>> res.status, res.iterations, res.solution[0]
        ('converged', 2, tensor([0.0909, 0.6364], dtype=torch.float64))
    """
    _check_common(rtol, atol, max_iter, check_every)
    b = _as_vector(b, "b")
    if max_iter is None:
        max_iter = sum(t.numel() for t in b)
    keep = set(keep_iterates) if keep_iterates is not None else set()
    like = b[0]

    if x0 is None:
        x = tl.zeros_like(b)
        r = b
    else:
        tl.check_like(x0, b, "x0")
        x = tuple(t.detach() for t in x0)
        r = tl.sub(b, tuple(matvec(x)))
    b_norm = tl.norm(b)
    z = r if preconditioner is None else tuple(preconditioner(r))
    p = z
    rz = tl.dot(r, z)
    r_norm = b_norm if r is b else tl.norm(r)  # (the same norm: not computed twice)
    iterates: dict[int, TensorList] = {}
    if 0 in keep:
        iterates[0] = tl.clone(x)
    if check_every == 1:
        b_norm_f, r_norm_f, rz_f = tl.read_floats([b_norm, r_norm, rz])
        tol_f = max(rtol * b_norm_f, atol)
        x, r, p, code, iterations = _truncated_cg_host(
            matvec, x, r, p, rz_f, tol_f, r_norm_f > tol_f, max_iter, preconditioner,
            callback, keep, iterates,
        )  # fmt: skip
        return _cg_result(x, r, p, code, iterations, iterates)
    tol = torch.clamp(rtol * b_norm, min=atol).to(like.device)
    active = r_norm > tol
    status = torch.where(active, _RUNNING, _CONVERGED).to(like.device)
    done_iters = torch.zeros((), dtype=torch.long, device=like.device)

    for i in range(max_iter):
        if i % check_every == 0 and not bool(active):
            break
        ap = tuple(matvec(p))
        pap = tl.dot(p, ap)
        done_iters = done_iters + active.long()
        negative = active & (pap <= 0)
        positive = active & ~negative
        alpha = torch.where(positive, rz / pap, 0.0)
        if i == 0:
            # Nothing to return yet: step along p0 with |curvature| (docstring).
            tau = torch.where(pap != 0, rz / pap.abs(), 1.0)
            alpha = torch.where(negative, tau, alpha)
        x = tl.add(x, p, alpha)
        r = tl.sub(r, tl.scale(ap, alpha))
        converged = positive & (tl.norm(r) <= tol)
        status = torch.where(negative, _NEGATIVE, torch.where(converged, _CONVERGED, status))
        active = positive & ~converged
        if callback is not None:
            stop = callback(i + 1, x, r)
            stop = torch.as_tensor(stop, dtype=torch.bool, device=like.device)
            stop = active & stop
            status = torch.where(stop, _CALLBACK, status)
            active = active & ~stop
        z = r if preconditioner is None else tuple(preconditioner(r))
        rz_new = tl.dot(r, z)
        beta = rz_new / rz
        p = _where(active, tl.add(z, p, beta), p)
        rz = torch.where(active, rz_new, rz)
        if (i + 1) in keep:
            iterates[i + 1] = x  # x is rebound, never written in place: no copy

    code, iterations = (int(v) for v in torch.stack([status, done_iters]).tolist())
    return _cg_result(x, r, p, code, iterations, iterates)


def _cg_result(x: TensorList, r: TensorList, p: TensorList, code: int, iterations: int,
               iterates: dict[int, TensorList]) -> CGResult:
    """:func:`truncated_cg`'s result from its final vectors, status code and iterations."""
    return CGResult(
        solution=x,
        iterations=iterations,
        status=STATUSES[code],
        residual=r,
        negative_curvature=p if code == _NEGATIVE else None,
        hits_boundary=False,
        iterates={k: v for k, v in iterates.items() if k <= iterations},
    )


def _truncated_cg_host(
    matvec: MatVec,
    x: TensorList,
    r: TensorList,
    p: TensorList,
    rz: float,
    tol: float,
    active: bool,
    max_iter: int,
    preconditioner: Preconditioner | None,
    callback: CGCallback | None,
    keep: set[int],
    iterates: dict[int, TensorList],
) -> tuple[TensorList, TensorList, TensorList, int, int]:
    """:func:`truncated_cg`'s loop for ``check_every=1``: the iteration decided on the host.

    The scalars (``p^T A p``, ``alpha``, ``r^T z``, ``||r||``, ``beta``) are Python floats
    read in two transfers per iteration (the curvature, then the residual's numbers with
    the callback's answer), and each vector update is one fused kernel with ``alpha`` as
    its scalar: half the tensor operations of the masked loop, whose iterates (and the
    callback's calls) it matches to rounding (``test_check_every_does_not_change_results``).
    The convergence test reads ``sqrt(r^T r)``, with ``r^T z`` itself when there is no
    preconditioner.

    Returns:
        ``(x, r, p, status code, iterations)``; ``iterates`` is filled in place.
    """
    if not active:
        return x, r, p, _CONVERGED, 0
    largest = torch.finfo(p[0].dtype).max
    for i in range(max_iter):
        ap = tuple(matvec(p))
        pap = float(tl.dot(p, ap))
        negative = pap <= 0
        if not negative:
            alpha: float | None = rz / pap
        elif i == 0:  # nothing to return yet: step along p0 with |curvature| (docstring)
            alpha = rz / abs(pap) if pap != 0 else 1.0
        else:  # stop at the last iterate (the masked loop's step of length 0)
            alpha = None
        if alpha is not None:
            alpha = scalar_in_range(alpha, largest)
            x = tl.add(x, p, alpha)
            r = tl.add(r, ap, -alpha)
        if (i + 1) in keep:
            iterates[i + 1] = x  # x is rebound, never written in place: no copy
        stop = callback(i + 1, x, r) if callback is not None else False
        if negative:
            return x, r, p, _NEGATIVE, i + 1
        z = r if preconditioner is None else tuple(preconditioner(r))
        rz_new_t = tl.dot(r, z)
        values = [rz_new_t] if preconditioner is None else [rz_new_t, tl.dot(r, r)]
        n_norm = len(values)  # r^T r is the last of these
        if isinstance(stop, Tensor):  # the callback's flag, in the same transfer
            values.append(stop.to(device=rz_new_t.device, dtype=rz_new_t.dtype))
        read = tl.read_floats(values)
        rz_new, rr = read[0], read[n_norm - 1]
        if rr >= 0 and math.sqrt(rr) <= tol:
            return x, r, p, _CONVERGED, i + 1
        if (read[n_norm] != 0) if isinstance(stop, Tensor) else stop:
            return x, r, p, _CALLBACK, i + 1
        p = tl.add(z, p, scalar_in_range(ieee_divide(rz_new, rz), largest))
        rz = rz_new  # (r^T z can be 0 with an indefinite preconditioner)
    return x, r, p, _RUNNING, max_iter


def _boundary_roots(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Roots ``tau_- <= 0 <= tau_+`` of ``a tau^2 + 2 b tau + c = 0`` (``a > 0, c <= 0``).

    Computed without cancellation (each root uses the form whose terms share a sign).
    """
    disc = torch.sqrt(torch.clamp(b * b - a * c, min=0))
    q = -(b + torch.where(b >= 0, disc, -disc))  # q has the sign of -b, |q| = |b| + disc
    safe_q = torch.where(q != 0, q, 1.0)
    r1 = q / a
    r2 = torch.where(q != 0, c / safe_q, -r1)
    return torch.minimum(r1, r2), torch.maximum(r1, r2)


def steihaug_cg(
    matvec: MatVec,
    grad: Sequence[Tensor],
    radius: float | Tensor,
    *,
    metric: Sequence[Tensor] | None = None,
    rtol: float | Callable[[float], float] = 1e-5,
    atol: float = 0.0,
    max_iter: int | None = None,
    check_every: int = 1,
) -> CGResult:
    """Steihaug-Toint CG for the trust-region subproblem in an ellipsoidal norm.

    Approximately solves ([AdaptiveNorms] eq. 7; [NocedalWright2006] Alg. 7.2)::

        min_s  m(s) = g^T s + s^T B s / 2   subject to   ||s||_M = sqrt(s^T M s) <= radius

    with ``M`` diagonal positive (``metric``; ``None`` is the Euclidean norm). Following
    [Conn2000] (Trust-Region Methods, Alg. 7.5.1) this is CG preconditioned with
    ``M^{-1}``: substituting ``s = M^{-1/2} u`` turns the problem into a Euclidean one, and
    the preconditioned iterates are exactly the transformed Euclidean Steihaug iterates, so
    their ``M``-norm increases monotonically and the first step is the Cauchy point. The
    iteration stops

    - when ``p^T B p <= 0``: the step goes to the boundary along ``p`` choosing, of the two
      intersections, the one with the lower model value ([NocedalWright2006] Alg. 7.2);
    - when the next iterate would leave the region (``||s + alpha p||_M >= radius``, tested
      on that iterate itself, which the iteration needs anyway): the step stops at the
      boundary (positive root of ``||s + tau p||_M = radius``, computed in the ``M``-norm);
    - on convergence ``||g + B s||_{M^{-1}} <= max(rtol * ||g||_{M^{-1}}, atol)`` (the
      Euclidean residual test of the transformed problem);
    - after ``max_iter`` products (default: the dimension).

    Args:
        matvec: the symmetric operator ``v -> B v``.
        grad: the gradient ``g`` (tuple of tensors).
        radius: the trust-region radius (positive).
        metric: the diagonal of ``M``, tensors shaped like ``grad`` with positive entries
            (not checked, to avoid a host sync), or ``None``.
        rtol: relative residual tolerance (in the ``M^{-1}``-norm), or a forcing term: a
            function of ``||g||_{M^{-1}}`` that returns it (e.g.
            :func:`sqrt_gradient_forcing`; one read of that norm, which ``check_every=1``
            makes anyway).
        atol: absolute residual tolerance.
        max_iter: most products (default: number of entries of ``grad``).
        check_every: read the termination flag on the host every this many iterations
            (module docstring).

    Returns:
        A :class:`CGResult`; ``hits_boundary`` tells whether ``||s||_M == radius``.

    Raises:
        ValueError: if ``radius`` is not positive, ``grad`` is empty or a single tensor,
            ``metric`` is not shaped like ``grad``, or a tolerance, ``max_iter`` or
            ``check_every`` is out of range.

    Example:
        >>> B = torch.eye(2, dtype=torch.float64)
        >>> g = (torch.tensor([3.0, 4.0], dtype=torch.float64),)
        >>> res = steihaug_cg(lambda v: (B @ v[0],), g, radius=1.0)
        >>> res.status, res.solution[0]
        ('boundary', tensor([-0.6000, -0.8000], dtype=torch.float64))
    """
    forcing = rtol if callable(rtol) else None
    _check_common(0.0 if forcing is not None else rtol, atol, max_iter, check_every)
    radius_f = float(radius)
    if not radius_f > 0:
        raise ValueError(f"Invalid radius value: {radius_f}; it must be positive")
    g = _as_vector(grad, "grad")
    like = g[0]
    inv_metric = None
    if metric is not None:
        tl.check_like(metric, g, "metric")
        metric = tuple(m.detach() for m in metric)
        inv_metric = tuple(torch.reciprocal(m) for m in metric)
    if max_iter is None:
        max_iter = sum(t.numel() for t in g)
    r = tl.neg(g)  # r = -(g + B s): the residual of B s = -g
    z = r if metric is None else tl.mul(inv_metric, r)
    rz = tl.dot(r, z)
    if forcing is not None or check_every == 1:
        rz_f = float(rz)
        r_norm_f = math.sqrt(rz_f) if rz_f >= 0 else math.nan
        if forcing is not None:
            rtol = _checked_rtol(forcing(r_norm_f))
        tol_f = max(rtol * r_norm_f, atol)
        if check_every == 1:
            # radius^2 rounded in the dtype, as the masked loop squares it (a radius whose
            # square underflows in float32 must stay a zero-size region)
            radius2_f = (radius_f * radius_f if like.dtype == torch.float64 else
                         float(torch.tensor(radius_f, dtype=like.dtype).square()))
            return _steihaug_host(matvec, g, r, z, rz_f, tol_f, r_norm_f > tol_f, radius2_f,
                                  max_iter, metric, inv_metric)

    def m_dot(a: TensorList, b: TensorList) -> Tensor:
        return tl.dot(a, b) if metric is None else tl.dot(a, tl.mul(metric, b))

    radius_t = torch.as_tensor(radius, dtype=like.dtype, device=like.device)
    radius2 = radius_t * radius_t
    s = tl.zeros_like(g)
    p = z
    r_norm = torch.sqrt(rz)
    tol = torch.clamp(rtol * r_norm, min=atol)
    active = r_norm > tol
    status = torch.where(active, _RUNNING, _CONVERGED).to(like.device)
    done_iters = torch.zeros((), dtype=torch.long, device=like.device)
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    initial_curvature = None

    for i in range(max_iter):
        if i % check_every == 0 and not bool(active):
            break
        bp = tuple(matvec(p))
        pbp = tl.dot(p, bp)
        if i == 0:
            initial_curvature = pbp
        done_iters = done_iters + active.long()
        negative = active & (pbp <= 0)
        # ||s + tau p||_M^2 = ss + 2 tau sp + tau^2 pp
        ss, sp, pp = m_dot(s, s), m_dot(s, p), m_dot(p, p)
        tau_lo, tau_hi = _boundary_roots(pp, sp, ss - radius2)
        alpha = rz / torch.where(negative, 1.0, pbp)
        s_next = tl.add(s, p, alpha)
        outside = active & ~negative & (m_dot(s_next, s_next) >= radius2)
        # Model change along p from s: -tau r^T p + tau^2 p^T B p / 2 (pick the lower root).
        rp = tl.dot(r, p)
        m_lo = -tau_lo * rp + 0.5 * tau_lo * tau_lo * pbp
        m_hi = -tau_hi * rp + 0.5 * tau_hi * tau_hi * pbp
        tau_neg = torch.where(m_lo < m_hi, tau_lo, tau_hi)
        step = torch.where(negative, tau_neg, torch.where(outside, tau_hi, alpha))
        step = torch.where(active, step, zero)
        s = tl.add(s, p, step)
        r = tl.sub(r, tl.scale(bp, step))
        interior = active & ~negative & ~outside
        z = r if metric is None else tl.mul(inv_metric, r)
        rz_new = tl.dot(r, z)
        converged = interior & (torch.sqrt(rz_new) <= tol)
        status = torch.where(
            negative,
            _NEGATIVE,
            torch.where(outside, _BOUNDARY, torch.where(converged, _CONVERGED, status)),
        )
        active = interior & ~converged
        p = _where(active, tl.add(z, p, rz_new / rz), p)
        rz = torch.where(active, rz_new, rz)

    code, iterations = (int(v) for v in torch.stack([status, done_iters]).tolist())
    return _steihaug_result(s, r, p, code, iterations, initial_curvature,
                            rz_f if forcing is not None else None)


def _steihaug_host(
    matvec: MatVec,
    g: TensorList,
    r: TensorList,
    z: TensorList,
    rz: float,
    tol: float,
    active: bool,
    radius2: float,
    max_iter: int,
    metric: TensorList | None,
    inv_metric: TensorList | None,
) -> CGResult:
    """:func:`steihaug_cg` with ``check_every=1``: the iteration decided on the host.

    Reading the flags every iteration costs a sync anyway, so the scalars of the iteration
    (``alpha``, ``beta``, the squared ``M``-norm of the iterate, the boundary roots) are
    Python floats read from the device in two transfers per iteration, and the vectors are
    updated with those numbers as the ``alpha`` of one fused kernel: a third of the tensor
    operations of the masked loop, whose iterates it matches to rounding
    (``test_steihaug_host_branching_equals_masked_loop``). The squared norm of the current
    iterate is the one read when it was the candidate, so the boundary roots need only
    ``s^T M p`` and ``p^T M p``.
    """

    def m_dot(a: TensorList, b: TensorList) -> Tensor:
        return tl.dot(a, b) if metric is None else tl.dot(a, tl.mul(metric, b))

    code, iterations, initial_curvature, rz0 = _RUNNING, 0, None, rz
    largest = torch.finfo(g[0].dtype).max  # (scalar_in_range: a kernel's float scalar)
    s: TensorList | None = None  # the zero vector until the first update
    ss = 0.0  # ||s||_M^2
    p = z
    if not active:
        code, max_iter = _CONVERGED, 0
    for _ in range(max_iter):
        bp = tuple(matvec(p))
        pbp_t = tl.dot(p, bp)
        pbp = float(pbp_t)
        iterations += 1
        if initial_curvature is None:
            initial_curvature = pbp_t
        if pbp <= 0:  # negative curvature: to the boundary, the root of lower model value
            if s is None:
                sp, (pp, rp) = 0.0, tl.read_floats([m_dot(p, p), tl.dot(r, p)])
            else:
                sp, pp, rp = tl.read_floats([m_dot(s, p), m_dot(p, p), tl.dot(r, p)])
            tau_lo, tau_hi = _boundary_roots_host(pp, sp, ss - radius2)
            m_lo = -tau_lo * rp + 0.5 * tau_lo * tau_lo * pbp
            m_hi = -tau_hi * rp + 0.5 * tau_hi * tau_hi * pbp
            step, code = (tau_lo if m_lo < m_hi else tau_hi), _NEGATIVE
            step = scalar_in_range(step, largest)
            s = tl.scale(p, step) if s is None else tl.add(s, p, step)
            r = tl.add(r, bp, -step)
            break
        alpha = scalar_in_range(rz / pbp, largest)
        s_next = tl.scale(p, alpha) if s is None else tl.add(s, p, alpha)
        r_next = tl.add(r, bp, -alpha)
        z_next = r_next if inv_metric is None else tl.mul(inv_metric, r_next)
        ss_next, rz_next = tl.read_floats([m_dot(s_next, s_next), tl.dot(r_next, z_next)])
        if ss_next >= radius2:  # leaves the region: stop on the boundary along p
            if s is None:
                sp, pp = 0.0, float(m_dot(p, p))
            else:
                sp, pp = tl.read_floats([m_dot(s, p), m_dot(p, p)])
            tau = scalar_in_range(_boundary_roots_host(pp, sp, ss - radius2)[1], largest)
            s = tl.scale(p, tau) if s is None else tl.add(s, p, tau)
            r = tl.add(r, bp, -tau)
            code = _BOUNDARY
            break
        s, r, z, ss = s_next, r_next, z_next, ss_next
        if rz_next >= 0 and math.sqrt(rz_next) <= tol:
            code = _CONVERGED
            break
        p = tl.add(z, p, scalar_in_range(rz_next / rz, largest))
        rz = rz_next
    if s is None:
        s = tl.zeros_like(g)
    return _steihaug_result(s, r, p, code, iterations, initial_curvature, rz0)


def _boundary_roots_host(a: float, b: float, c: float) -> tuple[float, float]:
    """:func:`_boundary_roots` on Python floats: its float64 values, IEEE results where a
    divisor is zero (``a`` can underflow to 0 for a tiny ``p``) and NaN for both roots where
    either is NaN (``c = -inf`` for an infinite radius)."""
    d = b * b - a * c
    disc = math.sqrt(d) if d > 0 else (0.0 if d <= 0 else math.nan)  # clamp(d, min=0) keeps NaN
    q = -(b + (disc if b >= 0 else -disc))
    r1 = ieee_divide(q, a)
    r2 = ieee_divide(c, q) if q != 0 else -r1
    if r1 != r1 or r2 != r2:  # torch.minimum/maximum propagate NaN; min/max would drop it
        return math.nan, math.nan
    return min(r1, r2), max(r1, r2)


def _steihaug_result(s: TensorList, r: TensorList, p: TensorList, code: int,
                     iterations: int, initial_curvature: Tensor | None,
                     initial_residual_sqnorm: float | None = None) -> CGResult:
    """The :class:`CGResult` of a Steihaug solve (masked or host-branching) that ended with
    status ``code``: ``p`` is the direction of negative curvature when that stopped it."""
    return CGResult(
        solution=s,
        iterations=iterations,
        status=STATUSES[code],
        residual=r,
        negative_curvature=p if code == _NEGATIVE else None,
        hits_boundary=code in (_NEGATIVE, _BOUNDARY),
        iterates={},
        initial_curvature=initial_curvature,
        initial_residual_sqnorm=initial_residual_sqnorm,
    )


def sqrt_gradient_forcing(grad_norm: float, eta_max: float = 0.5) -> float:
    """The forcing term ``eta_k = min(eta_max, sqrt(|g_k|))`` of [NocedalWright2006] Alg. 7.1.

    An inner CG solve stopped at ``|r| <= eta_k |g_k|`` gives a superlinearly convergent
    truncated Newton method ([NocedalWright2006] Thm. 7.2), and a loose solve far from the
    minimizer, where an exact Newton step is wasted. scipy's and pytorch-minimize's
    ``trust-ncg`` use this rule in the Euclidean norm; their ``newton-cg`` use it in the L1
    norm.

    Args:
        grad_norm: ``|g_k|`` (in the norm the residual is measured in).
        eta_max: the cap, also the value far from a minimizer.

    Returns:
        ``eta_k`` in ``[0, eta_max]``.

    Example:
        >>> sqrt_gradient_forcing(1e-4), sqrt_gradient_forcing(10.0)
        (0.01, 0.5)
    """
    if not (grad_norm >= 0 and math.isfinite(grad_norm)):
        raise ValueError(f"Invalid grad_norm value: {grad_norm}; it must be finite and >= 0")
    return min(eta_max, math.sqrt(grad_norm))

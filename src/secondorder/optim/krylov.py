"""Krylov solvers on lists of tensors, written once and reused. (STUB: being implemented.)

Contract (fixed; optimizers code against it). ``matvec(v: tuple) -> tuple`` applies a
symmetric operator (e.g. ``HessianOperator.matvec``); vectors are tuples of tensors.

``truncated_cg(matvec, b, *, x0=None, rtol=1e-5, atol=0.0, max_iter=None,
preconditioner=None, callback=None, check_every=1) -> CGResult``
    Solves ``A x = b`` by (preconditioned) CG, stopping on convergence
    ``|r| <= max(rtol*|b|, atol)``, on ``max_iter``, on negative or zero curvature
    ``p^T A p <= 0`` (returns the last iterate, or ``b`` scaled to a steepest-descent step if
    it happens at the first iteration; the direction is in ``negative_curvature``), or when
    ``callback(i, x, r)`` returns True (Martens' relative-progress rule is written as such a
    callback). ``preconditioner(r) -> tuple`` applies ``M^{-1}``.

``steihaug_cg(matvec, grad, radius, *, metric=None, rtol=..., max_iter=None) -> CGResult``
    Steihaug-Toint CG for ``min g^T s + s^T B s / 2`` s.t. ``||s||_M <= radius``; ``metric``
    is a tuple of positive diagonal tensors ``M`` (ellipsoidal norm ``sqrt(s^T M s)``),
    ``None`` for the Euclidean norm; ``hits_boundary`` says whether the step is on the
    boundary.

Lanczos tridiagonalization lives in :mod:`secondorder.curvature.lanczos` (spectra and the
ARC subproblem both use it).

``CGResult(solution, iterations, status, residual_norm, negative_curvature, hits_boundary,
iterates)``: ``status`` in {"converged", "max_iter", "negative_curvature", "boundary",
"callback"}; ``iterates`` (when ``keep_iterates`` is given as a list of iteration
numbers) maps those iterations to their x (for Martens' CG backtracking).
"""

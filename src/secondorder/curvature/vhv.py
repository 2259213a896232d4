"""The quadratic form ``v^T H v``: the curvature along one direction.

Newton-Krylov methods and step-size tests ([Shen] eq. 11 and its use in the Taylor
error check) need the second directional derivative ``d^2/dt^2 f(w + t v) = v^T H v``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.curvature.bicomplex import bicomplex_vhv
from secondorder.curvature.functional import LossFunction
from secondorder.curvature.hvp import check_backend, hvp

__all__ = ["vhv"]


def vhv(
    loss_fn: LossFunction,
    params: Sequence[Tensor],
    vec: Sequence[Tensor],
    backend: str = "autograd",
    h: float | None = None,
) -> Tensor:
    """Quadratic form ``v^T H(params) v``.

    ``"complex-step"`` uses the bicomplex step of [Shen] eq. 11,
    ``Im^(2) f(w + h (i1 + i2) v) / h^2`` (one forward pass, no backward; see
    :mod:`secondorder.curvature.bicomplex`). The other backends return
    ``<v, hvp(loss_fn, params, v, backend)>``.

    Args:
        loss_fn: scalar loss of a list of tensors.
        params: the point.
        vec: the direction, shaped like ``params``.
        backend: one of :data:`~secondorder.curvature.hvp.BACKENDS`.
        h: step for ``"complex-step"`` and ``"finite-difference"`` (defaults as in
            :func:`~secondorder.curvature.hvp.hvp` and
            :func:`~secondorder.curvature.complex_step.default_step` with ``order=2``).

    Returns:
        A 0-dim tensor.

    Raises:
        ValueError: bad backend, ``vec`` not shaped like ``params``, non-scalar loss.
        ComplexStepUnsupportedError: ``"complex-step"`` through an op without a rule.

    Example:
        >>> import torch
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> f = lambda ps: 0.5 * ps[0] @ A @ ps[0]
        >>> v = [torch.tensor([1.0, 1.0], dtype=torch.float64)]
        >>> w = [torch.zeros(2, dtype=torch.float64)]
        >>> [round(float(vhv(f, w, v, backend=b)), 12) for b in ("autograd", "complex-step")]
        [7.0, 7.0]
    """
    check_backend(backend)
    if backend == "complex-step":
        return bicomplex_vhv(loss_fn, params, vec, h=h)
    hv = hvp(loss_fn, params, vec, backend=backend, h=h)
    return tl.dot(tuple(v.to(x.dtype) for v, x in zip(vec, hv, strict=True)), hv)

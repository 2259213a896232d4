"""The dense Hessian of a small model, as an oracle and for inspection.

``hessian(loss_fn, params)`` materializes the ``(n, n)`` Hessian of the loss with respect to
all parameters flattened in order (``tensorlist.flatten`` layout: each tensor row-major, one
after another) by forward-over-reverse, :func:`torch.func.jacfwd` of :func:`torch.func.grad`.
It costs ``O(n)`` backward passes and ``n^2`` memory, so it refuses models above
``max_params`` parameters; use :class:`~secondorder.curvature.HessianOperator` products,
:func:`hessian_diagonal` or :func:`eigenvalues` for those.

Not :func:`torch.func.hessian` (``jacfwd(jacrev(f))``): its ``jacrev`` runs the backward
pass under ``vmap``, and the batching rule of the layer-norm backward is wrong
(pytorch/functorch#534, still in torch 2.13): on an MLP with a ``LayerNorm`` it returned a
Hessian 0.05 off in float64, not even symmetric. ``jacfwd`` of a plain ``grad`` never
batches a backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.curvature.attention import double_differentiable_attention
from secondorder.curvature.functional import LossFunction, check_params, check_scalar_loss

__all__ = ["hessian", "check_max_params"]

DEFAULT_MAX_PARAMS = 5000


def check_max_params(num_params: int, max_params: int, what: str = "a dense Hessian") -> None:
    """Raise ``ValueError`` if ``num_params`` exceeds ``max_params`` (validated first).

    Raises:
        ValueError: if ``max_params < 1`` or ``num_params > max_params``.
    """
    if not isinstance(max_params, int) or max_params < 1:
        raise ValueError(f"Invalid max_params: {max_params}; it must be a positive integer")
    if num_params > max_params:
        raise ValueError(
            f"the model has {num_params} parameters, more than max_params={max_params}: "
            f"{what} would need {num_params}x{num_params} entries; raise max_params if you "
            "really want it, or use HessianOperator products, hessian_diagonal(method="
            "'hutchinson') or eigenvalues() instead"
        )


def hessian(
    loss_fn: LossFunction, params: Sequence[Tensor], *, max_params: int = DEFAULT_MAX_PARAMS
) -> Tensor:
    """Dense Hessian of ``loss_fn`` at ``params``, shape ``(n, n)`` with ``n`` = total numel.

    Rows and columns follow the flattened parameter order: ``params[0]`` row-major, then
    ``params[1]``, ... (the layout of :func:`secondorder.tensorlist.flatten`).

    Args:
        loss_fn: scalar loss of a list of tensors (e.g. from ``functional_loss``).
        params: the point.
        max_params: refuse (``ValueError``) when ``n`` exceeds this.

    Returns:
        The symmetric ``(n, n)`` Hessian, with the parameters' dtype and device.

    Raises:
        ValueError: if ``n > max_params``, ``max_params`` is not positive, the params are
            invalid, or the loss is not a scalar.

    Example:
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> hessian(lambda ps: 0.5 * ps[0] @ A @ ps[0] + ps[1].sum() ** 2,
        ...         [torch.zeros(2, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
        tensor([[2., 1., 0.],
                [1., 3., 0.],
                [0., 0., 2.]], dtype=torch.float64)
    """
    params = check_params(params)
    n = sum(p.numel() for p in params)
    check_max_params(n, max_params)
    like = tuple(p.detach() for p in params)

    def flat_loss(flat: Tensor) -> Tensor:
        return check_scalar_loss(loss_fn(tl.unflatten(flat, like)), check_finite=False)

    with double_differentiable_attention():
        return torch.func.jacfwd(torch.func.grad(flat_loss))(tl.flatten(like))

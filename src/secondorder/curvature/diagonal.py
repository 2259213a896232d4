"""The diagonal of the Hessian: Hutchinson's estimator, the exact diagonal, spatial averaging.

Hutchinson / [Bekas2007]: for Rademacher ``z`` (entries +-1 with probability 1/2),
``E[z * (H z)] = diag(H)``, since ``E[z_i z_j] = delta_ij``. AdaHessian ([Yao2021];
[Filippova] Alg. 2, "current step estimated diagonal Hessian") uses one sample per step. The
variance of one sample's entry ``i`` is ``sum_{j != i} H_ij^2``, so the error of the mean of
``s`` samples falls like ``1/sqrt(s)``.

Spatial averaging ([Filippova] Alg. 2, ``D^(s)[ib + j] = sum_k D[ib + k] / b``, as in the
AdaHessian reference code) replaces each entry by the mean of ``|D|`` over its block: the
spatial ``k x k`` positions of each (out, in) filter of a 4-D convolution kernel, and
``block_size`` consecutive entries along the last dimension of any other tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.curvature.dense import check_max_params
from secondorder.curvature.functional import LossFunction, check_params
from secondorder.curvature.operators import CurvatureOperator, HessianOperator

__all__ = [
    "hessian_diagonal",
    "hutchinson_diagonal",
    "exact_diagonal",
    "spatially_averaged",
    "rademacher_like",
]

METHODS = ("hutchinson", "exact")


def rademacher_like(
    params: Sequence[Tensor], generator: torch.Generator | None = None
) -> tuple[Tensor, ...]:
    """Random +-1 tensors shaped like ``params`` (their dtype and device).

    Drawn on ``generator``'s device when one is given (then moved), so a seeded CPU
    generator gives the same vectors whatever the parameters' device.
    """
    out = []
    for p in params:
        dev = generator.device if generator is not None else p.device
        # Drawn directly in the floating dtype: the same draws as int64 bits, fewer passes.
        z = torch.randint(0, 2, p.shape, generator=generator, device=dev, dtype=p.dtype)
        out.append(z.mul_(2).sub_(1).to(device=p.device))
    return tuple(out)


def hutchinson_diagonal(
    operator: CurvatureOperator, *, num_samples: int = 1, generator: torch.Generator | None = None
) -> tuple[Tensor, ...]:
    """Hutchinson estimate ``mean_s z_s * (H z_s)`` of ``diag(H)`` (module docstring).

    Args:
        operator: the curvature operator ``H`` (the graph is built once, by the caller).
        num_samples: number of Rademacher probes ``s >= 1``.
        generator: random generator for the probes.

    Returns:
        A tuple shaped like ``operator.params``.

    Raises:
        ValueError: if ``num_samples < 1``.
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"Invalid num_samples: {num_samples}; it must be a positive integer")
    if num_samples == 1:  # the optimizers' hot path: no accumulator
        z = rademacher_like(operator.params, generator)
        return tl.mul(z, operator.matvec(z))
    acc = tl.zeros_like(operator.params)
    for _ in range(num_samples):
        z = rademacher_like(operator.params, generator)
        acc = tl.add(acc, tl.mul(z, operator.matvec(z)))
    return tl.scale(acc, 1.0 / num_samples)


def exact_diagonal(operator: CurvatureOperator) -> tuple[Tensor, ...]:
    """``diag(H)`` exactly, with one product ``H e_i`` per coordinate (``n`` products)."""
    params = operator.params
    flat_diag = []
    for k, p in enumerate(params):
        d = torch.empty(p.numel(), dtype=p.dtype, device=p.device)
        for i in range(p.numel()):
            e = tl.zeros_like(params)
            e[k].view(-1)[i] = 1
            d[i] = operator.matvec(e)[k].reshape(-1)[i]
        flat_diag.append(d.view_as(p))
    return tuple(flat_diag)


def _block_mean_last_dim(a: Tensor, block_size: int) -> Tensor:
    if a.dim() == 0:
        return a
    chunks = torch.split(a, block_size, dim=-1)
    return torch.cat([c.mean(dim=-1, keepdim=True).expand_as(c) for c in chunks], dim=-1)


def spatially_averaged(
    diagonal: Sequence[Tensor], block_size: int | None = None, *, signed: bool = False
) -> tuple[Tensor, ...]:
    """Spatially averaged ``|D|`` (AdaHessian's reference code), or the signed ``D`` of
    [Filippova] Alg. 2 step 3 as printed (``signed=True``).

    For a 4-D tensor (a convolution kernel ``(out, in, kh, kw)``), each entry becomes the
    mean of ``|D|`` over its ``kh x kw`` spatial block. For any other tensor, when
    ``block_size`` is given, each entry becomes the mean of ``|D|`` over consecutive blocks
    of ``block_size`` entries along the last dimension (a shorter last block averages over
    its own length); without ``block_size`` those tensors are returned as ``|D|``.

    Args:
        diagonal: the Hessian diagonal, a tuple of tensors.
        block_size: block length for non-convolution tensors, or ``None``.
        signed: average ``D`` itself instead of ``|D|``.

    Returns:
        A tuple of new tensors shaped like ``diagonal``, non-negative unless ``signed``.

    Raises:
        ValueError: if ``block_size`` is not a positive integer.

    Example:
        >>> spatially_averaged([torch.tensor([1.0, -3.0, 2.0, 4.0, 6.0])], block_size=2)[0]
        tensor([2., 2., 3., 3., 6.])
    """
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"Invalid block_size: {block_size}; it must be a positive integer")
    out = []
    for d in diagonal:
        a = d.clone() if signed else d.abs()
        if a.dim() == 4:
            a = a.mean(dim=(2, 3), keepdim=True).expand_as(a)
        elif block_size is not None:
            a = _block_mean_last_dim(a, block_size)
        out.append(a.clone() if a.dim() == 4 else a)  # |D| and block means are new tensors
    return tuple(out)


def hessian_diagonal(
    loss_fn: LossFunction | CurvatureOperator,
    params: Sequence[Tensor] | None = None,
    *,
    method: str = "hutchinson",
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    spatial_average: bool = False,
    block_size: int | None = None,
    max_params: int = 20_000,
) -> tuple[Tensor, ...]:
    """The Hessian diagonal, estimated (Hutchinson) or exact, optionally spatially averaged.

    The Hessian graph is built once (:class:`~secondorder.curvature.HessianOperator`) and
    reused for every probe; it is freed before returning. A ready operator (e.g. a
    :class:`~secondorder.curvature.dataset.DatasetHessianOperator`) may be passed instead of
    ``loss_fn``, then ``params`` is not needed.

    Args:
        loss_fn: scalar loss of a list of tensors, or a :class:`CurvatureOperator`.
        params: the point (required with a loss function).
        method: ``"hutchinson"`` (``num_samples`` Rademacher probes, module docstring) or
            ``"exact"`` (one product per coordinate, ``n`` products).
        num_samples: probes for ``"hutchinson"``.
        generator: random generator for the probes.
        spatial_average: return the spatially averaged ``|D|`` (:func:`spatially_averaged`).
        block_size: block length for averaging non-convolution tensors.
        max_params: ``"exact"`` refuses models with more parameters than this.

    Returns:
        A tuple shaped like the parameters.

    Raises:
        ValueError: bad ``method``, ``num_samples`` or ``block_size``; ``params`` missing;
            ``"exact"`` on more than ``max_params`` parameters.

    Example:
        >>> A = torch.tensor([[2.0, 1.0], [1.0, -3.0]], dtype=torch.float64)
        >>> f = lambda ps: 0.5 * ps[0] @ A @ ps[0]
        >>> hessian_diagonal(f, [torch.zeros(2, dtype=torch.float64)], method="exact")[0]
        tensor([ 2., -3.], dtype=torch.float64)
    """
    if method not in METHODS:
        raise ValueError(f"Invalid method: {method!r}; choose one of {METHODS}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"Invalid num_samples: {num_samples}; it must be a positive integer")
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"Invalid block_size: {block_size}; it must be a positive integer")
    if isinstance(loss_fn, CurvatureOperator):
        op, owned = loss_fn, False
    else:
        if params is None:
            raise ValueError("params is required when a loss function is given")
        params = check_params(params)
        if method == "exact":
            check_max_params(sum(p.numel() for p in params), max_params, "the exact diagonal")
        op, owned = HessianOperator(loss_fn, params), True
    if method == "exact":
        check_max_params(op.dim, max_params, "the exact diagonal")
    try:
        if method == "hutchinson":
            diag = hutchinson_diagonal(op, num_samples=num_samples, generator=generator)
        else:
            diag = exact_diagonal(op)
    finally:
        if owned:
            op.free()
    if spatial_average:
        diag = spatially_averaged(diag, block_size)
    return diag

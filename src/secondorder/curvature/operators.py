"""Curvature as linear operators.

One small contract (after curvlinops' ``_torch_base.py``): a subclass implements
``_matvec(vec) -> tuple`` on a tuple of tensors shaped like ``params``; the base class
handles input formats (tuple/list of tensors, a flat tensor, a numpy array), counting, and
``to_scipy()``. All operators here are symmetric.

:class:`HessianOperator` keeps the graph of one gradient so that every product at the
same point costs only the second backward (a CG loop pays the forward and first backward
once).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.curvature.attention import double_differentiable_attention
from secondorder.curvature.engine_grad import engine_grad
from secondorder.curvature.functional import LossFunction, check_params, check_scalar_loss

__all__ = ["CurvatureOperator", "HessianOperator"]


class CurvatureOperator:
    """A symmetric linear operator on vectors shaped like ``params``.

    Subclasses implement :meth:`_matvec`. ``op @ v`` and :meth:`matvec` accept a tuple or
    list of tensors (returns a tuple), a flat 1-D tensor (returns a flat tensor) or a 1-D
    numpy array (returns a numpy array).

    Attributes:
        params: the point, a tuple of tensors.
        num_products: how many products have been taken.
        on_product: optional callback run at every product (optimizers count HVPs with it).
    """

    def __init__(self, params: Sequence[Tensor]):
        self.params = check_params(params)
        self.num_products = 0
        self.on_product: Callable[[], None] | None = None

    @property
    def dim(self) -> int:
        """Number of scalar parameters."""
        return sum(p.numel() for p in self.params)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dim, self.dim)

    def _matvec(self, vec: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def matvec(self, vec):
        """Apply the operator; the output format follows the input format."""
        if isinstance(vec, np.ndarray):
            like = self.params[0]
            t = torch.as_tensor(vec.reshape(-1), dtype=like.dtype, device=like.device)
            return self.matvec(t).detach().cpu().numpy().astype(vec.dtype, copy=False)
        if isinstance(vec, Tensor):
            out = self.matvec(tl.unflatten(vec, self.params))
            return tl.flatten(out)
        tl.check_like(vec, self.params, "vec")
        self.num_products += 1
        if self.on_product is not None:
            self.on_product()
        return self._matvec(tuple(vec))

    __matmul__ = matvec

    def to_dense(self) -> Tensor:
        """Materialize as a ``(dim, dim)`` tensor by applying the operator to unit vectors."""
        like = self.params[0]
        eye = torch.eye(self.dim, dtype=like.dtype, device=like.device)
        return torch.stack([self.matvec(e) for e in eye], dim=1)

    def to_scipy(self):
        """A :class:`scipy.sparse.linalg.LinearOperator` acting on numpy vectors."""
        from scipy.sparse.linalg import LinearOperator

        dtype = np.dtype(str(self.params[0].dtype).replace("torch.", ""))
        return LinearOperator(self.shape, matvec=self.matvec, rmatvec=self.matvec, dtype=dtype)


class HessianOperator(CurvatureOperator):
    """The Hessian of a scalar loss at ``params``, applied by Pearlmutter's double backward.

    Build it from a loss function (``HessianOperator(loss_fn, params)``: one forward and
    one backward with ``create_graph=True``) or from a graph the caller already has
    (:meth:`from_gradient`), as optimizers do with the gradient of their closure. Each
    product then costs one backward through the gradient graph, with ``retain_graph``.
    Call :meth:`free` (or drop the operator) to release the graph.

    Attributes:
        loss: the loss at ``params`` (detached).
        gradient: the gradient at ``params`` (detached tuple).
    """

    def __init__(self, loss_fn: LossFunction, params: Sequence[Tensor]):
        params = check_params(params)
        xs = tuple(p.detach().requires_grad_(True) for p in params)
        with torch.enable_grad(), double_differentiable_attention():
            loss = check_scalar_loss(loss_fn(xs))
            grads = torch.autograd.grad(loss, xs, create_graph=True, allow_unused=True)
        self._init(xs, loss, grads)

    @classmethod
    def from_gradient(
        cls, params: Sequence[Tensor], grads: Sequence[Tensor | None], loss: Tensor | None = None
    ) -> HessianOperator:
        """Wrap a gradient computed with ``create_graph=True`` with respect to ``params``."""
        op = cls.__new__(cls)
        op._init(check_params(params), loss, tuple(grads))
        return op

    def _init(self, xs, loss, grads) -> None:
        CurvatureOperator.__init__(self, xs)
        # (detached already when an optimizer's evaluation passes it: no second call)
        self.loss = loss.detach() if loss is not None and loss.requires_grad else loss
        self._grads = grads
        self.gradient = tuple(
            torch.zeros_like(x) if g is None else g.detach() for x, g in zip(xs, grads, strict=True)
        )
        # Only gradients that depend on the parameters carry a graph; the rest have zero
        # Hessian rows (e.g. a bias of a linear loss).
        self._live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]

    def _matvec(self, vec: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        if self._grads is None:
            raise RuntimeError("this HessianOperator's graph has been freed")
        if not self._live:
            return tuple(torch.zeros_like(p) for p in self.params)
        hv = engine_grad(  # torch.autograd.grad's engine call (matvec checked the shapes)
            [self._grads[i] for i in self._live],
            self.params,
            grad_outputs=[vec[i] for i in self._live],
            retain_graph=True,
            allow_unused=True,
        )
        if len(self._live) == len(self.params) and all([h is not None for h in hv]):
            return hv
        return tuple(
            torch.zeros_like(p) if h is None else h for p, h in zip(self.params, hv, strict=True)
        )

    def free(self) -> None:
        """Release the gradient graph; later products raise ``RuntimeError``."""
        self._grads = None
        self._live = []

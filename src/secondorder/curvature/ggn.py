"""The generalized Gauss-Newton matrix ``G = J^T H_L J`` as a linear operator.

For a loss ``f(w) = L(z(w))`` with network outputs ``z(w)`` (Jacobian ``J = dz/dw``) and an
output loss ``L`` (Hessian ``H_L`` with respect to ``z``), the Hessian is
``J^T H_L J + sum_k dL/dz_k d^2 z_k/dw^2``; the generalized Gauss-Newton matrix keeps the
first term ([Schraudolph2002]; [Martens2010], Sec. 4.2; [AdaptiveNorms] Sec. 2 and [Shen]'s
discussion of ``J^T J``). It is positive semi-definite whenever ``L`` is convex in ``z``
(squared error, softmax cross-entropy), which makes it the curvature of choice for
Hessian-free CG.

:class:`GGNOperator` runs the forward pass once and keeps its graph; each product then costs
three backward passes through stored graphs:

1. ``J v`` by the double-vjp trick: ``J^T u`` is built once with ``create_graph`` for a
   dummy ``u``, and ``J v = d<J^T u, v>/du``;
2. ``H_L (J v)`` by a double backward through the output loss (small: outputs only);
3. ``J^T (H_L J v)`` by a vjp with ``retain_graph``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property

import torch
from torch import Tensor, nn

from secondorder import tensorlist as tl
from secondorder.curvature.attention import double_differentiable_attention
from secondorder.curvature.functional import check_params, check_scalar_loss, functional_model
from secondorder.curvature.operators import CurvatureOperator

OutputFunction = Callable[[Sequence[Tensor]], Tensor]
OutputLoss = Callable[[Tensor], Tensor]

__all__ = ["GGNOperator", "ggnvp"]


def _check_outputs(outputs: Tensor) -> Tensor:
    if not isinstance(outputs, Tensor):
        raise ValueError(
            f"output_fn must return a tensor of network outputs, got {type(outputs).__name__}"
        )
    return outputs


class GGNOperator(CurvatureOperator):
    """Generalized Gauss-Newton products ``J^T H_L J v`` with the forward graph built once.

    Args:
        output_fn: ``output_fn(params) -> outputs``, the network outputs as a function of
            the parameter tensors (e.g. logits of a batch).
        output_loss: ``output_loss(outputs) -> scalar``, the loss of the outputs (e.g.
            cross-entropy against the batch targets).
        params: the point, a sequence of tensors.

    Attributes:
        loss: the loss at ``params`` (detached).
        outputs: the network outputs at ``params`` (detached).

    Raises:
        ValueError: if ``params`` is not a non-empty sequence of tensors, ``output_fn`` does
            not return a tensor, or the loss is not a scalar.
        NonFiniteLossError: if the loss is NaN or infinite.

    Example:
        >>> X = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
        >>> G = GGNOperator(lambda ps: X @ ps[0], lambda z: 0.5 * (z**2).sum(),
        ...                 [torch.zeros(2, dtype=torch.float64)])
        >>> bool(torch.allclose(G.to_dense(), X.T @ X))
        True
    """

    def __init__(
        self, output_fn: OutputFunction, output_loss: OutputLoss, params: Sequence[Tensor]
    ):
        params = check_params(params)
        xs = tuple(p.detach().requires_grad_(True) for p in params)
        super().__init__(xs)
        with torch.enable_grad(), double_differentiable_attention():
            outputs = _check_outputs(output_fn(xs))
            z = outputs.detach().requires_grad_(True)
            loss = check_scalar_loss(output_loss(z))
            (dloss_dz,) = torch.autograd.grad(loss, z, create_graph=True)
            # J^T u for a dummy u, kept with its graph: J v = d<J^T u, v>/du.
            u = torch.zeros_like(outputs, requires_grad=True)
            jtu = torch.autograd.grad(
                outputs, xs, grad_outputs=u, create_graph=True, allow_unused=True
            )
        self.loss = loss.detach()
        self.outputs = outputs.detach()
        self._outputs, self._z, self._dloss_dz, self._u = outputs, z, dloss_dz, u
        self._live = [i for i, g in enumerate(jtu) if g is not None and g.requires_grad]
        self._jtu = [jtu[i] for i in self._live]
        self._loss_depends_on_z = dloss_dz.requires_grad

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        criterion: Callable[[Tensor, Tensor], Tensor],
        inputs: Tensor,
        targets: Tensor,
        *,
        params: Sequence[Tensor] | None = None,
        dtype: torch.dtype | None = None,
    ) -> GGNOperator:
        """The GGN of ``criterion(model(inputs), targets)`` at the model's parameters.

        Uses :func:`torch.func.functional_call`, like
        :func:`~secondorder.curvature.functional.functional_loss`: the variables are the
        model's parameters that require grad (or ``params``), in ``named_parameters``
        order; buffers are copied per call, so batch-norm statistics never change.

        Args:
            model: the network.
            criterion: loss of ``(outputs, targets)``, reducing to a scalar.
            inputs: the batch inputs.
            targets: the batch targets.
            params: which of the model's parameters are the variables (default: all that
                require grad).
            dtype: floating-point precision to evaluate the model and the loss in, e.g.
                ``torch.float32`` for a bfloat16 model (see
                :func:`~secondorder.curvature.functional.functional_model`).

        Returns:
            A :class:`GGNOperator`.

        Raises:
            ValueError: if no parameter requires grad (or as :class:`GGNOperator`).
        """
        output_fn, variables = functional_model(model, inputs, params=params, dtype=dtype)
        if dtype is not None and targets.is_floating_point():
            targets = targets.to(dtype)

        def output_loss(outputs: Tensor) -> Tensor:
            return criterion(outputs, targets)

        return cls(output_fn, output_loss, variables)

    def _check_alive(self) -> None:
        if self._outputs is None:
            raise RuntimeError("this GGNOperator's graph has been freed")

    def jvp(self, vec: Sequence[Tensor]) -> Tensor:
        """``J v``, shaped like the outputs (one backward through the stored graph)."""
        self._check_alive()
        if not self._live:
            return torch.zeros_like(self.outputs)
        (jv,) = torch.autograd.grad(
            self._jtu, self._u, grad_outputs=[vec[i] for i in self._live], retain_graph=True
        )
        return jv

    def loss_hvp(self, w: Tensor) -> Tensor:
        """``H_L w``: the output loss's Hessian (with respect to the outputs) times ``w``."""
        self._check_alive()
        if not self._loss_depends_on_z:  # L linear in z
            return torch.zeros_like(w)
        (hw,) = torch.autograd.grad(self._dloss_dz, self._z, grad_outputs=w, retain_graph=True)
        return hw

    def vjp(self, w: Tensor) -> tuple[Tensor, ...]:
        """``J^T w``, shaped like the parameters."""
        self._check_alive()
        out = torch.autograd.grad(
            self._outputs, self.params, grad_outputs=w, retain_graph=True, allow_unused=True
        )
        return tuple(
            torch.zeros_like(p) if g is None else g for p, g in zip(self.params, out, strict=True)
        )

    @cached_property
    def gradient(self) -> tuple[Tensor, ...]:
        """The loss gradient ``J^T dL/dz`` at ``params`` (computed on first access)."""
        return self.vjp(self._dloss_dz.detach())

    def _matvec(self, vec: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        vec = tuple(v.to(p.dtype) for v, p in zip(vec, self.params, strict=True))
        return self.vjp(self.loss_hvp(self.jvp(vec)))

    def free(self) -> None:
        """Release the graphs; later products raise ``RuntimeError``."""
        self._outputs = self._z = self._dloss_dz = self._u = None
        self._jtu = []
        self._live = []


def ggnvp(
    output_fn: OutputFunction,
    output_loss: OutputLoss,
    params: Sequence[Tensor],
    vec: Sequence[Tensor],
) -> tuple[Tensor, ...]:
    """One generalized Gauss-Newton product ``J^T H_L J v`` (see :class:`GGNOperator`).

    For several products at the same point build a :class:`GGNOperator` once instead.

    Args:
        output_fn: ``output_fn(params) -> outputs``.
        output_loss: ``output_loss(outputs) -> scalar``.
        params: the point.
        vec: the direction, shaped like ``params``.

    Returns:
        A tuple of tensors shaped like ``params``.

    Raises:
        ValueError: as :class:`GGNOperator`, or if ``vec`` is not shaped like ``params``.
    """
    params = check_params(params)
    tl.check_like(vec, params, "vec")
    return GGNOperator(output_fn, output_loss, params).matvec(tuple(vec))

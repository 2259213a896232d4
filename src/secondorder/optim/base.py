"""The protocol every secondorder optimizer shares.

A :class:`SecondOrderOptimizer` is a :class:`torch.optim.Optimizer` whose ``step`` takes a
closure that **re-evaluates the model on the current batch and returns the loss without
calling backward**::

    def closure():
        return criterion(model(inputs), targets)

    optimizer.step(closure)

The optimizer differentiates the loss itself (with ``create_graph`` only when it needs
curvature) and drops every graph before ``step`` returns, so memory after 100 steps equals
memory after one. The closure may also return per-sample losses (a 1-D tensor, e.g. from
``reduction="none"``): they are averaged, and their count is used for the sample counters.

Costs are counted here, once, for every optimizer: loss evaluations, gradients and
Hessian(-like) vector products, each also in samples (see :class:`CostCounter`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.curvature.attention import double_differentiable_attention
from secondorder.curvature.operators import HessianOperator
from secondorder.errors import NonFiniteLossError
from secondorder.optim.distributed import data_parallel_evaluate

Closure = Callable[[], Tensor]

__all__ = ["Closure", "CostCounter", "Evaluation", "SecondOrderOptimizer"]


@dataclass
class CostCounter:
    """Cumulative work done by an optimizer.

    ``*_samples`` count the samples each operation touched: a gradient on a batch of
    ``b`` samples adds 1 to ``gradients`` and ``b`` to ``gradient_samples``. Samples are
    known when the closure returns per-sample losses, or from
    :attr:`SecondOrderOptimizer.samples_per_evaluation`; otherwise they stay 0.
    """

    loss_evals: int = 0
    gradients: int = 0
    hvps: int = 0
    loss_samples: int = 0
    gradient_samples: int = 0
    hvp_samples: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Evaluation:
    """Result of :meth:`SecondOrderOptimizer.evaluate`.

    Attributes:
        loss: the mean loss, detached, 0-dim.
        grads: the gradient (detached), one tensor per trainable parameter; ``None`` when
            no gradient was asked for.
        samples: number of samples the closure evaluated (0 when unknown).
        hessian: a :class:`HessianOperator` at this point when ``create_graph`` was asked
            for; each product is counted as one HVP. Call ``hessian.free()`` when done.
    """

    loss: Tensor
    grads: tuple[Tensor, ...] | None
    samples: int
    hessian: HessianOperator | None = None

    def is_finite(self) -> bool:
        """Whether loss and gradient are finite (one host sync)."""
        ok = torch.isfinite(self.loss)
        if self.grads is not None:
            ok = ok & tl.all_finite(self.grads)
        return bool(ok)


def _to_device(obj: Any, device: torch.device | None) -> Any:
    """Move every tensor inside dicts, lists, tuples and plain objects to ``device``."""
    if device is None:
        return obj
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        moved = [_to_device(v, device) for v in obj]
        return type(obj)(moved) if not hasattr(obj, "_fields") else type(obj)(*moved)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        for k, v in vars(obj).items():
            setattr(obj, k, _to_device(v, device))
    return obj


class SecondOrderOptimizer(torch.optim.Optimizer):
    """Base class: closure protocol, differentiation, parameter access, cost counters.

    Subclasses implement ``step(closure)`` with :meth:`evaluate`, :meth:`params`,
    :meth:`set_params` / :meth:`add_to_params`, and keep state that spans all groups (a
    quasi-Newton memory, a trust radius) in ``self.state["global"]``, which
    ``state_dict()`` round-trips. Per-group hyperparameters are read from
    ``self.param_groups``; :meth:`group_of` maps each trainable tensor to its group.

    Attributes:
        samples_per_evaluation: samples per closure call, used for the sample counters when
            the closure returns a scalar (``None``: unknown).
    """

    def __init__(
        self, params: Iterable[Tensor] | Iterable[dict[str, Any]], defaults: dict[str, Any]
    ):
        super().__init__(params, defaults)
        self.samples_per_evaluation: int | None = None

    # ----------------------------------------------------------------- parameters
    def params(self) -> tuple[Tensor, ...]:
        """The trainable tensors of all groups, in group order (those requiring grad)."""
        return tuple(p for g in self.param_groups for p in g["params"] if p.requires_grad)

    def group_of(self) -> tuple[dict[str, Any], ...]:
        """The param group of each tensor of :meth:`params`, in the same order."""
        return tuple(g for g in self.param_groups for p in g["params"] if p.requires_grad)

    @torch.no_grad()
    def set_params(self, values: Sequence[Tensor]) -> None:
        """Copy ``values`` into the trainable parameters."""
        torch._foreach_copy_(list(self.params()), list(values))

    @torch.no_grad()
    def add_to_params(self, direction: Sequence[Tensor], alpha: float | Tensor = 1.0) -> None:
        """``params += alpha * direction`` in place (``alpha`` may be a 0-dim tensor)."""
        ps = list(self.params())
        if isinstance(alpha, Tensor):
            torch._foreach_add_(ps, torch._foreach_mul(list(direction), alpha))
        else:
            torch._foreach_add_(ps, list(direction), alpha=alpha)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict; state that spans all groups is copied and moved to the params' device.

        ``torch.optim.Optimizer`` casts per-parameter state but stores other entries (here
        ``"global"`` and ``"counters"``) by reference; this copies them, so two optimizers
        never share a quasi-Newton memory, and moves their tensors next to the parameters
        (a CPU checkpoint loads into a CUDA optimizer).
        """
        super().load_state_dict(state_dict)
        params = self.params()
        device = params[0].device if params else None
        for key in list(self.state):
            if not isinstance(key, Tensor):
                self.state[key] = _to_device(copy.deepcopy(self.state[key]), device)

    # ----------------------------------------------------------------- counters
    @property
    def counters(self) -> CostCounter:
        """Cumulative cost counters (kept in the state, so they survive ``state_dict``)."""
        c = self.state.get("counters")
        if not isinstance(c, CostCounter):
            c = CostCounter(**c) if isinstance(c, dict) else CostCounter()
            self.state["counters"] = c
        return c

    def count_hvps(self, n: int = 1, samples: int = 0) -> None:
        """Record ``n`` Hessian(-like) vector products on ``samples`` samples each."""
        c = self.counters
        c.hvps += n
        c.hvp_samples += n * samples

    # ----------------------------------------------------------------- evaluation
    @data_parallel_evaluate  # averages across ranks when torch.distributed is initialized
    def evaluate(
        self,
        closure: Closure,
        *,
        grad: bool = True,
        create_graph: bool = False,
        check_finite: bool = False,
    ) -> Evaluation:
        """Call the closure and differentiate it.

        Args:
            closure: re-evaluates the model and returns the loss (no backward).
            grad: compute the gradient.
            create_graph: keep the gradient's graph and return a counted
                :class:`HessianOperator` in ``Evaluation.hessian``.
            check_finite: raise :class:`NonFiniteLossError` on a NaN/Inf loss (one sync).

        Returns:
            An :class:`Evaluation`.

        Raises:
            ValueError: if the closure returns something other than a tensor with one
                element or a 1-D tensor of per-sample losses.
            NonFiniteLossError: if ``check_finite`` and the loss is not finite.
        """
        params = self.params()
        if not params:
            raise ValueError("no parameter requires grad: the optimizer has nothing to optimize")
        # A graph kept for HVPs needs attention that autograd can differentiate twice.
        with torch.enable_grad(), double_differentiable_attention(enabled=create_graph):
            out = closure()
            loss, samples = self._reduce(out)
            c = self.counters
            c.loss_evals += 1
            c.loss_samples += samples
            if check_finite and not bool(torch.isfinite(loss.detach())):
                raise NonFiniteLossError(f"the closure returned a non-finite loss: {loss.item()}")
            if not grad:
                return Evaluation(loss.detach(), None, samples)
            if not loss.requires_grad:
                raise ValueError(
                    "the closure's loss does not require grad: return the loss tensor "
                    "computed from the parameters, inside the closure, without detaching it"
                )
            grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
        c.gradients += 1
        c.gradient_samples += samples
        hessian = None
        if create_graph:
            hessian = HessianOperator.from_gradient(params, grads, loss)
            hessian.on_product = lambda: self.count_hvps(1, samples)
            gs = hessian.gradient
        else:
            gs = tuple(
                torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)
            )
        return Evaluation(loss.detach(), gs, samples, hessian)

    def _reduce(self, out: Tensor) -> tuple[Tensor, int]:
        if not isinstance(out, Tensor):
            raise ValueError(
                f"the closure must return the loss tensor, got {type(out).__name__}; "
                "secondorder closures return the loss and do not call backward()"
            )
        if out.dim() == 1:
            return out.mean(), out.numel()
        if out.numel() != 1:
            raise ValueError(
                f"the closure returned a tensor of shape {tuple(out.shape)}; return a scalar "
                "loss or a 1-D tensor of per-sample losses"
            )
        return out.reshape(()), int(self.samples_per_evaluation or 0)

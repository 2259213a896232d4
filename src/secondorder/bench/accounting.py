"""Cost accounting measured by the harness, not reported by the optimizer.

The benchmark compares optimizers that do very different amounts of work per step (a
line search evaluates the loss several times, Newton-CG takes Hessian-vector products), so
"steps" and "epochs" are not comparable units. Following [Xu2020],
"Second-order optimization for non-convex machine learning: an empirical study", Sec. 4),
costs are counted in *propagations* over samples and reported in **backprop-equivalents**.

What is counted (by hooks the harness installs; the optimizer is never asked):

- a **forward pass**: every call of the model (a forward hook on the top-level module;
  ``torch.func.functional_call`` goes through it too); its samples are the first dimension
  of the first input. Forward-mode and complex-step evaluations through the model are
  forward passes as well.
- a **backward pass**: every autograd pass that reaches the trainable parameters
  (``loss.backward()``, ``torch.autograd.grad`` with or without ``create_graph``), detected
  once per pass by :func:`torch.autograd.graph.register_multi_grad_hook` (``mode="any"``).
  It is attributed to the most recent forward pass and takes its samples. The **first**
  backward after a forward is a *gradient*; every further backward before the next forward
  is a *Hessian-vector product* (a double backward through the kept gradient graph, or a
  repeated backward with ``retain_graph``).

Weights, in backprop-equivalents per sample (Xu et al.: a gradient costs two propagations,
a Hessian-vector product on top of it two more; we call two propagations one
backprop-equivalent):

=====================  ======  =====================================================
operation               weight  why
=====================  ======  =====================================================
forward pass             1/2    one propagation
gradient (1st backward)  1/2    one propagation; forward + gradient = 1
Hessian-vector product   1      Pearlmutter R-forward + R-backward: two propagations
=====================  ======  =====================================================

So one epoch of SGD costs 1 backprop-equivalent per training sample, and a Newton-CG step
with ``k`` CG iterations on a batch of ``b`` samples costs ``b (1 + k)``. Reported numbers
are normalized by the training-set size: ``backprops`` = weighted samples / ``train_size``,
i.e. **full-training-set gradient equivalents** (1.0 = the cost of one SGD epoch), and
``epochs`` = forward samples / ``train_size`` (samples processed, line-search and
curvature evaluations included).

Evaluation of train/validation/test metrics by the harness runs inside
:meth:`CostMeter.paused` and is not counted.

**Curvature operators the harness builds itself** (the runner's ``ggn_closure``, see
:func:`secondorder.bench.runner.make_ggn_closure`). A
:class:`~secondorder.curvature.ggn.GGNOperator` differentiates with respect to *detached
copies* of the parameters (``functional_call``), so the hooks see its forward pass (it goes
through the model's forward hook) but none of its backward passes. The harness counts those
explicitly with :meth:`CostMeter.count`, by the rule above:

- building the operator: the forward (hook) plus the backward that builds ``J^T u`` with
  ``create_graph`` -- the first backward after that forward, counted as a *gradient*;
- each product ``J^T H_L J v``: one *Hessian-vector product* on the batch. It runs a
  backward through the ``J^T u`` graph (``J v``), a double backward through the output loss
  (outputs only) and a backward through the forward graph (``J^T w``); Pearlmutter's
  R-forward + backward does the same work in two propagations, and Martens (2010, Sec. 4.2)
  prices a Gauss-Newton product like a Hessian-vector product, so it gets the HVP weight.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from torch import Tensor, nn
from torch.autograd.graph import register_multi_grad_hook

__all__ = ["WEIGHTS", "Costs", "CostMeter"]

#: Backprop-equivalents per sample of each counted operation (module docstring).
WEIGHTS: dict[str, float] = {"forward": 0.5, "gradient": 0.5, "hvp": 1.0}


@dataclass
class Costs:
    """Cumulative counts of a run (module docstring for what each one counts).

    Attributes:
        forwards, gradients, hvps: number of passes of each kind.
        forward_samples, gradient_samples, hvp_samples: samples they touched.
        train_size: training-set size used for the normalized figures.
    """

    forwards: int = 0
    forward_samples: int = 0
    gradients: int = 0
    gradient_samples: int = 0
    hvps: int = 0
    hvp_samples: int = 0
    train_size: int = 1

    @property
    def backprop_samples(self) -> float:
        """Weighted samples: ``sum(WEIGHTS[kind] * samples)``."""
        return (
            WEIGHTS["forward"] * self.forward_samples
            + WEIGHTS["gradient"] * self.gradient_samples
            + WEIGHTS["hvp"] * self.hvp_samples
        )

    @property
    def backprops(self) -> float:
        """Backprop-equivalents in full-training-set gradients (1.0 = one SGD epoch)."""
        return self.backprop_samples / self.train_size

    @property
    def epochs(self) -> float:
        """Epoch-equivalents: forward samples / training-set size."""
        return self.forward_samples / self.train_size

    def as_dict(self) -> dict[str, float]:
        """Counts plus the derived ``backprops`` and ``epochs``."""
        d = asdict(self)
        d.pop("train_size")
        d["backprops"] = self.backprops
        d["epochs"] = self.epochs
        return d


def _batch_size(inputs: tuple) -> int:
    for x in inputs:
        if isinstance(x, Tensor):
            return int(x.shape[0]) if x.dim() > 0 else 1
    return 1


class CostMeter:
    """Counts forward and backward passes of ``model`` while it is attached.

    Use as a context manager (or call :meth:`close`) so the hooks are removed::

        with CostMeter(model, train_size=len(problem.train)) as meter:
            optimizer.step(closure)
            with meter.paused():
                evaluate(model)
        meter.costs.backprops

    Args:
        model: the module whose top-level calls are forward passes.
        train_size: training-set size for the normalized figures (positive).

    Raises:
        ValueError: if ``train_size`` is not positive or the model has no trainable
            parameter.
    """

    def __init__(self, model: nn.Module, train_size: int):
        if train_size < 1:
            raise ValueError(f"Invalid train_size: {train_size}; it must be positive")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no parameter that requires grad")
        self.costs = Costs(train_size=int(train_size))
        self._active = True
        self._last_samples = 0
        self._backwards_since_forward = 0
        self._handles = [
            model.register_forward_hook(self._on_forward),
            register_multi_grad_hook(params, self._on_backward, mode="any"),
        ]

    def _on_forward(self, module: nn.Module, inputs: tuple, output) -> None:
        if not self._active:
            return
        b = _batch_size(inputs)
        self.costs.forwards += 1
        self.costs.forward_samples += b
        self._last_samples = b
        self._backwards_since_forward = 0

    def _on_backward(self, grad) -> None:
        if not self._active:
            return
        c = self.costs
        if self._backwards_since_forward == 0:
            c.gradients += 1
            c.gradient_samples += self._last_samples
        else:
            c.hvps += 1
            c.hvp_samples += self._last_samples
        self._backwards_since_forward += 1

    def count(self, kind: str, samples: int, n: int = 1) -> None:
        """Count ``n`` passes of ``kind`` the hooks cannot see (module docstring).

        Args:
            kind: ``"forward"``, ``"gradient"`` or ``"hvp"``.
            samples: samples each pass touched (>= 0).
            n: number of passes (>= 0).

        Raises:
            ValueError: for an unknown ``kind`` or negative ``samples``/``n``.
        """
        if kind not in WEIGHTS:
            raise ValueError(f"Invalid kind: {kind!r}; choose one of {tuple(WEIGHTS)}")
        if samples < 0 or n < 0:
            raise ValueError(f"Invalid count: {n} passes of {samples} samples")
        if not self._active:
            return
        c = self.costs
        attr = {"forward": "forwards", "gradient": "gradients", "hvp": "hvps"}[kind]
        setattr(c, attr, getattr(c, attr) + n)
        setattr(c, f"{kind}_samples", getattr(c, f"{kind}_samples") + n * samples)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Do not count what runs inside (the harness's own evaluations)."""
        prev = self._active
        self._active = False
        try:
            yield
        finally:
            self._active = prev

    def close(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> CostMeter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

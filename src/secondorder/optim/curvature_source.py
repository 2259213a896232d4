"""Where the trust-region, ARC and Hessian-free optimizers get their local quadratic model.

One step needs the loss and gradient on the closure's batch and a curvature operator ``B``:

- ``curvature="hessian"``: the Hessian of the closure's loss (one graph serves gradient and
  products), or -- as [AdaptiveNorms] does (Alg. 1 line 3, sub-sampled ``B_t``) -- the Hessian of
  ``hessian_closure``'s loss, a closure on a separate (usually smaller) batch;
- ``curvature="gauss_newton"``: the generalized Gauss-Newton matrix ([Martens2010];
  [Schraudolph2002]. The optimizer does not see the model, so ``step`` takes a
  ``ggn_closure`` returning a :class:`~secondorder.curvature.operators.CurvatureOperator`
  at the current parameters, e.g. ``lambda: GGNOperator.from_model(model, criterion, x, y)``
  on the batch of the caller's choice. Any operator with the same contract works (a Fisher,
  a damped or a block-diagonal approximation).

Every product is counted in the optimizer's ``counters.hvps``. A :class:`LocalModel` is a
context manager: ``with local_model(...) as model:`` releases the operator's graph on exit.

**Working precision.** With float16 or bfloat16 parameters the model's gradient and
products are handed to the solvers in float32 (:func:`~secondorder.optim.base.working_dtype`,
:class:`WorkingPrecisionOperator`): the closure and every Hessian-vector product still run
in the parameters' dtype, but Krylov scalars, adaptive-norm accumulators (whose ``epsilon``
of 1e-8 is 0 in float16), predicted decreases and steps are accumulated in float32, as
mixed-precision training does; the step is rounded to the parameters' dtype when it is
applied. float32 and float64 parameters are untouched (no copy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.curvature.operators import CurvatureOperator
from secondorder.optim import hyperparameters as hyper
from secondorder.optim.base import (
    Closure,
    Evaluation,
    SecondOrderOptimizer,
    needs_working_precision,
    to_working_precision,
)
from secondorder.optim.distributed import data_parallel_operator

CURVATURES = ("hessian", "gauss_newton")
CurvatureClosure = Callable[[], CurvatureOperator]

__all__ = [
    "CURVATURES",
    "CurvatureClosure",
    "LocalModel",
    "WorkingPrecisionOperator",
    "check_closures",
    "check_curvature",
    "local_model",
    "separate_operator",
]


class WorkingPrecisionOperator:
    """A curvature operator between float32 vectors, for low-precision parameters.

    ``matvec`` rounds the vector to the dtype of the operator's point (its ``params``, else
    the parameters': a float32 operator of a bfloat16 model gets float32 vectors), applies
    the wrapped operator and returns the product in
    :func:`~secondorder.optim.base.working_dtype`; everything else (``free``, ``params``,
    counters) is the wrapped operator's.

    Args:
        operator: the curvature operator.
        params: the parameters (their dtypes, when the operator has no ``params``).
    """

    def __init__(self, operator: CurvatureOperator, params: Sequence[Tensor]):
        self.operator = operator
        self._dtypes = tuple(p.dtype for p in getattr(operator, "params", None) or params)

    def matvec(self, vec: Sequence[Tensor]) -> tuple[Tensor, ...]:
        low = tuple([v.to(d) for v, d in zip(vec, self._dtypes, strict=True)])
        return to_working_precision(tuple(self.operator.matvec(low)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.operator, name)


def check_curvature(curvature: str) -> str:
    """Return ``curvature`` or raise ``ValueError`` naming the valid choices."""
    hyper.one_of(CURVATURES)("curvature", curvature)
    return curvature


@dataclass
class LocalModel:
    """Loss, gradient and curvature operator at the current parameters.

    Attributes:
        loss: the closure's mean loss (detached, 0-dim).
        grads: its gradient (tuple).
        samples: samples of the closure's batch (0 when unknown).
        operator: the curvature operator; ``operator.matvec`` applies ``B``.
    """

    loss: Tensor
    grads: tuple[Tensor, ...]
    samples: int
    operator: CurvatureOperator

    def free(self) -> None:
        """Release the graph held by the operator (Hessian and GGN operators have one)."""
        release = getattr(self.operator, "free", None)
        if callable(release):
            release()

    def __enter__(self) -> LocalModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()


def check_closures(curvature: str, hessian_closure: Closure | None,
                   ggn_closure: CurvatureClosure | None) -> None:
    """Check that the extra closures given to ``step`` fit the curvature.

    Raises:
        ValueError: ``gauss_newton`` without ``ggn_closure``, or a closure that the chosen
            curvature does not use.
    """
    if curvature == "gauss_newton":
        if ggn_closure is None:
            raise ValueError(
                "curvature='gauss_newton' needs step(closure, ggn_closure=...), a function "
                "returning the GGN operator at the current parameters, e.g. "
                "lambda: GGNOperator.from_model(model, criterion, inputs, targets)"
            )
        if hessian_closure is not None:
            raise ValueError(
                "hessian_closure is only used with curvature='hessian'; with "
                "curvature='gauss_newton' choose the curvature batch inside ggn_closure"
            )
    elif ggn_closure is not None:
        raise ValueError("ggn_closure is only used with curvature='gauss_newton'")


def local_model(
    optimizer: SecondOrderOptimizer,
    closure: Closure,
    curvature: str,
    *,
    hessian_closure: Closure | None = None,
    ggn_closure: CurvatureClosure | None = None,
    start: Evaluation | None = None,
) -> LocalModel:
    """Evaluate loss, gradient and the curvature operator (see the module docstring).

    Args:
        optimizer: the optimizer (its parameters, counters and :meth:`evaluate`).
        closure: the loss on the gradient batch (no backward).
        curvature: ``"hessian"`` or ``"gauss_newton"``.
        hessian_closure: optional loss closure on the Hessian batch (``"hessian"`` only).
        ggn_closure: returns the GGN operator (``"gauss_newton"`` only).
        start: an :class:`~secondorder.optim.base.Evaluation` with a Hessian made at the
            current parameters before this step (a trust-region step's accepted trial,
            full-batch mode), used instead of a new evaluation of ``closure`` with
            ``curvature="hessian"`` and no ``hessian_closure`` (its Hessian products are
            watched as the step's start's,
            :meth:`~secondorder.optim.base.SecondOrderOptimizer.watch_start`; the caller
            checks its loss and gradient, as the trust region's
            :func:`~secondorder.optim.model_step.check_finite_start` does); otherwise its
            graph is freed.

    Returns:
        A :class:`LocalModel`; use it in a ``with`` block or call its ``free()`` when done.
        With float16/bfloat16 parameters its gradient and operator work in float32 (module
        docstring).

    Raises:
        ValueError: if the closures do not fit the curvature, or the operator returned by
            ``ggn_closure`` is not a :class:`CurvatureOperator` shaped like the parameters.
    """
    check_closures(curvature, hessian_closure, ggn_closure)
    if start is not None and (curvature != "hessian" or hessian_closure is not None):
        if start.hessian is not None:
            start.hessian.free()
        start = None
    if start is not None:
        ev = start
        # its products are watched as the start's; its loss and gradient are read and
        # checked by the caller right after (model_step.check_finite_start)
        optimizer.watch_start(None, (), ev.hessian)
        op = ev.hessian
    elif curvature == "hessian" and hessian_closure is None:
        ev = optimizer.evaluate(closure, create_graph=True)
        op = ev.hessian
    else:
        ev = optimizer.evaluate(closure)
        op = separate_operator(optimizer, curvature, hessian_closure=hessian_closure,
                               ggn_closure=ggn_closure)
    params = optimizer.params()
    if needs_working_precision(params):
        return LocalModel(ev.loss, to_working_precision(ev.grads), ev.samples,
                          WorkingPrecisionOperator(op, params))  # type: ignore[arg-type]
    return LocalModel(ev.loss, ev.grads, ev.samples, op)


def separate_operator(
    optimizer: SecondOrderOptimizer,
    curvature: str,
    *,
    hessian_closure: Closure | None = None,
    ggn_closure: CurvatureClosure | None = None,
) -> CurvatureOperator:
    """The curvature operator from ``hessian_closure`` or ``ggn_closure`` (counted).

    Raises:
        ValueError: if neither closure fits ``curvature``, or ``ggn_closure`` returns
            something other than a :class:`CurvatureOperator` shaped like the parameters.
    """
    if curvature == "hessian":
        if hessian_closure is None:
            raise ValueError("curvature='hessian' from a separate batch needs hessian_closure")
        return optimizer.evaluate(hessian_closure, create_graph=True).hessian
    check_closures(curvature, hessian_closure, ggn_closure)
    op = ggn_closure()
    if not isinstance(op, CurvatureOperator):
        raise ValueError(
            f"ggn_closure must return a CurvatureOperator, got {type(op).__name__}"
        )
    tl.check_like(op.params, optimizer.params(), "the GGN operator's params")
    outputs = getattr(op, "outputs", None)  # GGNOperator: one row of outputs per sample
    samples = int(outputs.shape[0]) if isinstance(outputs, Tensor) and outputs.dim() > 0 else 0
    op.on_product = lambda: optimizer.count_hvps(1, samples)
    op = data_parallel_operator(optimizer, op)  # averaged across ranks, if any
    optimizer.watch_start(None, (), op)  # a NaN (averaged) product undoes the step (optim.base)
    return op

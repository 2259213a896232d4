"""Stochastic Newton-Krylov with batch screening and Taylor-ratio step sizing ([Shen] Alg. 1).

One :meth:`NewtonKrylov.step` processes one mini-batch ``B_j`` of Algorithm 1 (lines 4-49):

1. **Global gradient** ``g`` (line 1, refreshed at line 48): the gradient of
   ``global_closure`` (the full data or a large batch), recomputed after every
   ``global_refresh`` accepted steps. Without ``global_closure`` the batch gradient ``g_j``
   stands in for ``g`` and the batch loss for ``f``: pre-batch screening is then vacuous
   (a batch never opposes itself) and the step is sized on the batch loss.
2. **Pre-batch screening** (lines 4-8): a batch with ``g_j . g < 0`` is skipped: no
   Hessian work, parameters unchanged.
3. **Krylov loop with early termination** (lines 10-28,
   :func:`~secondorder.optim.newton_krylov_direction.krylov_direction`): CG on
   ``H_j dw = -g`` with the batch Hessian ``H_j``, warm-started at the previous batch's
   direction ``dw~``. The curvature ``kappa = p^T H_j p`` is read before each product;
   the loop stops at ``kappa < 0``; for ``0 <= kappa < 1e-8`` it is replaced,
   temporarily, by ``0.01 ||p||`` (line 19).
4. **Post-batch screening** (lines 29-30,
   :func:`~secondorder.optim.newton_krylov_direction.post_screen`): a direction with
   ``dw . g > 0`` has its component along ``g`` reflected, so that it becomes a descent
   direction for the global loss.
5. **Error-based step sizing** (lines 33-47,
   :func:`~secondorder.optim.newton_krylov_step_size.taylor_step_size`): the step ``gamma``
   is stretched (x1.5) or shrunk (x0.5) until the Taylor ratio (eq. 13)

   ``eta = |(f(w + gamma dw) - f(w) - E_Q) / (f(w + gamma dw) - f(w))|``, with
   ``E_Q = gamma g^T dw + gamma^2 dw^T H_j dw / 2`` (eq. 12),

   lies in ``[eta~/2, eta~]``; ``gamma = 1`` is kept when ``eta <= eta~`` already. After
   ``max_step_adjust`` failed attempts the step falls back to ``gamma = 1e-6``.

Where the printed algorithm is ambiguous or inconsistent, this implementation chooses:

- ``alpha_i = ||r_i||^2 / kappa`` (line 21 prints ``||r_i|| / kappa``; the squared norm is
  CG's step, the one for which ``E_Q`` decreases monotonically as the text relies on);
- ``kappa == 0`` is damped like ``0 < kappa < 1e-8`` (line 18 would divide by zero);
- line 30 prints ``dw <- (1 + dw.g / (|dw| |g|)) dw``, a positive rescaling that cannot
  change the sign of ``dw . g``; the text says post-screening "removes any search
  components along g so that dw ... remains a global descent". We reflect that component,
  ``dw <- dw - 2 (dw.g / |g|^2) g``, which keeps ``|dw|`` and the part orthogonal to ``g``
  and makes ``dw . g < 0``;
- line 36's "initial test size" ``s = |eta~ / eta|`` is used as the first shrunken step;
- a step is accepted only if it lowers ``f`` (with ``global_closure``: the global loss is
  monotone over accepted steps); the 1e-6 fallback is applied only if it lowers ``f``,
  else the step is rejected and the parameters are left unchanged;
- when the loop stops at negative curvature before moving (zero warm start), the
  direction is the first residual ``p_0 = -g`` (steepest descent), sized by the ratio.

Backends: ``"autograd"`` (default) keeps the batch gradient's graph and takes every
product ``H_j p`` with one double backward, ``kappa = p . (H_j p)`` on the same product;
``"complex-step"`` uses [Shen]'s CSDD: ``kappa`` from
:func:`~secondorder.curvature.vhv.vhv` (CSDD2, eq. 11) and ``H_j p`` from
:func:`~secondorder.curvature.hvp.hvp` (CSDD, eq. 10); the product is skipped when the
loop terminates on ``kappa``; ``"finite-difference"`` takes forward differences of the
gradient, ``H p ~ (g(w + h p) - g(w)) / h`` with ``h = fd_step`` ([Shen] supplementary
Fig. 1; for that ablation only: truncation error for large ``h``, subtractive
cancellation for small). For ``"complex-step"`` (and ``"finite-difference"``) the batch
closure must also accept
the parameter tensors: ``closure(ps)`` returns the loss with ``ps`` in place of the
parameters, e.g. built from :func:`~secondorder.curvature.functional_loss`::

    loss_fn, params = functional_loss(model, criterion, x, y)
    closure = lambda ps=None: loss_fn(params if ps is None else ps)

Ablation switches ([Shen] supplementary material): ``early_termination=False`` lets the
Krylov loop run through negative curvature (plain CG, ``alpha < 0``; the paper reports the
loss then stays flat); ``step_sizing="armijo"`` replaces the Taylor-ratio sizing by
backtracking from ``gamma = 1`` by ``armijo_tau`` until
``f(w + gamma dw) <= f(w) + armijo_c gamma g^T dw`` (supplementary eq. 1, ``c = 0.01``,
``tau = 0.8``). The counters (:class:`NewtonKrylovCounter`) add step-size attempts and the
seconds spent on the global gradient, the Krylov loop and the step sizing.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.curvature.complex_step import complex_step_hvp
from secondorder.curvature.vhv import vhv
from secondorder.optim import hyperparameters as hyper
from secondorder.optim.base import Closure, CostCounter, SecondOrderOptimizer
from secondorder.optim.newton_krylov_direction import (
    Curvature,
    Product,
    krylov_direction,
    post_screen,
)
from secondorder.optim.newton_krylov_step_size import armijo_step_size, taylor_step_size

BACKENDS = ("autograd", "complex-step", "finite-difference")
STEP_SIZINGS = ("taylor", "armijo")

__all__ = ["BACKENDS", "NewtonKrylov", "NewtonKrylovCounter", "STEP_SIZINGS"]


@dataclass
class NewtonKrylovCounter(CostCounter):
    """:class:`~secondorder.optim.base.CostCounter` plus Alg. 1's own tallies.

    Attributes:
        sizings: steps that ran the step sizing (batches not skipped, with a direction).
        step_attempts: loss evaluations of the step sizing (``phi`` calls); the paper's
            "attempts of step size adjustment" per iteration ([Shen] supplementary Table 1)
            is ``step_attempts / sizings``.
        global_seconds, krylov_seconds, sizing_seconds: wall time of the global gradient
            (line 1/48), of the batch gradient and Krylov loop (lines 4-30), and of the step
            sizing (lines 33-47) ([Shen] supplementary "Time statistic").
    """

    sizings: int = 0
    step_attempts: int = 0
    global_seconds: float = 0.0
    krylov_seconds: float = 0.0
    sizing_seconds: float = 0.0


# --------------------------------------------------------------------------- optimizer
class NewtonKrylov(hyper.Hyperparameters, SecondOrderOptimizer):
    """[Shen]'s stochastic Newton-Krylov method (Alg. 1; module docstring).

    ``step(closure, global_closure=None)`` processes one mini-batch: ``closure`` returns
    the batch loss, ``global_closure`` the loss on the full data (or a large batch), both
    without calling backward. The outcome of the last step is in
    ``optimizer.state["global"]["last_status"]``: ``"skipped"`` (pre-batch screening),
    ``"accepted"``, ``"fallback"``, ``"rejected"`` or ``"no_direction"``.

    Args:
        params: parameters or parameter groups. The global gradient, the warm start and the
            step size are global, so every hyperparameter must be the same in all groups
            (``ValueError`` naming the key otherwise, when a group is added and at each step).
        taylor_ratio: the target Taylor ratio ``eta~`` ([Shen]: 0.05), in ``(0, 1)``.
        max_cg_iter: most Krylov iterations per batch (``>= 1``).
        cg_rtol: the Krylov loop stops when ``||r|| <= cg_rtol ||g||``.
        backend: ``"autograd"`` or ``"complex-step"`` (module docstring).
        global_refresh: recompute the global gradient after this many accepted steps
            ([Shen]: 1, line 48).
        warm_start: the Krylov loop starts at ``warm_start`` times the previous direction
            (line 10's ``dw~``), in ``[0, 1]``. The default 0 starts from zero: warm
            starting at the full previous direction (1.0) measured far worse (digits MLP,
            2 epochs of batch 128: full loss 1.25 against 0.17), as a direction the Taylor
            ratio shrank to a tiny step is carried over whole and shrunk again.
        max_step_adjust: stretch/shrink attempts before the fallback step.
        fallback_step: the step when the attempts fail ([Shen]: 1e-6), ``> 0``.
        damping_threshold: curvatures below it are damped ([Shen]: 1e-8), ``>= 0``.
        damping_scale: the damped curvature is ``damping_scale * ||p||`` ([Shen]: 0.01).
        fd_step: ``h`` of the ``"finite-difference"`` backend, ``> 0``.
        early_termination: stop the Krylov loop at negative curvature (module docstring).
        step_sizing: ``"taylor"`` (Alg. 1) or ``"armijo"`` (module docstring).
        armijo_c, armijo_tau: the Armijo constant and the backtracking factor, both in
            ``(0, 1)``.
        printed_cg_step, printed_post_screen: run line 21 / line 30 as printed (module
            docstring lists why ours differ); for measuring those departures only.

    Raises:
        ValueError: for a hyperparameter out of range, or one that differs between param
            groups (the message names it).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        taylor_ratio: float = 0.05,
        max_cg_iter: int = 20,
        cg_rtol: float = 1e-4,
        backend: str = "autograd",
        global_refresh: int = 1,
        warm_start: float = 0.0,
        max_step_adjust: int = 10,
        fallback_step: float = 1e-6,
        damping_threshold: float = 1e-8,
        damping_scale: float = 0.01,
        fd_step: float = 1e-8,
        early_termination: bool = True,
        step_sizing: str = "taylor",
        armijo_c: float = 0.01,
        armijo_tau: float = 0.8,
        printed_cg_step: bool = False,
        printed_post_screen: bool = False,
    ):
        defaults = dict(
            taylor_ratio=taylor_ratio,
            max_cg_iter=max_cg_iter,
            cg_rtol=cg_rtol,
            backend=backend,
            global_refresh=global_refresh,
            warm_start=warm_start,
            max_step_adjust=max_step_adjust,
            fallback_step=fallback_step,
            damping_threshold=damping_threshold,
            damping_scale=damping_scale,
            fd_step=fd_step,
            early_termination=early_termination,
            step_sizing=step_sizing,
            armijo_c=armijo_c,
            armijo_tau=armijo_tau,
            printed_cg_step=printed_cg_step,
            printed_post_screen=printed_post_screen,
        )
        super().__init__(params, defaults)

    NEEDS_CURVATURE = True
    HYPERPARAMETERS = {
        "taylor_ratio": hyper.in_range(0, 1),
        "max_cg_iter": hyper.integer(1),
        "cg_rtol": hyper.nonnegative,
        "backend": hyper.one_of(BACKENDS),
        "global_refresh": hyper.integer(1),
        "warm_start": hyper.in_range(0, 1, "[]"),
        "max_step_adjust": hyper.integer(0),
        "fallback_step": hyper.positive,
        "damping_threshold": hyper.nonnegative,
        "damping_scale": hyper.positive,
        "fd_step": hyper.positive,
        "early_termination": hyper.boolean,
        "printed_cg_step": hyper.boolean,
        "printed_post_screen": hyper.boolean,
        "step_sizing": hyper.one_of(STEP_SIZINGS),
        "armijo_c": hyper.in_range(0, 1),
        "armijo_tau": hyper.in_range(0, 1),
    }

    @property
    def counters(self) -> NewtonKrylovCounter:
        """Cumulative counters (:class:`NewtonKrylovCounter`; kept in the state)."""
        c = self.state.get("counters")
        if not isinstance(c, NewtonKrylovCounter):
            base = asdict(c) if isinstance(c, CostCounter) else (c if isinstance(c, dict) else {})
            c = NewtonKrylovCounter(**base)
            self.state["counters"] = c
        return c

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (checked as in :class:`~secondorder.optim.hyperparameters.Hyperparameters`).

        Raises:
            ValueError: as :meth:`Hyperparameters.add_param_group`, or for
                ``backend="complex-step"`` with a parameter that is not float32 or float64
                (the complex-step curvature refuses them at the first step otherwise; the
                group is not added).
        """
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["backend"] != "complex-step":
            return
        for p in group["params"]:
            if p.dtype not in (torch.float32, torch.float64):
                self.param_groups.pop()
                raise ValueError(
                    f"NewtonKrylov(backend='complex-step') needs float32 or float64 parameters, "
                    f"got {p.dtype}: pass backend='autograd', which works with float16 and "
                    "bfloat16 parameters, or cast the model to float32"
                )

    def _global(self) -> dict[str, Any]:
        return self.state.setdefault(
            "global",
            {"global_grad": None, "global_loss": None, "age": 0, "warm": None,
             "steps": 0, "skipped": 0, "rejected": 0, "fallbacks": 0},
        )  # fmt: skip

    def _curvature_fns(self, ev, closure: Closure, hp: Mapping[str, Any]
                       ) -> tuple[Product, Curvature]:
        backend = hp["backend"]
        if backend == "autograd":
            H = ev.hessian
            cache: dict[int, tuple[Tensor, ...]] = {}

            def curvature(p):
                hp_ = H.matvec(p)
                cache.clear()
                cache[id(p)] = hp_
                return tl.dot(p, hp_)

            def product(p):
                out = cache.pop(id(p), None)
                return out if out is not None else H.matvec(p)

            return product, curvature
        params = self.params()
        loss_fn = _substituted_loss(closure, complex_loss=backend == "complex-step")
        if backend == "finite-difference":
            return self._finite_difference_fns(ev, loss_fn, params, hp["fd_step"])
        # a parameter with a nonzero gradient must be reached through the ps given to closure
        required = torch.stack([g.abs().amax() > 0 if g.numel() else g.new_zeros((), dtype=bool)
                                for g in ev.grads]).tolist()

        def curvature(p):
            self.count_hvps(1, ev.samples)
            return vhv(loss_fn, params, p, backend="complex-step")

        def product(p):
            self.count_hvps(1, ev.samples)
            return complex_step_hvp(loss_fn, params, p, required=required)

        return product, curvature

    def _finite_difference_fns(self, ev, loss_fn, params, h: float
                               ) -> tuple[Product, Curvature]:
        """``p -> (g(w + h p) - g(w)) / h`` (one gradient each) and ``p -> p . that``."""
        g0 = ev.grads
        cache: dict[int, tuple[Tensor, ...]] = {}

        def difference(p):
            self.count_hvps(1, ev.samples)
            with torch.enable_grad():
                xs = tuple((w.detach() + h * v).requires_grad_(True)
                           for w, v in zip(params, p, strict=True))
                gs = torch.autograd.grad(loss_fn(xs), xs, allow_unused=True)
            gs = tuple(torch.zeros_like(x) if g is None else g
                       for x, g in zip(xs, gs, strict=True))
            return tl.scale(tl.sub(gs, g0), 1.0 / h)

        def curvature(p):
            hp_ = difference(p)
            cache.clear()
            cache[id(p)] = hp_
            return tl.dot(p, hp_)

        def product(p):
            out = cache.pop(id(p), None)
            return out if out is not None else difference(p)

        return product, curvature

    #: steps replace their state tensors, never write into them (the step transaction
    #: of :mod:`secondorder.optim.base` then copies none of them)
    state_mutated_in_place = frozenset[str]()

    def step(  # type: ignore[override]
        self, closure: Closure, global_closure: Closure | None = None
    ) -> Tensor:
        """Process one mini-batch ([Shen] Alg. 1 lines 4-49).

        Args:
            closure: the batch loss (no backward); with ``backend="complex-step"`` it also
                accepts the parameter tensors (module docstring).
            global_closure: the loss on the full data or a large batch (no backward). When
                omitted, the batch gradient and loss stand in for the global ones.

        Returns:
            The batch loss before the step (detached).

        Raises:
            ValueError: with ``backend="complex-step"``, a closure that does not take the
                parameter tensors or ignores them (returns a real loss for complex ones).
            NonFiniteLossError: with ``backend="complex-step"``, a NaN or infinite loss.
        """
        hp = self.shared_hyperparameters()
        G = self._global()
        G["steps"] += 1
        c = self.counters
        t0 = time.perf_counter()
        if global_closure is not None and (
            G["global_grad"] is None or G["age"] >= hp["global_refresh"]
        ):
            gev = self.evaluate(global_closure)
            G["global_grad"], G["global_loss"], G["age"] = gev.grads, gev.loss, 0
        t1 = time.perf_counter()
        c.global_seconds += t1 - t0

        ev = self.evaluate(closure, create_graph=hp["backend"] == "autograd")
        try:
            if global_closure is not None:
                g, f0, phi_closure = G["global_grad"], G["global_loss"], global_closure
                # Pre-batch screening, lines 5-8.
                if float(tl.dot(ev.grads, g)) < 0:
                    G["skipped"] += 1
                    G["last_status"] = "skipped"
                    c.krylov_seconds += time.perf_counter() - t1
                    return ev.loss
            else:
                g, f0, phi_closure = ev.grads, ev.loss, closure
            product, curvature = self._curvature_fns(ev, closure, hp)
            warm = G["warm"]
            x0 = None if warm is None or hp["warm_start"] == 0.0 else tl.scale(
                warm, hp["warm_start"]
            )
            kd = krylov_direction(
                product, curvature, g, x0=x0, rtol=hp["cg_rtol"], max_iter=hp["max_cg_iter"],
                damping_threshold=hp["damping_threshold"], damping_scale=hp["damping_scale"],
                early_termination=hp["early_termination"],
                printed_step=hp["printed_cg_step"],
            )  # fmt: skip
            d, screened = post_screen(kd.direction, g, printed=hp["printed_post_screen"])
            quad = curvature(d) if screened else kd.quadratic
        finally:
            if ev.hessian is not None:
                ev.hessian.free()
        G["last_krylov"] = {"iterations": kd.iterations, "status": kd.status,
                            "damped": kd.damped, "screened": screened}  # fmt: skip
        slope, quad = (float(v) for v in torch.stack([tl.dot(d, g), quad.reshape(())]).tolist())
        t2 = time.perf_counter()
        c.krylov_seconds += t2 - t1
        if not slope < 0:
            G["last_status"] = "no_direction"
            G["warm"] = None
            return ev.loss

        w0 = self.params_at_start()

        def phi(gamma: float) -> float:
            self.set_params(tl.add(w0, d, gamma))
            return float(self.evaluate(phi_closure, grad=False).loss)

        if hp["step_sizing"] == "armijo":
            ss = armijo_step_size(phi, float(f0), slope, c=hp["armijo_c"], tau=hp["armijo_tau"],
                                  max_adjust=hp["max_step_adjust"], fallback=hp["fallback_step"])
        else:
            ss = taylor_step_size(
                phi, float(f0), slope, quad, eta=hp["taylor_ratio"],
                max_adjust=hp["max_step_adjust"], fallback=hp["fallback_step"],
            )  # fmt: skip
        c.sizings += 1
        c.step_attempts += ss.evaluations
        c.sizing_seconds += time.perf_counter() - t2
        self.set_params(tl.add(w0, d, ss.step) if ss.step > 0 else w0)
        G["last_status"] = ss.status
        G["last_step_size"] = ss.step
        if ss.status == "rejected":
            G["rejected"] += 1
            G["warm"] = None
            return ev.loss
        if ss.status == "fallback":
            G["fallbacks"] += 1
        G["warm"] = d
        G["age"] += 1
        if global_closure is not None:
            G["global_loss"] = torch.as_tensor(ss.loss, dtype=ev.loss.dtype, device=ev.loss.device)
        return ev.loss


_CLOSURE_CONTRACT = (
    "with backend='complex-step' the closure must compute the loss from the tensors ps "
    "it is given, in place of the parameters, e.g. loss_fn, params = "
    "functional_loss(model, criterion, x, y); closure = lambda ps=None: "
    "loss_fn(params if ps is None else ps)"
)


def _substituted_loss(closure: Closure, *, complex_loss: bool = True
                     ) -> Callable[[Sequence[Tensor]], Tensor]:
    """``ps -> closure(ps)``, refusing a closure that cannot take or ignores ``ps``.

    The complex step evaluates the loss at complex parameters ``w + i h v``; a closure
    that reads the model's own (real) parameters instead returns a real loss, whose
    curvature along every direction would be read as exactly zero.

    Raises:
        ValueError: the closure takes no argument, or returned a real (not complex) loss
            for complex parameters, i.e. it ignored them.
    """
    try:
        inspect.signature(closure).bind(())
    except TypeError as e:
        raise ValueError(f"the closure does not accept the parameter tensors ({e}); "
                         f"{_CLOSURE_CONTRACT}") from None
    except ValueError:  # no signature (a builtin): try the call
        pass

    def loss_fn(ps: Sequence[Tensor]) -> Tensor:
        loss = closure(ps)
        if complex_loss and isinstance(loss, Tensor) and not loss.is_complex():
            raise ValueError(
                "the closure returned a real loss for complex parameters: it ignored the "
                f"tensors ps it was given (it reads the model's parameters); {_CLOSURE_CONTRACT}"
            )
        return loss

    return loss_fn


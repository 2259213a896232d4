"""AdaHessian: Adam with a Hutchinson estimate of the Hessian diagonal ([Filippova] Alg. 2).

[Yao2021], "ADAHESSIAN: an adaptive second order optimizer for machine learning";
the update follows their reference code (github amirgholami/adahessian, which
``torch_optimizer.Adahessian`` copies) term by term. At step ``t`` (all operations
elementwise):

- ``D_t``: Hutchinson's estimate ``mean_s z_s * (H z_s)`` of the Hessian diagonal with
  ``n_samples`` Rademacher probes (:func:`~secondorder.curvature.diagonal.hutchinson_diagonal`);
- ``D_t^(s)``: its spatial average ``|D_t|`` ([Filippova] Alg. 2 step 3; convolution kernels
  averaged over each ``kh x kw`` filter, other tensors over ``spatial_average_block_size``
  consecutive entries of the last dimension,
  :func:`~secondorder.curvature.diagonal.spatially_averaged`). With
  ``spatial_average="signed"`` the signed ``D_t`` is averaged instead, as Alg. 2 of
  [Filippova] writes it (``D^(s)[ib + j] = sum_k D[ib + k] / b``): entries of opposite sign
  cancel inside a block before ``v_t`` squares them, so ``v_t`` (and the denominator) is
  never larger than with ``"abs"`` and the steps never shorter;
- ``m_t = b1 m_{t-1} + (1 - b1) g_t``, ``v_t = b2 v_{t-1} + (1 - b2) D_t^(s)^2``;
- ``denom = (v_t / (1 - b2^t))^(k/2) + eps`` (Hessian power ``k``; Alg. 2's
  ``(\\bar D_t)^k``);
- ``x_t = x_{t-1} - lr * (m_t / (1 - b1^t) / denom + weight_decay * x_{t-1})`` (decoupled
  weight decay, exactly the reference's ``p - lr * (exp_avg / bc1 / denom + wd * p)``).

With ``update_each = u > 1`` the diagonal is re-estimated only every ``u``-th step (the
other steps differentiate without ``create_graph`` and reuse the last ``D^(s)``; ``v_t``
still decays every step), as in D. Samuel's ``ada-hessian`` implementation.

Rademacher probes are drawn with
:func:`~secondorder.curvature.diagonal.rademacher_like` on ``generator`` (sample by
sample, parameter by parameter, in :meth:`~SecondOrderOptimizer.params` order), so a
seeded generator reproduces a run; its state is saved in ``state_dict()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from secondorder.curvature.diagonal import hutchinson_diagonal, spatially_averaged
from secondorder.optim import hyperparameters as hyper
from secondorder.optim.base import (
    Closure,
    SecondOrderOptimizer,
    to_working_precision,
    working_dtype,
)

__all__ = ["SPATIAL_AVERAGES", "AdaHessian", "adahessian_update", "signed_spatial_average"]

#: What AdaHessian averages over a spatial block: ``|D|`` (reference code) or signed ``D``.
SPATIAL_AVERAGES = ("abs", "signed")


def signed_spatial_average(
    diagonal: Sequence[Tensor], block_size: int | None = None
) -> tuple[Tensor, ...]:
    """The blocks of :func:`~secondorder.curvature.diagonal.spatially_averaged`, but
    averaging the signed diagonal ([Filippova] Alg. 2 step 3 as printed).

    Example:
        >>> signed_spatial_average([torch.tensor([1.0, -3.0, 2.0, 4.0])], block_size=2)[0]
        tensor([-1., -1.,  3.,  3.])
    """
    return spatially_averaged(diagonal, block_size, signed=True)


@torch.no_grad()
def adahessian_update(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    diagonals: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_hessian_diag_sqs: Sequence[Tensor],
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    hessian_power: float,
) -> None:
    """One AdaHessian update, in place on ``params`` and the two moment buffers.

    The functional core of :class:`AdaHessian` (module docstring, [Filippova] Alg. 2 steps
    4-7); ``diagonals`` is the (spatially averaged) Hessian diagonal ``D_t^(s)``.

    Args:
        params: parameters, updated in place.
        grads: the gradient ``g_t``.
        diagonals: ``D_t^(s)``, shaped like ``params``.
        exp_avgs: ``m_{t-1}``, updated in place to ``m_t``.
        exp_hessian_diag_sqs: ``v_{t-1}``, updated in place to ``v_t``.
        step: ``t >= 1``, for the bias corrections.
        lr: learning rate.
        beta1: gradient momentum.
        beta2: Hessian momentum.
        eps: added to the denominator.
        weight_decay: decoupled weight decay.
        hessian_power: ``k`` in ``[0, 1]``.

    Example:
        >>> p, m, v = [torch.ones(1)], [torch.zeros(1)], [torch.zeros(1)]
        >>> adahessian_update(p, [torch.ones(1)], [2 * torch.ones(1)], m, v, step=1, lr=0.1,
        ...                   beta1=0.9, beta2=0.999, eps=0.0, weight_decay=0.0, hessian_power=1.0)
        >>> p[0]  # 1 - 0.1 * g / |D| = 1 - 0.1 / 2
        tensor([0.9500])
    """
    params, exp_avgs, exp_hs = list(params), list(exp_avgs), list(exp_hessian_diag_sqs)
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, list(grads), alpha=1.0 - beta1)
    torch._foreach_mul_(exp_hs, beta2)
    torch._foreach_addcmul_(exp_hs, list(diagonals), list(diagonals), value=1.0 - beta2)
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    denom = torch._foreach_div(exp_hs, bias_correction2)
    if hessian_power == 1.0:
        torch._foreach_sqrt_(denom)
    else:
        torch._foreach_pow_(denom, hessian_power / 2.0)
    torch._foreach_add_(denom, eps)
    if weight_decay != 0.0:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    torch._foreach_addcdiv_(params, exp_avgs, denom, value=-lr / bias_correction1)


class AdaHessian(hyper.Hyperparameters, SecondOrderOptimizer):
    """AdaHessian ([Yao2021]; [Filippova] Alg. 2); the update is in the module docstring.

    With float16/bfloat16 parameters the moments are kept, and the update computed, in
    float32 (rounded into the parameters once per step; :mod:`secondorder.optim.base`):
    in float16, ``(1 - beta2) D^2`` underflows to 0 and the step becomes ``lr m / eps``.

    Each step calls the closure once, differentiates it with ``create_graph=True`` when the
    diagonal is due (every ``update_each`` steps) and takes ``n_samples`` Hessian-vector
    products on that one graph, which is freed before ``step`` returns.

    Args:
        params: parameters or parameter groups; ``lr``, ``betas``, ``eps``,
            ``weight_decay`` and ``hessian_power`` may differ per group (the update is
            elementwise; a group's ``lr`` may be 0), the probe settings below are global.
        lr: learning rate (the reference default 0.15).
        betas: ``(beta1, beta2)``, gradient and Hessian momentum, each in ``[0, 1)``.
        eps: added to the denominator, ``> 0``.
        weight_decay: decoupled weight decay, ``>= 0``.
        hessian_power: ``k`` in ``[0, 1]``.
        update_each: re-estimate the diagonal every this many steps (``>= 1``).
        n_samples: Rademacher probes per estimate (``>= 1``).
        spatial_average_block_size: block length for averaging ``|D|`` over non-convolution
            tensors; ``None`` (the reference behaviour) averages only 4-D convolution kernels
            over their spatial positions.
        spatial_average: what is averaged over a block: ``"abs"`` (``|D|``, the reference
            code's choice and the default) or ``"signed"`` (``D`` itself, [Filippova] Alg. 2
            as printed; module docstring).
        generator: random generator for the probes (on the parameters' device or the CPU).

    Raises:
        ValueError: for any hyperparameter out of range (the message names it).

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
        >>> opt = AdaHessian([w], lr=0.1)
        >>> for _ in range(200):
        ...     _ = opt.step(lambda: (w**2).sum())
        >>> bool(w.abs().max() < 1e-4)
        True
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.15,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        weight_decay: float = 0.0,
        hessian_power: float = 1.0,
        update_each: int = 1,
        n_samples: int = 1,
        spatial_average_block_size: int | None = None,
        generator: torch.Generator | None = None,
        spatial_average: str = "abs",
    ):
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, hessian_power=hessian_power
        )
        b = spatial_average_block_size
        hyper.integer(1)("update_each", update_each)
        hyper.integer(1)("n_samples", n_samples)
        hyper.optional(hyper.integer(1))("spatial_average_block_size", b)
        hyper.one_of(SPATIAL_AVERAGES)("spatial_average", spatial_average)
        hyper.Rule(lambda g: g is None or isinstance(g, torch.Generator),
                   "a torch.Generator or None")("generator", generator)
        defaults["betas"] = tuple(betas)
        super().__init__(params, defaults)
        self.update_each = update_each
        self.n_samples = n_samples
        self.spatial_average_block_size = b
        self.spatial_average = spatial_average
        self.generator = generator
        self.register_state_dict_pre_hook(AdaHessian._save_generator)
        self.register_load_state_dict_post_hook(AdaHessian._load_generator)

    NEEDS_CURVATURE = True
    PER_GROUP = hyper.EVERY_KEY
    DEFAULT_RULES = {"lr": hyper.positive}
    HYPERPARAMETERS = {
        "lr": hyper.finite_nonnegative,
        "betas": hyper.Rule(
            lambda b: isinstance(b, (tuple, list)) and len(b) == 2
            and all(0.0 <= x < 1.0 for x in b),
            "a pair (beta1, beta2), each in [0, 1)",
        ),
        "eps": hyper.positive,
        "weight_decay": hyper.nonnegative,
        "hessian_power": hyper.in_range(0, 1, "[]"),
    }

    # ---------------------------------------------------------------- generator state
    @staticmethod
    def _save_generator(optimizer: AdaHessian) -> None:
        if optimizer.generator is not None:
            optimizer._global()["generator_state"] = optimizer.generator.get_state()

    @staticmethod
    def _load_generator(optimizer: AdaHessian) -> None:
        state = optimizer.state.get("global", {})
        if optimizer.generator is not None and "generator_state" in state:
            optimizer.generator.set_state(state["generator_state"].to("cpu", torch.uint8))

    def extra_state(self) -> Any:
        """The probe generator's state: a step that is undone does not advance it."""
        return None if self.generator is None else self.generator.get_state()

    def load_extra_state(self, extra: Any) -> None:
        """Restore the probe generator's state saved by :meth:`extra_state`."""
        if extra is not None:
            self.generator.set_state(extra)

    def _global(self) -> dict[str, Any]:
        return self.state.setdefault("global", {"step": 0})

    #: the moments are updated in place; the step transaction copies them (base)
    state_mutated_in_place = frozenset({"exp_avg", "exp_hessian_diag_sq"})

    # ---------------------------------------------------------------- step
    def step(self, closure: Closure) -> Tensor:  # type: ignore[override]
        """One AdaHessian step.

        The closure and the return value: see
        :class:`~secondorder.optim.base.SecondOrderOptimizer`.

        Raises:
            NonFiniteLossError: if the loss, the gradient or a Hessian-vector product is NaN
                or infinite; the step is undone (parameters, moments and the generator are
                as before it), the rule every optimizer follows (:mod:`secondorder.optim.base`).
        """
        glob = self._global()
        refresh = glob["step"] % self.update_each == 0
        ev = self.evaluate(closure, create_graph=refresh)
        params = self.params()
        if refresh:
            try:
                diag = hutchinson_diagonal(
                    ev.hessian, num_samples=self.n_samples, generator=self.generator
                )
            finally:
                ev.hessian.free()
            if self.spatial_average == "signed":
                diag = signed_spatial_average(diag, self.spatial_average_block_size)
            else:
                diag = spatially_averaged(diag, self.spatial_average_block_size)
            diag = to_working_precision(diag)
        else:
            diag = tuple(self.state[p]["hessian_diag"] for p in params)
        glob["step"] += 1
        step = glob["step"]

        by_group: dict[int, list[int]] = {}
        for i, group in enumerate(self.group_of()):
            by_group.setdefault(id(group), []).append(i)
        for group in self.param_groups:
            idx = by_group.get(id(group))
            if not idx:
                continue
            ps = [params[i] for i in idx]
            states = [self.state[p] for p in ps]
            for p, st, i in zip(ps, states, idx, strict=True):
                if "exp_avg" not in st:
                    st["exp_avg"] = torch.zeros_like(
                        p, dtype=working_dtype(p.dtype), memory_format=torch.preserve_format
                    )
                    st["exp_hessian_diag_sq"] = torch.zeros_like(st["exp_avg"])
                st["hessian_diag"] = diag[i]
            beta1, beta2 = group["betas"]
            low = [p for p in ps if working_dtype(p.dtype) != p.dtype]
            # float16/bfloat16: the update is computed in float32 and rounded into p once
            work = [p.detach().to(working_dtype(p.dtype)) if low else p for p in ps]
            adahessian_update(
                work,
                to_working_precision([ev.grads[i] for i in idx]),
                [diag[i] for i in idx],
                [st["exp_avg"] for st in states],
                [st["exp_hessian_diag_sq"] for st in states],
                step=step,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                hessian_power=group["hessian_power"],
            )
            if low:
                with torch.no_grad():
                    torch._foreach_copy_(ps, work)
        return ev.loss

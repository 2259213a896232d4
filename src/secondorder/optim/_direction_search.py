"""One global search direction with per-group learning rates, for the line-search optimizers.

L-BFGS, nonlinear CG, Newton-CG and Barzilai-Borwein each compute one direction ``d`` over
all parameters and move along it. Their param groups may differ only in ``lr``:

* **Per-group step.** Group ``g`` moves by ``t (lr_g / lr_max) d_g``, where ``lr_max`` is
  the largest ``lr`` of the groups and ``t`` the method's step (which starts from
  ``lr_max``, so with a line search ``t / lr_max`` is the usual unit-free multiplier and
  group ``g`` moves by ``(t / lr_max) lr_g d_g``). The line search searches along the
  scaled direction ``D = diag(lr_g / lr_max) d`` (:class:`GroupScale`). With equal ``lr``
  the ratios are exactly 1 and ``D`` is ``d`` itself, bit for bit. ``lr`` is read at every
  ``step``, so ``torch.optim.lr_scheduler`` schedulers act on it.
* **A group with lr = 0 is frozen**: its parameters are left out of the problem, as if
  they did not require grad (no gradient is computed for them, and the memory, the
  conjugate directions, the Hessian products and the BB steps only see the other groups),
  so the others move exactly as the single-group method on the problem with those
  parameters fixed. (Merely scaling ``d`` by 0 would not do: a quasi-Newton or Newton
  direction built on all parameters, restricted to the free ones, stalls short of their
  minimizer.) When the set of frozen groups changes, the method's memory is reset. With
  every ``lr = 0`` nothing moves.
* **Shared structure.** Every other hyperparameter (history size, line search, beta rule,
  ``c1``/``c2``, tolerances, forcing, epoch length, mode...) defines the one direction and
  must be equal in all groups: :class:`SharedHyperparameters` checks it whenever a group is
  added (in ``__init__`` and in ``add_param_group``) and at every ``step``.
* **Line-search dispatch.** :func:`search` runs the named search of
  :mod:`secondorder.optim.line_search` (or takes a fixed step) along ``D`` and leaves the
  parameters at the accepted point.

The hyperparameter checks the four optimizers share (:func:`check_common`,
:func:`check_choice`, :func:`check_int`, :func:`check_nonnegative`) raise ``ValueError``
naming the bad value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from secondorder.optim import line_search as ls
from secondorder.optim.quasi_newton import LineObjective

__all__ = [
    "GroupScale",
    "SharedHyperparameters",
    "check_choice",
    "check_common",
    "check_int",
    "check_nonnegative",
    "search",
]


# ----------------------------------------------------------------------------- checks


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"Invalid {name}: {value!r} (choose from {choices})")


def check_int(name: str, value: Any, optional: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is an int >= 1 (or ``None`` when ``optional``)."""
    if optional and value is None:
        return
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        need = "None or an int >= 1" if optional else "an integer >= 1"
        raise ValueError(f"Invalid {name}: {value} (need {need})")


def check_nonnegative(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value >= 0``."""
    if not value >= 0:
        raise ValueError(f"Invalid {name}: {value}")


def check_common(hp: Mapping[str, Any]) -> None:
    """Check the hyperparameters the line-search optimizers share, those present in ``hp``.

    ``max_iter`` and ``max_ls_evals`` are ints >= 1, ``tolerance_grad`` and
    ``tolerance_change`` are >= 0, ``0 < c1 < 1`` and ``c1 < c2 < 1``.

    Raises:
        ValueError: naming the first invalid value.
    """
    if "max_iter" in hp:
        check_int("max_iter", hp["max_iter"])
    for key in ("tolerance_grad", "tolerance_change"):
        if key in hp:
            check_nonnegative(key, hp[key])
    c1 = hp["c1"]
    if not 0 < c1 < 1:
        raise ValueError(f"Invalid c1: {c1} (need 0 < c1 < 1)")
    if "c2" in hp and not c1 < hp["c2"] < 1:
        raise ValueError(f"Invalid c2: {hp['c2']} (need c1 < c2 < 1)")
    check_int("max_ls_evals", hp["max_ls_evals"])


def _check_group_lr(lr: Any) -> None:
    try:
        ok = float(lr) >= 0 and math.isfinite(float(lr))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"Invalid learning rate: {lr} in a param group (need a finite lr >= 0)")


class SharedHyperparameters:
    """Optimizer mixin: ``lr`` per group, every other hyperparameter the same in all groups.

    Put it before :class:`~secondorder.optim.base.SecondOrderOptimizer` in the bases and
    implement :meth:`check_hyperparameters` for the optimizer's own keys (the shared ones
    go through :func:`check_common`). ``__init__`` checks the defaults (``lr > 0``);
    ``torch.optim.Optimizer.__init__`` adds each group through :meth:`add_param_group`, so
    the group checks run in ``__init__`` and for groups added later alike, and a rejected
    group is not added.

    Args:
        params: parameters or param groups.
        defaults: the default hyperparameters (``lr`` included).

    Raises:
        ValueError: for a default ``lr <= 0`` or an invalid value (see
            :meth:`add_param_group`).
    """

    defaults: dict[str, Any]
    param_groups: list[dict[str, Any]]

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]):
        lr = defaults["lr"]
        if not lr > 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        check_common(defaults)
        self.check_hyperparameters(defaults)
        super().__init__(params, defaults)  # type: ignore[call-arg]

    @staticmethod
    def check_hyperparameters(hp: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` for an invalid optimizer-specific value in ``hp``."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after checking its ``lr`` and that its other hyperparameters agree.

        Raises:
            ValueError: if the group's ``lr`` is negative or not finite, a value is invalid,
                or a hyperparameter other than ``lr`` differs from the first group's.
        """
        hp = {**self.defaults, **param_group}
        _check_group_lr(hp["lr"])
        check_common(hp)
        self.check_hyperparameters(hp)
        if self.param_groups:
            _check_agree(self.defaults, self.param_groups[0], hp)
        super().add_param_group(param_group)  # type: ignore[misc]

    def shared_hyperparameters(self) -> dict[str, Any]:
        """Start a step: check the groups and reset the memory if the frozen set changed.

        Returns:
            The first group (the shared hyperparameters).

        Raises:
            ValueError: if a hyperparameter other than ``lr`` differs between groups.
        """
        first = self.param_groups[0]
        for group in self.param_groups[1:]:
            _check_agree(self.defaults, first, group)
        st = self.state["global"]  # type: ignore[attr-defined]
        frozen = tuple(float(g["lr"]) == 0 for g in self.param_groups)
        if st.get("frozen_groups", frozen) != frozen:
            self.reset_memory()  # its vectors were shaped by the previous free parameters
            st.pop("x_good", None)
            st.pop("cache", None)
        st["frozen_groups"] = frozen
        return first

    def reset_memory(self) -> None:
        """Forget the vectors a step keeps for the next (memory, previous direction...)."""

    def _free_groups(self) -> list[dict[str, Any]]:
        free = [g for g in self.param_groups if float(g["lr"]) != 0]
        return free or self.param_groups  # every lr = 0: nothing moves (the step checks lr)

    def params(self) -> tuple[Any, ...]:
        """The trainable tensors of the groups whose ``lr`` is not 0 (see module doc)."""
        return tuple(p for g in self._free_groups() for p in g["params"] if p.requires_grad)

    def group_of(self) -> tuple[dict[str, Any], ...]:
        """The param group of each tensor of :meth:`params`, in the same order."""
        return tuple(g for g in self._free_groups() for p in g["params"] if p.requires_grad)


def _check_agree(defaults: Mapping[str, Any], first: Mapping[str, Any], other: Mapping[str, Any]):
    for key in defaults:
        if key != "lr" and first[key] != other[key]:
            raise ValueError(
                f"{key} differs between param groups: {first[key]!r} vs {other[key]!r}; "
                "it must be the same for all groups (only lr may differ)"
            )


# ----------------------------------------------------------------------------- scaling


@dataclass(frozen=True)
class GroupScale:
    """The per-group step scaling of one ``step`` call.

    Attributes:
        lr: the largest ``lr`` of the groups (the unit of the method's step ``t``).
        ratios: ``lr_g / lr`` for each trainable tensor (in :meth:`params` order), or
            ``None`` when all groups share one ``lr`` (then nothing is scaled).
    """

    lr: float
    ratios: tuple[float, ...] | None

    @classmethod
    def of(cls, optimizer: Any) -> GroupScale:
        """Read the groups' current ``lr`` (so LR schedulers take effect at each step)."""
        lrs = [float(g["lr"]) for g in optimizer.group_of()]
        lr = max(lrs, default=0.0)
        if all(x == lr for x in lrs):
            return cls(lr, None)
        return cls(lr, tuple(x / lr for x in lrs))

    def apply(self, vec: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """``diag(lr_g / lr) vec`` (``vec`` itself when all ratios are 1)."""
        if self.ratios is None:
            return tuple(vec)
        return tuple(torch._foreach_mul(list(vec), list(self.ratios)))


# ----------------------------------------------------------------------------- dispatch


def search(
    phi: LineObjective,
    method: str | None,
    loss: Tensor,
    grad: Sequence[Tensor],
    slope: Tensor,
    *,
    step: float,
    c1: float = 1e-4,
    c2: float = 0.9,
    tolerance_change: float = 1e-9,
    max_evals: int = 25,
    need_grad: bool = False,
    reference_loss: float | Tensor | None = None,
) -> tuple[float, Tensor | None, tuple[Tensor, ...] | None]:
    """Search along ``phi.direction`` and leave the parameters at the accepted step.

    Args:
        phi: the line objective (its direction ``D`` is the one searched).
        method: ``"strong_wolfe"`` (:func:`~secondorder.optim.line_search.strong_wolfe`),
            ``"armijo"`` (:func:`~secondorder.optim.line_search.backtracking`),
            ``"nonmonotone"`` (:func:`~secondorder.optim.line_search.nonmonotone_backtracking`
            against ``reference_loss``) or ``None`` (the fixed step ``step``).
        loss: ``phi(0)``.
        grad: the gradient at ``phi(0)``.
        slope: ``grad . D`` (negative).
        step: the first trial, or the fixed step.
        c1: sufficient-decrease constant.
        c2: curvature constant (``"strong_wolfe"``).
        tolerance_change: bracket tolerance (``"strong_wolfe"``).
        max_evals: the search's evaluation budget.
        need_grad: evaluate the gradient at each backtracking trial.
        reference_loss: the largest recent loss (``"nonmonotone"``).

    Returns:
        ``(t, loss, grad)`` at the accepted step; ``loss`` and ``grad`` are ``None`` where
        the search did not evaluate them (always with a fixed step).
    """
    if method == "strong_wolfe":
        res = ls.strong_wolfe(
            phi, phi.direction, loss, grad, step=step, c1=c1, c2=c2,
            tolerance_change=tolerance_change, max_evals=max_evals,
        )  # fmt: skip
    elif method == "armijo":
        res = ls.backtracking(
            phi, loss, slope, step=step, c1=c1, max_evals=max_evals, need_grad=need_grad
        )
    elif method == "nonmonotone":
        res = ls.nonmonotone_backtracking(
            phi, reference_loss, slope, loss0=loss, step=step, c1=c1, max_evals=max_evals,
            need_grad=need_grad,
        )  # fmt: skip
    else:
        phi.move(step)
        return step, None, None
    t = float(res.step)
    phi.move(t)
    return t, res.loss, res.grad

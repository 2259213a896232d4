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
  must be equal in all groups: :class:`SharedHyperparameters` (the
  :mod:`secondorder.optim.hyperparameters` mechanism with ``PER_GROUP = ("lr",)``) checks
  it whenever a group is added (in ``__init__`` and in ``add_param_group``) and at every
  ``step``.

The line search along ``D`` is :func:`secondorder.optim.line_objective.search`.

The range checks of the keys the four optimizers share are declared in
:attr:`SharedHyperparameters.HYPERPARAMETERS`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from secondorder.optim import hyperparameters as hyper
from secondorder.optim.hyperparameters import Hyperparameters, Rule

__all__ = ["GroupScale", "LearningRateGroups", "SharedHyperparameters"]


# ----------------------------------------------------------------------------- groups


class LearningRateGroups(Hyperparameters):
    """Optimizer mixin: ``lr`` per group, every other hyperparameter the same in all groups.

    A default ``lr`` must be ``> 0``; a group's ``lr`` may be 0, which freezes the group:
    :meth:`params` and :meth:`group_of` leave it out (module docstring). The subclass
    declares :attr:`HYPERPARAMETERS` (with ``lr``'s rule for the groups).
    """

    PER_GROUP: ClassVar[Collection[str]] = ("lr",)
    DEFAULT_RULES: ClassVar[Mapping[str, Rule]] = {"lr": hyper.positive}

    def _free_groups(self) -> list[dict[str, Any]]:
        free = [g for g in self.param_groups if float(g["lr"]) != 0]
        return free or self.param_groups  # every lr = 0: nothing moves (the step checks lr)

    def params(self) -> tuple[Any, ...]:
        """The trainable tensors of the groups whose ``lr`` is not 0 (see module doc)."""
        groups = self.param_groups
        if len(groups) == 1:  # the one group is returned whatever its lr: no lr to read
            return tuple([p for p in groups[0]["params"] if p.requires_grad])
        return tuple([p for g in self._free_groups() for p in g["params"] if p.requires_grad])

    def group_of(self) -> tuple[dict[str, Any], ...]:
        """The param group of each tensor of :meth:`params`, in the same order."""
        return tuple(g for g in self._free_groups() for p in g["params"] if p.requires_grad)


class SharedHyperparameters(LearningRateGroups):
    """:class:`LearningRateGroups` with the keys the line-search optimizers share.

    The checks of :class:`~secondorder.optim.hyperparameters.Hyperparameters` with the keys
    the line-search optimizers share: a default ``lr > 0``, a group ``lr`` finite and
    ``>= 0`` (0 freezes the group, module docstring), ``max_iter`` and ``max_ls_evals``
    ints ``>= 1``, ``tolerance_grad`` and ``tolerance_change`` ``>= 0``, ``0 < c1 < 1`` and
    ``c1 < c2 < 1``. A subclass extends :attr:`HYPERPARAMETERS` with its own keys.

    What the shared keys mean: ``max_iter``, iterations per ``step`` call; stop when
    ``max |g| <= tolerance_grad`` or when the step or the loss change falls below
    ``tolerance_change``; ``c1``, the sufficient-decrease constant; ``c2``, the curvature
    constant of the strong Wolfe conditions; ``max_ls_evals``, closure calls allowed per
    line search.

    A subclass's ``step(closure)`` takes a closure that returns the loss (or per-sample
    losses) without calling backward, returns the loss at the start of the step, and raises
    ``ValueError`` if a shared hyperparameter was changed in one group only.

    Args:
        params: parameters or param groups.
        defaults: the default hyperparameters (``lr`` included).

    Raises:
        ValueError: for a default ``lr <= 0``, an invalid value, or a hyperparameter other
            than ``lr`` that differs between groups.
    """

    HYPERPARAMETERS: ClassVar[Mapping[str, Rule]] = {
        "lr": hyper.finite_nonnegative,
        "max_iter": hyper.integer(1),
        "tolerance_grad": hyper.nonnegative,
        "tolerance_change": hyper.nonnegative,
        "c1": hyper.in_range(0, 1),
        "max_ls_evals": hyper.integer(1),
    }

    @classmethod
    def check_relations(cls, hp: Mapping[str, Any]) -> None:
        """``c1 < c2 < 1`` when the optimizer has a curvature condition ``c2``."""
        if "c2" in hp:
            c1, c2 = hp["c1"], hp["c2"]
            hyper.require(c1 < c2 < 1, "c2", c2, f"in (c1, 1) = ({c1}, 1)")

    def shared_hyperparameters(self) -> dict[str, Any]:
        """Start a step: check the groups and reset the memory if the frozen set changed.

        Returns:
            The first group (the shared hyperparameters).

        Raises:
            ValueError: if a hyperparameter other than ``lr`` differs between groups.
        """
        first = super().shared_hyperparameters()
        st = self.state["global"]  # type: ignore[attr-defined]
        frozen = tuple([float(g["lr"]) == 0 for g in self.param_groups])
        if st.get("frozen_groups", frozen) != frozen:
            self.reset_memory()  # its vectors were shaped by the previous free parameters
            st.pop("x_good", None)
            st.pop("cache", None)
        st["frozen_groups"] = frozen
        return first

    def reset_memory(self) -> None:
        """Forget the vectors a step keeps for the next (memory, previous direction...)."""


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

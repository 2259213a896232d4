"""Hyperparameters that must agree across param groups, for optimizers with one global state.

Trust region, ARC, Hessian-free, Newton-Krylov, Levenberg-Marquardt and LSCG keep one
radius, ``sigma``, damping or Krylov warm start for all parameters, so their
hyperparameters describe one step of one model and cannot differ between param groups.
:class:`GlobalHyperparameters` checks this, in the spirit of the line-search optimizers'
:class:`~secondorder.optim._direction_search.SharedHyperparameters` (which cannot be reused
as it is: it requires an ``lr`` and the line-search keys ``c1`` and ``max_ls_evals``).

Keys listed in :attr:`GlobalHyperparameters.per_group` may differ (LSCG's ``lr``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["GlobalHyperparameters", "check_agree"]


def check_agree(
    first: Mapping[str, Any], other: Mapping[str, Any], keys: Iterable[str], owner: str
) -> None:
    """Raise ``ValueError`` naming the first of ``keys`` whose values differ."""
    for key in keys:
        if first[key] != other[key]:
            raise ValueError(
                f"{key} differs between param groups: {first[key]!r} vs {other[key]!r}; "
                f"{owner} keeps one global state, so {key} must be the same for all groups"
            )


class GlobalHyperparameters:
    """Optimizer mixin: every hyperparameter not in :attr:`per_group` is equal in all groups.

    Put it before :class:`~secondorder.optim.base.SecondOrderOptimizer` in the bases and
    implement :meth:`check_hyperparameters` (the range checks, raising ``ValueError`` that
    names the bad value). ``__init__`` checks the defaults; ``torch.optim.Optimizer.__init__``
    adds each group through :meth:`add_param_group`, which checks the group's values and
    their agreement with the first group, so groups given to the constructor and groups
    added later are treated alike and a rejected group is not added.
    :meth:`shared_hyperparameters` repeats the agreement check at each step (groups are
    plain dicts that schedulers or ``load_state_dict`` may rewrite).

    Args:
        params: parameters or param groups.
        defaults: the default hyperparameters.

    Raises:
        ValueError: for an invalid default, an invalid group value, or a group whose value
            of a global hyperparameter differs from the first group's.
    """

    per_group: tuple[str, ...] = ()
    defaults: dict[str, Any]
    param_groups: list[dict[str, Any]]

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]):
        self.check_hyperparameters(defaults)
        super().__init__(params, defaults)  # type: ignore[call-arg]

    @staticmethod
    def check_hyperparameters(hp: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` for an invalid value in ``hp``."""

    def _global_keys(self) -> list[str]:
        return [k for k in self.defaults if k not in self.per_group]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after checking its values and that the global ones agree.

        Raises:
            ValueError: if a value is invalid or a global hyperparameter differs from the
                first group's.
        """
        hp = {**self.defaults, **param_group}
        self.check_hyperparameters(hp)
        if self.param_groups:
            check_agree(self.param_groups[0], hp, self._global_keys(), type(self).__name__)
        super().add_param_group(param_group)  # type: ignore[misc]

    def shared_hyperparameters(self) -> dict[str, Any]:
        """The first group (the global hyperparameters), after checking the others agree.

        Raises:
            ValueError: if a global hyperparameter differs between groups.
        """
        first = self.param_groups[0]
        keys = self._global_keys()
        for group in self.param_groups[1:]:
            check_agree(first, group, keys, type(self).__name__)
        return first

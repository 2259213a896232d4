"""Hyperparameter checks and param groups: one mechanism for every optimizer.

An optimizer declares, as class attributes,

* :attr:`Hyperparameters.HYPERPARAMETERS`: a :class:`Rule` per key (the range checks), run
  on the defaults and on every param group;
* :attr:`Hyperparameters.PER_GROUP`: the keys that may differ between param groups. Every
  other key describes the one step the optimizer takes over all parameters (one radius,
  damping, memory, search direction...) and must be equal in all groups;
  :data:`EVERY_KEY` lets each group have its own values (AdaHessian);
* :attr:`Hyperparameters.DEFAULT_RULES`: checks on the defaults only (a default ``lr`` must
  be ``> 0`` while a group may set ``lr = 0`` to freeze its parameters);

and overrides :meth:`Hyperparameters.check_relations` for checks that tie keys together
(``c1 < c2``). Every check raises ``ValueError`` in one style:
``Invalid {name} value: {value}; it must be {rule}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "EVERY_KEY",
    "Hyperparameters",
    "Rule",
    "at_least",
    "boolean",
    "check_agree",
    "finite_nonnegative",
    "greater_than",
    "in_range",
    "integer",
    "invalid",
    "nonnegative",
    "one_of",
    "optional",
    "positive",
    "require",
]


def invalid(name: str, value: Any, rule: str) -> ValueError:
    """The error of every check: ``Invalid {name} value: {value}; it must be {rule}``."""
    shown = repr(value) if isinstance(value, str) else value
    return ValueError(f"Invalid {name} value: {shown}; it must be {rule}")


def require(ok: bool, name: str, value: Any, rule: str) -> None:
    """Raise :func:`invalid` unless ``ok`` (for checks that tie several keys together)."""
    if not ok:
        raise invalid(name, value, rule)


@dataclass(frozen=True)
class Rule:
    """A range check: ``test(value)`` must hold; ``description`` completes "it must be ...".

    A value the test cannot compare (``TypeError``: a string where a number is expected)
    fails the check.
    """

    test: Callable[[Any], bool]
    description: str

    def __call__(self, name: str, value: Any) -> None:
        """Raise ``ValueError`` naming ``name`` and ``value`` unless ``value`` passes."""
        try:
            ok = bool(self.test(value))
        except TypeError:
            ok = False
        require(ok, name, value, self.description)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


positive = Rule(lambda v: v > 0, "> 0")
nonnegative = Rule(lambda v: v >= 0, ">= 0")
finite_nonnegative = Rule(lambda v: v >= 0 and math.isfinite(v), "finite and >= 0")
boolean = Rule(lambda v: isinstance(v, bool), "True or False")


def greater_than(low: float) -> Rule:
    """``value > low``."""
    return Rule(lambda v: v > low, f"> {low}")


def at_least(low: float) -> Rule:
    """``value >= low``."""
    return Rule(lambda v: v >= low, f">= {low}")


def in_range(low: float, high: float, closed: str = "()") -> Rule:
    """``value`` in the interval from ``low`` to ``high``; ``closed`` gives its brackets."""
    left, right = closed
    lo = (lambda v: v >= low) if left == "[" else (lambda v: v > low)
    hi = (lambda v: v <= high) if right == "]" else (lambda v: v < high)
    return Rule(lambda v: lo(v) and hi(v), f"in {left}{low}, {high}{right}")


def integer(low: int = 1) -> Rule:
    """An ``int`` (not a ``bool``) ``>= low``."""
    return Rule(lambda v: _is_int(v) and v >= low, f"an int >= {low}")


def one_of(choices: Iterable[Any]) -> Rule:
    """One of ``choices``."""
    options = tuple(choices)
    return Rule(lambda v: v in options, f"one of {options}")


def optional(rule: Rule) -> Rule:
    """``None`` or a value that passes ``rule``."""
    return Rule(lambda v: v is None or rule.test(v), f"None or {rule.description}")


class _EveryKey(Collection[str]):
    """Contains every key: each param group has its own values of all hyperparameters."""

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "EVERY_KEY"


EVERY_KEY: Collection[str] = _EveryKey()


def check_agree(
    first: Mapping[str, Any], other: Mapping[str, Any], keys: Iterable[str], owner: str,
    per_group: Collection[str] = (),
) -> None:
    """Raise ``ValueError`` naming the first of ``keys`` whose values differ."""
    for key in keys:
        if first[key] != other[key]:
            may_differ = f"; only {', '.join(per_group)} may differ" if per_group else ""
            raise ValueError(
                f"{key} differs between param groups: {first[key]!r} vs {other[key]!r}; "
                f"it must be the same for all groups ({owner} keeps one global state"
                f"{may_differ})"
            )


class Hyperparameters:
    """Optimizer mixin: checked defaults and param groups (see the module docstring).

    Put it before :class:`~secondorder.optim.base.SecondOrderOptimizer` in the bases.
    ``__init__`` checks the defaults; ``torch.optim.Optimizer.__init__`` adds each group
    through :meth:`add_param_group`, which checks the group's values and that the shared
    ones agree with the first group's, so groups given to the constructor and groups added
    later are treated alike and a rejected group is not added.
    :meth:`shared_hyperparameters` repeats the agreement check at each step (groups are
    plain dicts that schedulers or ``load_state_dict`` may rewrite).

    Args:
        params: parameters or param groups.
        defaults: the default hyperparameters.

    Raises:
        ValueError: for an invalid default, an invalid group value, or a group whose value
            of a shared hyperparameter differs from the first group's.
    """

    HYPERPARAMETERS: ClassVar[Mapping[str, Rule]] = {}
    DEFAULT_RULES: ClassVar[Mapping[str, Rule]] = {}
    PER_GROUP: ClassVar[Collection[str]] = ()
    defaults: dict[str, Any]
    param_groups: list[dict[str, Any]]

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]):
        for name, rule in self.DEFAULT_RULES.items():
            rule(name, defaults[name])
        self.check_hyperparameters(defaults)
        super().__init__(params, defaults)  # type: ignore[call-arg]

    @classmethod
    def check_hyperparameters(cls, hp: Mapping[str, Any]) -> None:
        """Run :attr:`HYPERPARAMETERS` on the keys present in ``hp``, then the relations.

        Raises:
            ValueError: naming the first invalid value.
        """
        for name, rule in cls.HYPERPARAMETERS.items():
            if name in hp:
                rule(name, hp[name])
        cls.check_relations(hp)

    @classmethod
    def check_relations(cls, hp: Mapping[str, Any]) -> None:
        """Checks that tie several keys together (override; raise with :func:`require`)."""

    def shared_keys(self) -> list[str]:
        """The keys that must be equal in all groups (those not in :attr:`PER_GROUP`)."""
        return [k for k in self.defaults if k not in self.PER_GROUP]

    def _check_agree(self, first: Mapping[str, Any], other: Mapping[str, Any]) -> None:
        check_agree(first, other, self.shared_keys(), type(self).__name__, self.PER_GROUP)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after checking its values and that the shared ones agree.

        Raises:
            ValueError: if a value is invalid or a shared hyperparameter differs from the
                first group's.
        """
        hp = {**self.defaults, **param_group}
        self.check_hyperparameters(hp)
        if self.param_groups:
            self._check_agree(self.param_groups[0], hp)
        super().add_param_group(param_group)  # type: ignore[misc]

    def shared_hyperparameters(self) -> dict[str, Any]:
        """The first group (the shared hyperparameters), after checking the others agree.

        Raises:
            ValueError: if a shared hyperparameter differs between groups.
        """
        first = self.param_groups[0]
        for group in self.param_groups[1:]:
            self._check_agree(first, group)
        return first

"""The one parameter-group and validation mechanism (secondorder.optim.hyperparameters)."""

import re

import pytest
import torch

import secondorder.optim as so
from secondorder.optim import hyperparameters as hyper
from secondorder.optim.base import SecondOrderOptimizer


@pytest.mark.parametrize(
    "rule, bad, good, says",
    [
        (hyper.positive, 0.0, 1e-12, "> 0"),
        (hyper.nonnegative, -1e-12, 0.0, ">= 0"),
        (hyper.finite_nonnegative, float("inf"), 0.0, "finite and >= 0"),
        (hyper.greater_than(1), 1.0, 1.5, "> 1"),
        (hyper.in_range(0, 1), 1.0, 0.5, "in (0, 1)"),
        (hyper.in_range(0, 1, "[]"), 1.5, 1.0, "in [0, 1]"),
        (hyper.integer(1), True, 3, "an int >= 1"),
        (hyper.integer(0), 1.5, 0, "an int >= 0"),
        (hyper.optional(hyper.integer(1)), 0, None, "None or an int >= 1"),
        (hyper.one_of(("a", "b")), "c", "a", "one of ('a', 'b')"),
        (hyper.positive, "x", 1, "> 0"),  # not comparable: refused, not a TypeError
    ],
)
def test_rules_accept_and_refuse_in_one_message_style(rule, bad, good, says):
    rule("knob", good)
    shown = repr(bad) if isinstance(bad, str) else bad
    message = f"Invalid knob value: {shown}; it must be {says}"
    with pytest.raises(ValueError, match=re.escape(message)):
        rule("knob", bad)


class Toy(hyper.Hyperparameters, SecondOrderOptimizer):
    """A declared optimizer: ``lr`` per group, ``radius`` shared, ``radius <= cap``."""

    PER_GROUP = ("lr",)
    DEFAULT_RULES = {"lr": hyper.positive}
    HYPERPARAMETERS = {"lr": hyper.finite_nonnegative, "radius": hyper.positive}

    def __init__(self, params, lr=1.0, radius=1.0, cap=2.0):
        super().__init__(params, dict(lr=lr, radius=radius, cap=cap))

    @classmethod
    def check_relations(cls, hp):
        hyper.require(hp["radius"] <= hp["cap"], "radius", hp["radius"], f"<= cap ({hp['cap']})")


def test_declared_groups_defaults_and_relations():
    a, b = (torch.zeros(2, requires_grad=True) for _ in range(2))
    with pytest.raises(ValueError, match=r"Invalid lr value: 0.0; it must be > 0"):
        Toy([a], lr=0.0)  # a default lr must move something
    opt = Toy([{"params": [a]}, {"params": [b], "lr": 0.0}])  # a group may freeze
    with pytest.raises(ValueError, match=r"Invalid radius value: 3.0; it must be <= cap \(2.0\)"):
        Toy([a], radius=3.0)
    with pytest.raises(ValueError, match=r"radius differs between param groups: 1.0 vs 0.5; it "
                                         r"must be the same for all groups \(Toy keeps one global "
                                         r"state; only lr may differ\)"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "radius": 0.5})
    assert len(opt.param_groups) == 2  # the refused group was not added
    opt.param_groups[1]["radius"] = 0.5
    with pytest.raises(ValueError, match="radius differs between param groups"):
        opt.shared_hyperparameters()


def test_every_key_lets_each_group_differ():
    a, b = (torch.zeros(2, requires_grad=True) for _ in range(2))
    opt = so.AdaHessian([{"params": [a]}, {"params": [b], "lr": 0.0, "betas": (0.5, 0.5)}])
    assert opt.shared_keys() == []
    assert "anything" in hyper.EVERY_KEY


def test_every_optimizer_uses_the_one_mechanism():
    """No optimizer keeps its own group check: each exported one is a Hyperparameters."""
    for obj in vars(so).values():
        if (isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer)
                and obj is not SecondOrderOptimizer):
            assert issubclass(obj, hyper.Hyperparameters), obj.__name__
            assert obj.HYPERPARAMETERS, obj.__name__

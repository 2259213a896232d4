"""One name per concept across the optimizers' constructors.

Each exported optimizer's ``__init__`` may use a concept's single allowed name, never one of
its known second spellings. Names follow ``torch.optim.LBFGS`` where it has one
(``tolerance_grad``, ``tolerance_change``); the line-search budget is ``max_ls_evals`` (not
torch's ``max_eval``, which counts every evaluation of a step, the first included, so a
migrated ``max_eval=26`` would silently mean one more trial here).
"""

import inspect

import pytest
import torch

import secondorder.optim as optim

# concept -> (the one allowed name, second spellings that must not appear)
NAMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "CG / Krylov iteration cap": (
        "max_cg_iter",
        ("cg_max_iter", "max_cg", "max_krylov", "krylov_dim", "cg_iters", "max_cg_iters"),
    ),
    "CG relative residual tolerance": ("cg_rtol", ("rtol", "cg_tol", "krylov_rtol")),
    "gradient-norm tolerance": ("tolerance_grad", ("grad_tol", "gtol", "grad_tolerance")),
    "loss-change tolerance": ("tolerance_change", ("change_tol", "ftol")),
    "line-search budget": (
        "max_ls_evals",
        ("max_evals", "ls_max_evals", "max_ls", "max_eval", "max_ls_eval"),
    ),
    "sufficient-decrease (Armijo) constant": ("c1", ("ls_c1", "armijo_c1")),
}


def optimizer_classes() -> list[type]:
    found = [
        obj for obj in vars(optim).values()
        if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer)
    ]
    return sorted(found, key=lambda c: c.__name__)


def test_every_exported_optimizer_is_inspected():
    names = {c.__name__ for c in optimizer_classes()}
    assert {"LBFGS", "LSCG", "HessianFree", "NewtonKrylov", "TrustRegion",
            "AdaptiveCubic", "LevenbergMarquardt", "NewtonCG"} <= names


def test_table_has_no_name_both_allowed_and_forbidden():
    allowed = {name for name, _ in NAMES.values()}
    forbidden = {alias for _, aliases in NAMES.values() for alias in aliases}
    assert not allowed & forbidden


@pytest.mark.parametrize("cls", optimizer_classes(), ids=lambda c: c.__name__)
def test_constructor_uses_one_name_per_concept(cls):
    params = set(inspect.signature(cls.__init__).parameters)
    for concept, (name, aliases) in NAMES.items():
        second = sorted(params & set(aliases))
        assert not second, f"{cls.__name__} spells the {concept} {second}; use {name!r}"


def test_a_second_spelling_is_caught():
    class Stray(torch.optim.Optimizer):
        def __init__(self, params, grad_tol: float = 0.0):
            super().__init__(params, {"grad_tol": grad_tol})

    params = set(inspect.signature(Stray.__init__).parameters)
    assert params & set(NAMES["gradient-norm tolerance"][1]) == {"grad_tol"}

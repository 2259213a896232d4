"""The optimizer registry: grids, protocols, lazy resolution, unavailable entries."""

import math

import pytest
import torch

from secondorder.bench import registry
from secondorder.bench.registry import REGISTRY, OptimizerSpec, get_optimizer


def test_first_order_entries_build_torch_optimizers_with_their_defaults():
    p = [torch.zeros(3, requires_grad=True)]
    sgd = get_optimizer("sgd").build(p, lr=0.5)
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["momentum"] == 0
    mom = get_optimizer("sgd_momentum").build(p, lr=0.5)
    assert mom.param_groups[0]["momentum"] == 0.9 and mom.param_groups[0]["lr"] == 0.5
    assert type(get_optimizer("adam").build(p, lr=1e-3)) is torch.optim.Adam
    assert type(get_optimizer("adagrad").build(p, lr=1e-3)) is torch.optim.Adagrad
    for n in ("sgd", "sgd_momentum", "adam", "adagrad"):
        s = get_optimizer(n)
        assert (s.protocol, s.first_order, s.knob) == ("torch", True, "lr")


def test_learning_rate_grid_is_half_decades_from_1e_4_to_1():
    g = get_optimizer("adam").grid("full")
    assert len(g) == 9 and g[0] == 1e-4 and g[-1] == 1.0
    steps = [math.log10(b / a) for a, b in zip(g[:-1], g[1:], strict=True)]
    assert all(abs(s - 0.5) < 0.03 for s in steps)
    assert get_optimizer("adam").grid("default") == (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    assert len(get_optimizer("adam").grid("quick")) < len(g)


def test_secondorder_entries_knobs_and_protocol():
    knobs = {"LBFGS": "lr", "NonlinearCG": "lr", "NewtonCG": "lr", "BarzilaiBorwein": "lr",
             "AdaHessian": "lr", "TrustRegion": "radius", "AdaptiveCubic": "sigma",
             "HessianFree": "damping", "NewtonKrylov": "taylor_ratio"}
    for name, knob in knobs.items():
        s = REGISTRY[name]
        assert (s.class_name, s.module, s.protocol, s.knob) == (
            name, "secondorder.optim", "secondorder", knob)
        assert not s.first_order
    assert REGISTRY["NewtonKrylov"].global_closure
    assert 0.05 in REGISTRY["NewtonKrylov"].grid("quick")  # [Shen] default
    assert {n for n, s in REGISTRY.items() if s.full_batch and not s.study_only} == {
        "LBFGS", "NonlinearCG", "NewtonCG", "BarzilaiBorwein"}
    assert "LSCG" in REGISTRY and "LevenbergMarquardt" in REGISTRY
    # HessianFree runs its default Gauss-Newton curvature (the runner passes ggn_closure).
    hf = REGISTRY["HessianFree"].build([torch.zeros(2, requires_grad=True)], damping=1.0)
    assert hf.param_groups[0]["curvature"] == "gauss_newton"


def test_hyperparameters_merge_defaults_and_knob():
    s = get_optimizer("sgd_momentum")
    assert s.hyperparameters(0.3) == {"momentum": 0.9, "lr": 0.3}
    assert s.hyperparameters() == {"momentum": 0.9}


def test_unavailable_classes_are_reported_not_raised(monkeypatch):
    ghost = OptimizerSpec("Ghost", "GhostOptimizerThatDoesNotExist", "secondorder.optim",
                          "secondorder", "lr", {"quick": (1.0,), "default": (1.0,),
                                                "full": (1.0,)})
    monkeypatch.setitem(REGISTRY, "Ghost", ghost)
    assert "has no GhostOptimizerThatDoesNotExist" in ghost.unavailable_reason()
    assert "Ghost" not in registry.available_optimizers()
    assert "Ghost" in registry.unavailable_optimizers()
    assert {"sgd", "adam"} <= set(registry.available_optimizers())
    with pytest.raises(ImportError, match="GhostOptimizerThatDoesNotExist"):
        ghost.resolve()


def test_bad_names_and_levels():
    with pytest.raises(ValueError, match="unknown optimizer 'nope'; valid names: sgd, "):
        get_optimizer("nope")
    with pytest.raises(ValueError, match="Invalid grid level: 'huge'"):
        get_optimizer("sgd").grid("huge")


def test_study_entries_are_registered_but_not_in_the_default_suite():
    p = [torch.zeros(3, requires_grad=True)]
    avg = get_optimizer("sgd_momentum_avg").build(p, lr=0.1)
    assert avg.param_groups[0]["momentum"] == 0.9 and avg.param_groups[0]["dampening"] == 0.9
    assert type(get_optimizer("torch_lbfgs").build(p, lr=1.0)) is torch.optim.LBFGS
    gd = get_optimizer("gd_linesearch").build(p, lr=1.0)
    assert gd.param_groups[0]["restart_every"] == 1
    nols = get_optimizer("newton_nols").build(p, lr=1.0)
    assert nols.param_groups[0]["line_search"] is None
    study = {n for n, s in REGISTRY.items() if s.study_only}
    norms = ("spherical", "adagrad", "full_rmsprop", "full_adagrad")
    assert study == {"sgd_momentum_avg", "torch_lbfgs", "gd_linesearch", "newton_nols",
                     "rmsprop", *(f"{m}_{n}" for m in ("TrustRegion", "AdaptiveCubic")
                                  for n in norms)}
    assert not study & set(registry.available_optimizers())


def test_register_a_class_defined_outside_any_module():
    class Mine(torch.optim.SGD):
        pass

    grids = {"quick": (0.1,), "default": (0.1, 1.0), "full": (0.01, 0.1, 1.0)}
    spec = OptimizerSpec.for_class(Mine, "lr", grids, protocol="torch", name="mine_sgd")
    try:
        assert registry.register(spec) is spec and get_optimizer("mine_sgd") is spec
        assert spec.unavailable_reason() is None
        assert type(spec.build([torch.zeros(2, requires_grad=True)], lr=0.1)) is Mine
        with pytest.raises(ValueError, match="'mine_sgd' is already registered"):
            registry.register(spec)
        assert registry.register(spec, replace=True) is spec
    finally:
        REGISTRY.pop("mine_sgd", None)
    with pytest.raises(ValueError, match="Invalid protocol value: 'jax'"):
        registry.register(OptimizerSpec.for_class(Mine, "lr", grids, protocol="jax"))
    with pytest.raises(ValueError, match=r"Invalid grids value: .*it must give \['full'\]"):
        registry.register(OptimizerSpec.for_class(Mine, "lr", {"quick": (1,), "default": (1,)}))
    assert "Mine" not in REGISTRY


def test_adaptive_norm_entries_build_the_paper_variants():
    """[AdaptiveNorms]: every norm of TR and ARC, and torch's RMSprop, build as named."""
    from secondorder.optim import AdaptiveCubic, TrustRegion
    from secondorder.optim.norms import DiagonalNorm, FullMatrixNorm, SphericalNorm

    p = [torch.zeros(3, requires_grad=True)]
    kinds = {"spherical": SphericalNorm, "adagrad": DiagonalNorm,
             "full_rmsprop": FullMatrixNorm, "full_adagrad": FullMatrixNorm}
    for method, cls in (("TrustRegion", TrustRegion), ("AdaptiveCubic", AdaptiveCubic)):
        for norm, kind in kinds.items():
            opt = get_optimizer(f"{method}_{norm}").build(p)
            assert type(opt) is cls and type(opt.norm) is kind
            assert opt.norm.name == norm
        assert type(get_optimizer(method).build(p).norm) is DiagonalNorm  # RMSProp default
        assert get_optimizer(method).build(p).norm.name == "rmsprop"
    assert type(get_optimizer("rmsprop").build(p, lr=1e-3)) is torch.optim.RMSprop
    assert get_optimizer("rmsprop").first_order

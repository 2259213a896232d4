"""The optimizers the benchmark knows: factory, defaults, the grid of the main knob, protocol.

First-order baselines come from :mod:`torch.optim`; second-order methods are looked up by
class name in :mod:`secondorder.optim` when first needed (``getattr``), so the benchmark
runs with whatever subset is importable and lists the others as unavailable.

Two closure protocols (see :mod:`secondorder.optim.base`):

- ``"torch"``: the closure zeroes the gradients, calls ``backward()`` and returns the loss.
- ``"secondorder"``: the closure returns the per-sample losses and does not call backward;
  entries with ``global_closure=True`` also get ``step(closure, global_closure=...)``, a
  closure on the full training set ([Shen] Alg. 1 line 1, the global gradient).
  Optimizers configured with ``curvature="gauss_newton"`` (HessianFree's default) also get
  ``step(closure, ggn_closure=...)`` on the same batch
  (:func:`secondorder.bench.runner.make_ggn_closure`).

Knob grids (DeepOBS-style log grids): learning rates on ``10^{-4..0}`` in half decades
(``"full"``), decades (``"default"``), or three values (``"quick"``); trust-region radius,
cubic regularization ``sigma``, Hessian-free damping and the Newton-Krylov Taylor ratio
([Shen], default 0.05) have their own grids.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "GRID_LEVELS",
    "OptimizerSpec",
    "REGISTRY",
    "available_optimizers",
    "get_optimizer",
    "list_optimizers",
    "register",
    "unavailable_optimizers",
]

GRID_LEVELS = ("quick", "default", "full")

_LR_FULL = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
_LR_DEFAULT = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
_LR_QUICK = (1e-3, 1e-2, 1e-1)
# Line-search methods take lr as the initial step of the search: a short grid near 1.
_LS_FULL = (0.01, 0.03, 0.1, 0.3, 1.0)
_LS_DEFAULT = (0.1, 1.0)
_LS_QUICK = (1.0,)


@dataclass(frozen=True)
class OptimizerSpec:
    """One registered optimizer.

    Attributes:
        name: registry key (``"sgd_momentum"``, ``"NewtonCG"``...).
        class_name: class in ``module``.
        module: ``"torch.optim"`` or ``"secondorder.optim"``.
        protocol: ``"torch"`` or ``"secondorder"`` (module docstring).
        knob: the tuned hyperparameter.
        grids: knob values per grid level (:data:`GRID_LEVELS`).
        defaults: fixed keyword arguments passed to the class.
        full_batch: runs on the whole training set on ``full_batch`` problems.
        global_closure: pass ``global_closure=`` (full training set) to ``step``.
        first_order: a first-order baseline (used to set time-to-target targets).
        full_batch_kwargs: keyword arguments added when the method runs full batch
            (LBFGS/NonlinearCG ``full_batch=True``; BarzilaiBorwein ``mode="bb1"``).
        epoch_length_kwarg: keyword that receives the number of steps per epoch
            (BarzilaiBorwein's ``epoch_length``, [Filippova] Alg. 3), or ``None``.
        description: one line for ``secondorder list``.
        study_only: an entry a paper study needs (``secondorder study``) that the default
            ``secondorder bench`` suite leaves out (:func:`available_optimizers`).
        optimizer_class: the class itself, for an optimizer defined outside an importable
            module (a script, a notebook); :meth:`resolve` returns it instead of importing
            ``module.class_name``. :meth:`for_class` fills it in.
    """

    name: str
    class_name: str
    module: str
    protocol: str
    knob: str
    grids: Mapping[str, tuple[float, ...]]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    full_batch: bool = False
    global_closure: bool = False
    first_order: bool = False
    description: str = ""
    full_batch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    epoch_length_kwarg: str | None = None
    study_only: bool = False
    optimizer_class: type[torch.optim.Optimizer] | None = field(default=None, compare=False)

    @classmethod
    def for_class(
        cls, optimizer_class: type[torch.optim.Optimizer], knob: str,
        grids: Mapping[str, tuple[float, ...]], *, name: str | None = None,
        protocol: str = "secondorder", **fields: Any,
    ) -> OptimizerSpec:
        """A spec for a class you wrote (name: the class name unless given).

        Args:
            optimizer_class: the optimizer class.
            knob: the tuned hyperparameter.
            grids: knob values per grid level (:data:`GRID_LEVELS`).
            name: registry key.
            protocol: ``"secondorder"`` (the closure returns the loss, no backward) or
                ``"torch"``.
            **fields: any other :class:`OptimizerSpec` field (``defaults``, ``description``...).
        """
        return cls(name or optimizer_class.__name__, optimizer_class.__qualname__,
                   optimizer_class.__module__, protocol, knob, grids,
                   optimizer_class=optimizer_class, **fields)

    def grid(self, level: str = "default") -> tuple[float, ...]:
        """Knob values for ``level``; raises ``ValueError`` naming the valid levels."""
        if level not in GRID_LEVELS:
            raise ValueError(f"Invalid grid level: {level!r}; choose one of {GRID_LEVELS}")
        return tuple(self.grids[level])

    def resolve(self) -> type[torch.optim.Optimizer]:
        """The optimizer class.

        Raises:
            ImportError: if the module or the class cannot be imported (yet).
        """
        if self.optimizer_class is not None:
            return self.optimizer_class
        mod = importlib.import_module(self.module)
        cls = getattr(mod, self.class_name, None)
        if cls is None:
            raise ImportError(f"{self.module} has no {self.class_name}")
        return cls

    def unavailable_reason(self) -> str | None:
        """``None`` if the class imports, else why not."""
        try:
            self.resolve()
        except Exception as e:  # noqa: BLE001 -- any import-time failure makes it unavailable
            return f"{type(e).__name__}: {e}"
        return None

    def hyperparameters(self, value: float | None = None) -> dict[str, Any]:
        """Defaults with the knob set to ``value`` (or the defaults alone)."""
        h = dict(self.defaults)
        if value is not None:
            h[self.knob] = value
        return h

    def build(
        self, params: Iterable[torch.Tensor], **hyperparameters: Any
    ) -> torch.optim.Optimizer:
        """Instantiate on ``params`` with ``defaults`` updated by ``hyperparameters``."""
        kwargs = dict(self.defaults)
        kwargs.update(hyperparameters)
        return self.resolve()(params, **kwargs)


#: Trust-region radius grids (Euclidean units, the ellipsoid normalized to mean diagonal 1).
_TR_GRIDS = {"full": (0.01, 0.03, 0.1, 0.3, 1.0, 3.0), "default": (0.1, 0.3, 1.0),
             "quick": (0.1, 0.3)}
#: Initial cubic-regularization grids (sigma adapts every step).
_ARC_GRIDS = {"full": (0.01, 0.1, 1.0, 10.0, 100.0), "default": (0.1, 1.0, 10.0),
              "quick": (1.0, 10.0)}
#: The [AdaptiveNorms] norms registered beside the default (RMSProp) ones.
_NORM_VARIANTS = (
    ("spherical", "spherical region (M = I)"),
    ("adagrad", "Adagrad ellipsoid (diagonal, [AdaptiveNorms] eq. 2)"),
    ("full_rmsprop", "full-matrix RMSProp ellipsoid (d x d; small models only)"),
    ("full_adagrad", "full-matrix Adagrad ellipsoid (d x d; small models only)"),
)


def lr_grids(level_full=_LR_FULL, level_default=_LR_DEFAULT, level_quick=_LR_QUICK):
    """The learning-rate grid of each level (``full``, ``default``, ``quick``)."""
    return {"full": level_full, "default": level_default, "quick": level_quick}


def _torch(name, cls, description, **defaults) -> OptimizerSpec:
    return OptimizerSpec(
        name, cls, "torch.optim", "torch", "lr", lr_grids(), defaults, first_order=True,
        description=description,
    )


def _so(name, knob, grids, description, *, full_batch=False, global_closure=False,
        full_batch_kwargs=None, epoch_length_kwarg=None, **defaults):
    return OptimizerSpec(
        name, name, "secondorder.optim", "secondorder", knob, grids, defaults,
        full_batch=full_batch, global_closure=global_closure, description=description,
        full_batch_kwargs=full_batch_kwargs or {}, epoch_length_kwarg=epoch_length_kwarg,
    )


_REGISTRY_LIST: tuple[OptimizerSpec, ...] = (
    _torch("sgd", "SGD", "torch.optim.SGD, plain stochastic gradient descent"),
    _torch("sgd_momentum", "SGD", "torch.optim.SGD with heavy-ball momentum 0.9", momentum=0.9),
    _torch("adam", "Adam", "torch.optim.Adam ([KingmaBa2015]"),
    _torch("adagrad", "Adagrad", "torch.optim.Adagrad ([Duchi2011]"),
    _so("LBFGS", "lr", lr_grids(_LS_FULL, _LS_DEFAULT, _LS_QUICK),
        "limited-memory BFGS with line search ([Filippova] Alg. 1, [Veitch])", full_batch=True,
        full_batch_kwargs={"full_batch": True}),
    _so("NonlinearCG", "lr", lr_grids(_LS_FULL, _LS_DEFAULT, _LS_QUICK),
        "nonlinear conjugate gradients with line search ([Veitch])", full_batch=True,
        full_batch_kwargs={"full_batch": True}),
    _so("NewtonCG", "lr", lr_grids(_LS_FULL, _LS_DEFAULT, _LS_QUICK),
        "line-search Newton-CG, truncated CG on Hessian-vector products ([Veitch])",
        full_batch=True, full_batch_kwargs={"full_batch": True}),
    _so("BarzilaiBorwein", "lr", lr_grids(),
        "Barzilai-Borwein: SGD-BB ([Filippova] Alg. 3) on mini-batches, BB1 with nonmonotone "
        "line search full batch", full_batch=True, full_batch_kwargs={"mode": "bb1"},
        epoch_length_kwarg="epoch_length"),
    _so("AdaHessian", "lr", lr_grids(),
        "AdaHessian: Hutchinson Hessian diagonal with momentum ([Filippova] Alg. 2)"),
    # Radius in Euclidean units (the ellipsoid is normalized to mean diagonal 1). Measured
    # on the full grid (docs/benchmark.md): 0.3 wins on digits softmax/MLP/CNN (seeds 0, 1),
    # 0.1 on the autoencoder; the convex full-batch problems tie across the grid.
    _so("TrustRegion", "radius", _TR_GRIDS,
        "stochastic trust region with ellipsoidal norms ([AdaptiveNorms])"),
    # sigma is only the initial regularization (it adapts every step): on the full grid the
    # winner changes with the seed and the edges (0.01, 100) were never consistently better.
    _so("AdaptiveCubic", "sigma", _ARC_GRIDS,
        "adaptive cubic regularization ([Cartis2011]; [AdaptiveNorms])"),
    _so("HessianFree", "damping",
        {"full": (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0), "default": (1e-3, 1e-1, 10.0),
         "quick": (1e-2, 1.0)},
        "Hessian-free optimization with Levenberg-Marquardt damping on the Gauss-Newton "
        "matrix ([Martens2010])"),
    _so("NewtonKrylov", "taylor_ratio",
        {"full": (0.01, 0.02, 0.05, 0.1, 0.2), "default": (0.02, 0.05, 0.2), "quick": (0.05,)},
        "stochastic Newton-Krylov with Taylor-ratio step sizing ([Shen] Alg. 1); Hessian "
        "products by autograd unless backend='complex-step' (the paper's complex-step "
        "products: same iterates to rounding, different cost)",
        global_closure=True),
    # LSCG costs 50-100 HVPs per step: its default grid is the default step only.
    _so("LSCG", "lr", lr_grids(_LS_FULL, _LS_QUICK, _LS_QUICK),
        "least-squares CG baseline ([Shen] Sec. 3)"),
    # Entries the paper studies need ([Veitch], [Filippova]; docs/studies/).
    OptimizerSpec(
        "sgd_momentum_avg", "SGD", "torch.optim", "torch", "lr", lr_grids(),
        {"momentum": 0.9, "dampening": 0.9}, first_order=True, study_only=True,
        description="torch.optim.SGD with averaged momentum m = 0.9 m + 0.1 g "
        "([Filippova] Sec. 2.1, dampening = momentum)"),
    OptimizerSpec(
        "torch_lbfgs", "LBFGS", "torch.optim", "torch", "lr",
        lr_grids(_LS_FULL, _LS_QUICK, _LS_QUICK),
        {}, study_only=True,
        description="torch.optim.LBFGS with its defaults (max_iter 20, no line search) on "
        "mini-batch closures, the way [Filippova] ran it"),
    OptimizerSpec(
        "gd_linesearch", "NonlinearCG", "secondorder.optim", "secondorder", "lr",
        lr_grids(_LS_FULL, _LS_DEFAULT, _LS_QUICK), {"restart_every": 1}, full_batch=True,
        full_batch_kwargs={"full_batch": True}, study_only=True,
        description="gradient descent with a strong-Wolfe line search (NonlinearCG restarted "
        "every iteration; [Veitch] Figs. 1-2 'Steplength estimator')"),
    OptimizerSpec(
        "newton_nols", "NewtonCG", "secondorder.optim", "secondorder", "lr",
        {"full": (0.1, 0.3, 1.0), "default": (1.0,), "quick": (1.0,)},
        {"line_search": None, "forcing": 1e-8}, full_batch=True, study_only=True,
        description="Newton without line search: x -= lr H^-1 g, H^-1 g by CG to 1e-8 "
        "([Veitch] Newton (noLS))"),
    # Optional extra "shampoo" (pyproject): unavailable, and skipped, when not installed.
    OptimizerSpec(
        "Shampoo", "Shampoo", "pytorch_optimizer", "torch", "lr", lr_grids(), {},
        description="Shampoo (Gupta, Koren, Singer 2018) from pytorch-optimizer, the "
        "[Shen] Fig. 3 baseline (optional extra 'shampoo')"),
    # [AdaptiveNorms] (docs/studies/adaptive_norms.md): the trust region and ARC in each of
    # the paper's norms (TrustRegion/AdaptiveCubic above are the RMSProp ellipsoid), the
    # full-matrix ellipsoids (d x d, eigendecomposition per step: small models only) and
    # torch's RMSprop. Study-only: each TR/ARC variant would add a full radius/sigma grid to
    # the default bench's budget.
    *(OptimizerSpec(
        f"TrustRegion_{norm}", "TrustRegion", "secondorder.optim", "secondorder", "radius",
        _TR_GRIDS, {"norm": norm}, study_only=True,
        description=f"stochastic trust region, {what} ([AdaptiveNorms] Alg. 1)")
      for norm, what in _NORM_VARIANTS),
    *(OptimizerSpec(
        f"AdaptiveCubic_{norm}", "AdaptiveCubic", "secondorder.optim", "secondorder", "sigma",
        _ARC_GRIDS, {"norm": norm}, study_only=True,
        description=f"adaptive cubic regularization, {what} ([AdaptiveNorms] Sec. 4)")
      for norm, what in _NORM_VARIANTS),
    OptimizerSpec(
        "rmsprop", "RMSprop", "torch.optim", "torch", "lr", lr_grids(), {}, first_order=True,
        study_only=True, description="torch.optim.RMSprop (Tieleman & Hinton 2012; the "
        "first-order method of the [AdaptiveNorms] ellipsoid)"),
    _so("LevenbergMarquardt", "damping",
        {"full": (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0), "default": (1e-3, 1e-1, 10.0),
         "quick": (1e-2, 1.0)},
        "Levenberg-Marquardt damped Newton baseline ([Shen] Sec. 3)"),
)

#: All registered optimizers by name, in report order.
REGISTRY: dict[str, OptimizerSpec] = {s.name: s for s in _REGISTRY_LIST}


def register(spec: OptimizerSpec, *, replace: bool = False) -> OptimizerSpec:
    """Add ``spec`` to :data:`REGISTRY` (last in report order) and return it.

    Raises:
        ValueError: if the name is taken (unless ``replace``), the protocol is not
            ``"torch"`` or ``"secondorder"``, or a grid level is missing.
    """
    if spec.name in REGISTRY and not replace:
        raise ValueError(f"optimizer {spec.name!r} is already registered; pass replace=True")
    if spec.protocol not in ("torch", "secondorder"):
        raise ValueError(
            f"Invalid protocol value: {spec.protocol!r}; it must be one of ('torch', 'secondorder')"
        )
    missing = [level for level in GRID_LEVELS if level not in spec.grids]
    if missing:
        raise ValueError(f"Invalid grids value: {dict(spec.grids)}; it must give {missing}")
    REGISTRY[spec.name] = spec
    return spec


def list_optimizers() -> list[str]:
    """All registered names (available or not), in report order, then the optimizers
    declared by import path or entry point (:mod:`secondorder.bench.plugins`)."""
    from secondorder.bench.plugins import optimizer_names

    return list(REGISTRY) + optimizer_names()


def get_optimizer(name: str) -> OptimizerSpec:
    """The spec registered as ``name``.

    Raises:
        ValueError: naming the valid names if ``name`` is not registered.
    """
    try:
        return REGISTRY[name]
    except KeyError:
        from secondorder.bench.plugins import find_optimizer

        if (spec := find_optimizer(name)) is not None:
            return spec
        raise ValueError(
            f"unknown optimizer {name!r}; valid names: {', '.join(REGISTRY)}"
        ) from None


def available_optimizers() -> list[str]:
    """Registered names whose class imports now (the default ``bench`` suite: entries marked
    ``study_only`` are left out)."""
    return [n for n, s in REGISTRY.items()
            if not s.study_only and s.unavailable_reason() is None]


def unavailable_optimizers() -> dict[str, str]:
    """Registered names whose class does not import, with the reason."""
    out = {}
    for n, s in REGISTRY.items():
        reason = s.unavailable_reason()
        if reason is not None:
            out[n] = reason
    return out

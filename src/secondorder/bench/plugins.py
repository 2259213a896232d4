"""Optimizers and problems from outside the package: import paths, user factories, entry points.

**Optimizers by import path** (``secondorder bench --optimizer SPEC``, the ``optimizers``
list of a config file)::

    [NAME=]module.path:Class [key=value[,value...] ...]

e.g. ``'torch.optim:RMSprop lr=1e-3,1e-2 alpha=0.9'``. ``Class`` may be dotted
(``Outer.Inner``) and must be a :class:`torch.optim.Optimizer` subclass. Values are read as
int, float, ``true``/``false``, ``none``, else kept as strings. The one key given several
values is the tuned knob (its values are the grid at every grid level); keys with one value
are fixed. Without a multi-valued key the knob is ``lr``: the value given, or the registry's
learning-rate grids (:mod:`secondorder.bench.registry`). ``NAME`` (default
``module.path:Class``) is the optimizer's name in the database and the report. The
optimizer runs with the ``"torch"`` closure protocol (the closure calls ``backward()``).

**Problems from a user's function** (:func:`declare_problem`): ``module:function`` called
with ``seed=`` (if it takes it), ``data_dir=`` (if it takes it) and the declared keyword
arguments, returning a :class:`~secondorder.bench.problems.Problem` or a mapping with

- ``model``: an ``nn.Module`` (re-initialized per seed with ``reset_parameters``) or a
  callable ``seed -> nn.Module`` (or no argument, called under ``torch.manual_seed(seed)``);
- ``loss``: ``(outputs, targets) -> per-sample losses`` (``reduction="none"``);
- ``train``, ``validation`` and optionally ``test`` (default: the validation split): a
  :class:`~secondorder.bench.problems.Split` or an ``(inputs, targets)`` pair;
- optionally ``accuracy`` (``(outputs, targets) -> fraction``), ``batch_size`` (default
  ``min(128, n)``), ``epochs`` (10), ``full_batch`` (False), ``description``.

**Entry points.** A third-party package registers optimizers under the group
:data:`OPTIMIZER_GROUP` (the object: an ``Optimizer`` subclass, tuned over ``lr``, or an
:class:`~secondorder.bench.registry.OptimizerSpec`) and problems under
:data:`PROBLEM_GROUP` (the object: a function as above). The entry point's name is the
name in the benchmark (``secondorder bench --optimizers NAME --problems NAME``). They are
discovered on first use and never join the default suite.

**Worker processes.** Declarations made in this process are mirrored into the environment
variable :data:`ENV_KEY` (JSON), which spawned sweep workers inherit: there, a lookup of an
unknown name (:func:`find_optimizer`, :func:`find_problem`) replays them.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import json
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from secondorder.bench import registry as R
from secondorder.bench.problems import core as P

__all__ = [
    "ENV_KEY",
    "OPTIMIZER_GROUP",
    "PROBLEM_GROUP",
    "ExternalOptimizerSpec",
    "OptimizerDeclaration",
    "PluginError",
    "declare_optimizer",
    "describe",
    "declare_problem",
    "find_optimizer",
    "find_problem",
    "import_object",
    "load_entry_points",
    "optimizer_names",
    "parse_optimizer_spec",
    "parse_value",
    "problem_from_function",
]

ENV_KEY = "SECONDORDER_BENCH_PLUGINS"
OPTIMIZER_GROUP = "secondorder.optimizers"
PROBLEM_GROUP = "secondorder.problems"
_NAME = re.compile(r"^[A-Za-z0-9_.:\-]+$")

_OPTIMIZERS: dict[str, R.OptimizerSpec] = {}
_OPTIMIZER_DECLS: dict[str, dict[str, Any]] = {}
_PROBLEM_DECLS: dict[str, dict[str, Any]] = {}
_ENTRY_POINT_ERRORS: dict[str, str] = {}
_entry_points_loaded = False


class PluginError(ValueError):
    """A bad optimizer/problem declaration; the message names the spec or the file."""


# ------------------------------------------------------------------------------ parsing
def parse_value(text: str) -> Any:
    """``"3"`` -> 3, ``"1e-3"`` -> 0.001, ``"true"`` -> True, ``"none"`` -> None, else the text."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def import_object(target: str, what: str | None = None) -> Any:
    """The object at ``"module.path:attr[.attr]"``.

    Raises:
        PluginError: naming ``target`` when the form is wrong, the module does not import or
            the attribute is missing.
    """
    what = what or repr(target)
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise PluginError(f"{what}: expected the form 'module.path:Name', got {target!r}")
    try:
        obj = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 -- any import failure, reported with the spec
        raise PluginError(f"{what}: cannot import module {module!r} "
                          f"({type(e).__name__}: {e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PluginError(f"{what}: module {module!r} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class OptimizerDeclaration:
    """An optimizer given by import path: what :func:`parse_optimizer_spec` read.

    Attributes:
        name: name in the benchmark.
        target: ``"module.path:Class"``.
        values: candidate values per hyperparameter (one value = fixed).
        protocol: closure protocol (``"torch"`` or ``"secondorder"``).
        first_order: counts as a first-order baseline for the targets.
        source: the text it was read from (for error messages).
    """

    name: str
    target: str
    values: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    protocol: str = "torch"
    first_order: bool = False
    source: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target,
                "values": {k: list(v) for k, v in self.values.items()},
                "protocol": self.protocol, "first_order": self.first_order,
                "source": self.source}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> OptimizerDeclaration:
        values = {k: tuple(_untuple_json(x) for x in v) for k, v in d["values"].items()}
        return cls(d["name"], d["target"], values, d["protocol"], d["first_order"], d["source"])


def _untuple_json(x: Any) -> Any:
    return tuple(_untuple_json(v) for v in x) if isinstance(x, list) else x


def parse_optimizer_spec(text: str) -> OptimizerDeclaration:
    """Read ``[NAME=]module.path:Class [key=v1,v2 ...]`` (module docstring).

    Raises:
        PluginError: naming ``text`` for a malformed spec.
    """
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        raise PluginError(f"optimizer {text!r}: {e}") from None
    if not tokens:
        raise PluginError("optimizer '': empty spec; expected 'module.path:Class key=v1,v2'")
    head, rest = tokens[0], tokens[1:]
    name = None
    eq, colon = head.find("="), head.find(":")
    if 0 <= eq < colon:
        name, head = head[:eq], head[eq + 1:]
    if ":" not in head:
        raise PluginError(f"optimizer {text!r}: expected 'module.path:Class' before the "
                          "hyperparameters (e.g. 'torch.optim:RMSprop lr=1e-3,1e-2'); built-in "
                          "names go to --optimizers")
    values: dict[str, tuple[Any, ...]] = {}
    for tok in rest:
        key, sep, vals = tok.partition("=")
        if not sep or not key.isidentifier() or not vals:
            raise PluginError(f"optimizer {text!r}: cannot read {tok!r}; expected "
                              "key=value or key=value1,value2")
        if key in values:
            raise PluginError(f"optimizer {text!r}: {key!r} is given twice")
        values[key] = tuple(parse_value(v) for v in vals.split(","))
    return OptimizerDeclaration(name or head, head, values, source=text)


# ---------------------------------------------------------------------------- optimizers
@dataclass(frozen=True)
class ExternalOptimizerSpec(R.OptimizerSpec):
    """An :class:`~secondorder.bench.registry.OptimizerSpec` whose class may be dotted."""

    def resolve(self) -> type[torch.optim.Optimizer]:
        try:
            return import_object(f"{self.module}:{self.class_name}", f"optimizer {self.name!r}")
        except PluginError as e:
            raise ImportError(str(e)) from None


def _accepted(cls: type, what: str) -> set[str] | None:
    """Keyword arguments ``cls`` takes besides ``params`` (``None`` if it takes ``**kwargs``)."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _spec_from_declaration(decl: OptimizerDeclaration) -> ExternalOptimizerSpec:
    what = f"optimizer {decl.source or decl.target!r}"
    if not _NAME.match(decl.name):
        raise PluginError(f"{what}: invalid name {decl.name!r} (letters, digits, _ . : - only)")
    if decl.protocol not in ("torch", "secondorder"):
        raise PluginError(f"{what}: invalid protocol {decl.protocol!r}; "
                          "choose 'torch' or 'secondorder'")
    cls = import_object(decl.target, what)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise PluginError(f"{what}: {decl.target} is not a torch.optim.Optimizer subclass")
    accepted = _accepted(cls, what)
    if accepted is not None:
        bad = [k for k in decl.values if k not in accepted]
        if bad:
            raise PluginError(f"{what}: {cls.__name__} takes no hyperparameter "
                              f"{', '.join(map(repr, bad))} "
                              f"(it takes {', '.join(sorted(accepted))})")
    for k, v in decl.values.items():
        if not v:
            raise PluginError(f"{what}: no value for {k!r}")
    multi = [k for k, v in decl.values.items() if len(v) > 1]
    if len(multi) > 1:
        raise PluginError(f"{what}: only one hyperparameter may have several values (the tuned "
                          f"knob); got {', '.join(multi)}")
    if multi:
        knob = multi[0]
        grids = {level: tuple(decl.values[knob]) for level in R.GRID_LEVELS}
    elif "lr" in decl.values:
        knob = "lr"
        grids = {level: tuple(decl.values["lr"]) for level in R.GRID_LEVELS}
    elif accepted is None or "lr" in accepted:
        knob, grids = "lr", R.lr_grids()
    else:
        raise PluginError(f"{what}: {cls.__name__} takes no 'lr'; give the tuned "
                          "hyperparameter with its values, e.g. key=0.1,1")
    defaults = {k: v[0] for k, v in decl.values.items() if k != knob}
    module, _, class_name = decl.target.partition(":")
    return ExternalOptimizerSpec(
        decl.name, class_name, module, decl.protocol, knob, grids, defaults,
        first_order=decl.first_order, description=f"{decl.target} (by import path)")


def declare_optimizer(decl: OptimizerDeclaration | str) -> R.OptimizerSpec:
    """Import, check and register an optimizer given by import path; returns its spec.

    Declaring the same optimizer again is a no-op.

    Raises:
        PluginError: naming the spec if the import or class fails, a hyperparameter is not
            accepted by the class, or the name is taken by another optimizer.
    """
    if isinstance(decl, str):
        decl = parse_optimizer_spec(decl)
    if decl.name in R.REGISTRY:
        raise PluginError(f"optimizer {decl.source or decl.target!r}: the name {decl.name!r} "
                          "is a built-in optimizer; choose another with NAME=module:Class")
    known = _OPTIMIZER_DECLS.get(decl.name)
    if known is not None:
        if known == decl.as_json():
            return _OPTIMIZERS[decl.name]
        raise PluginError(f"optimizer {decl.source or decl.target!r}: the name {decl.name!r} is "
                          f"already used by {known['source'] or known['target']!r}; "
                          "name one with NAME=module:Class")
    spec = _spec_from_declaration(decl)
    _OPTIMIZERS[decl.name] = spec
    _OPTIMIZER_DECLS[decl.name] = decl.as_json()
    _mirror()
    return spec


def optimizer_names() -> list[str]:
    """Names of the optimizers declared in this process and of the entry points."""
    load_entry_points()
    return list(_OPTIMIZERS)


def find_optimizer(name: str) -> R.OptimizerSpec | None:
    """The plugin optimizer ``name`` (declared here, in the parent process, or an entry
    point), else ``None``.

    Raises:
        PluginError: if ``name`` is an entry point that failed to load.
    """
    if name not in _OPTIMIZERS:
        _replay()
    if name not in _OPTIMIZERS:
        load_entry_points()
    if name in _ENTRY_POINT_ERRORS and name not in _OPTIMIZERS:
        raise PluginError(_ENTRY_POINT_ERRORS[name])
    return _OPTIMIZERS.get(name)


# ------------------------------------------------------------------------------ problems
def _split(value: Any, key: str, what: str) -> P.Split:
    if isinstance(value, P.Split):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        x, y = (v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for v in value)
        try:
            return P.Split(x, y)
        except ValueError as e:
            raise PluginError(f"{what}: {key}: {e}") from None
    raise PluginError(f"{what}: {key} must be a Split or an (inputs, targets) pair, "
                      f"got {type(value).__name__}")


def _model_factory(model: Any, what: str) -> Callable[[int], nn.Module]:
    if isinstance(model, nn.Module):
        template = model

        def make(seed: int) -> nn.Module:
            torch.manual_seed(seed)
            m = copy.deepcopy(template)
            for sub in m.modules():
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
            return m

        return make
    if callable(model):
        takes_seed = bool(_parameters(model))

        def build(seed: int) -> nn.Module:
            torch.manual_seed(seed)
            return model(seed) if takes_seed else model()

        return build
    raise PluginError(f"{what}: model must be an nn.Module or a callable returning one, "
                      f"got {type(model).__name__}")


def _parameters(fn: Callable) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


_PROBLEM_KEYS = {"model", "loss", "train", "validation", "test", "accuracy", "batch_size",
                 "epochs", "full_batch", "description"}


def _to_problem(name: str, made: Any, what: str) -> P.Problem:
    if isinstance(made, P.Problem):
        return dataclasses.replace(made, name=name)
    if not isinstance(made, Mapping):
        raise PluginError(f"{what}: must return a Problem or a mapping with model, loss, "
                          f"train, validation, got {type(made).__name__}")
    missing = [k for k in ("model", "loss", "train", "validation") if k not in made]
    unknown = sorted(set(made) - _PROBLEM_KEYS)
    if missing or unknown:
        raise PluginError(f"{what}: the returned mapping "
                          + (f"lacks {', '.join(missing)}" if missing else "")
                          + ("; " if missing and unknown else "")
                          + (f"has unknown keys {', '.join(unknown)} (known: "
                             f"{', '.join(sorted(_PROBLEM_KEYS))})" if unknown else ""))
    train = _split(made["train"], "train", what)
    validation = _split(made["validation"], "validation", what)
    test = _split(made["test"], "test", what) if made.get("test") is not None else validation
    make_model = _model_factory(made["model"], what)
    loss = made["loss"]
    with torch.no_grad():
        out = make_model(0)(train.inputs[:2])
        per_sample = loss(out, train.targets[:2])
    if not (isinstance(per_sample, torch.Tensor) and per_sample.shape == (min(2, len(train)),)):
        shape = tuple(per_sample.shape) if isinstance(per_sample, torch.Tensor) else per_sample
        raise PluginError(f"{what}: loss must return one value per sample "
                          f"(reduction='none'); on 2 samples it returned shape {shape}")
    batch_size = int(made.get("batch_size") or min(128, len(train)))
    return P.Problem(
        name=name, description=str(made.get("description") or f"user problem {what}"),
        train=train, validation=validation, test=test, make_model=make_model, loss=loss,
        accuracy=made.get("accuracy"), batch_size=batch_size,
        full_batch=bool(made.get("full_batch", False)), epochs=made.get("epochs", 10),
        tags=("user",))


def problem_from_function(name: str, fn: Callable[..., Any],
                          kwargs: Mapping[str, Any] | None = None) -> P.ProblemFactory:
    """A ``factory(data_dir, seed) -> Problem`` from a user's function (module docstring)."""
    kwargs = dict(kwargs or {})
    accepted = _parameters(fn)
    what = f"problem {name!r} ({getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', fn)})"

    def factory(data_dir: Path | None, seed: int) -> P.Problem:
        extra = dict(kwargs)
        if "seed" in accepted:
            extra["seed"] = seed
        if "data_dir" in accepted:
            extra["data_dir"] = data_dir
        try:
            made = fn(**extra)
        except PluginError:
            raise
        except Exception as e:  # noqa: BLE001 -- reported with the problem's name
            raise PluginError(f"{what} raised {type(e).__name__}: {e}") from e
        return _to_problem(name, made, what)

    return factory


def declare_problem(name: str, factory: str, kwargs: Mapping[str, Any] | None = None) -> None:
    """Register the problem ``name`` built by the function at import path ``factory``.

    The function is called once here (seed 0) so that a broken problem fails now, naming
    it. Declaring the same problem again is a no-op.

    Raises:
        PluginError: naming the problem for a bad name, import, return value or loss.
    """
    decl = {"name": name, "factory": factory, "kwargs": dict(kwargs or {})}
    if not _NAME.match(name):
        raise PluginError(f"problem {name!r}: invalid name (letters, digits, _ . : - only)")
    if _PROBLEM_DECLS.get(name) == decl:
        return
    if name in P.list_problems() or name in _PROBLEM_DECLS:
        raise PluginError(f"problem {name!r} ({factory}): the name is already registered; "
                          "choose another")
    fn = import_object(factory, f"problem {name!r} ({factory})")
    if not callable(fn):
        raise PluginError(f"problem {name!r}: {factory} is not callable")
    made = problem_from_function(name, fn, kwargs)
    made(None, 0)  # fail now, naming the problem
    P.register(name, made)
    _PROBLEM_DECLS[name] = decl
    _mirror()


def find_problem(name: str) -> bool:
    """Register ``name`` if it is a problem declared in the parent process or an entry
    point; returns whether it is registered now."""
    if not P.is_registered(name):
        _replay()
    if not P.is_registered(name):
        load_entry_points()
    return P.is_registered(name)


P.add_problem_finder(find_problem)  # get_problem asks it about names it does not know


# ---------------------------------------------------------------------- entry points, env
def load_entry_points() -> None:
    """Register the entry points of :data:`OPTIMIZER_GROUP` and :data:`PROBLEM_GROUP`
    (once per process). One that fails to load is remembered with the reason and reported
    when its name is used."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=OPTIMIZER_GROUP):
        if ep.name in R.REGISTRY or ep.name in _OPTIMIZERS:
            continue
        what = f"optimizer entry point {ep.name!r} ({ep.value}, group {OPTIMIZER_GROUP})"
        try:
            obj = ep.load()
            if isinstance(obj, R.OptimizerSpec):
                spec = dataclasses.replace(obj, name=ep.name)
            elif isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer):
                spec = _spec_from_declaration(OptimizerDeclaration(
                    ep.name, f"{obj.__module__}:{obj.__qualname__}", source=ep.value))
            else:
                raise PluginError(f"{type(obj).__name__} is neither an Optimizer subclass "
                                  "nor an OptimizerSpec")
        except Exception as e:  # noqa: BLE001 -- reported when the name is used
            _ENTRY_POINT_ERRORS[ep.name] = f"{what} failed to load: {type(e).__name__}: {e}"
            continue
        _OPTIMIZERS[ep.name] = spec
    for ep in metadata.entry_points(group=PROBLEM_GROUP):
        if P.is_registered(ep.name):
            continue
        try:
            fn = ep.load()
        except Exception:  # noqa: BLE001, S112 -- get_problem names the missing problem
            continue
        P.register(ep.name, problem_from_function(ep.name, fn))


def _mirror() -> None:
    os.environ[ENV_KEY] = json.dumps({"optimizers": list(_OPTIMIZER_DECLS.values()),
                                      "problems": list(_PROBLEM_DECLS.values())})


def _replay() -> None:
    """Declare what the parent process declared (:data:`ENV_KEY`)."""
    raw = os.environ.get(ENV_KEY)
    if not raw:
        return
    data = json.loads(raw)
    for d in data.get("optimizers", ()):
        if d["name"] not in _OPTIMIZERS:
            declare_optimizer(OptimizerDeclaration.from_json(d))
    for d in data.get("problems", ()):
        if d["name"] not in _PROBLEM_DECLS and not P.is_registered(d["name"]):
            declare_problem(d["name"], d["factory"], d["kwargs"])


def declared() -> dict[str, Sequence[str]]:
    """Names declared in this process: ``{"optimizers": [...], "problems": [...]}``."""
    return {"optimizers": list(_OPTIMIZER_DECLS), "problems": list(_PROBLEM_DECLS)}


def describe() -> list[str]:
    """Lines for ``secondorder list``: the plug-in optimizers (entry points and those
    declared in this process) and the entry points that failed to load."""
    load_entry_points()
    if not _OPTIMIZERS and not _ENTRY_POINT_ERRORS:
        return []
    lines = [f"\nPlug-in optimizers (import paths, entry points of {OPTIMIZER_GROUP}):"]
    for name, s in _OPTIMIZERS.items():
        lines.append(f"  {name:18s} {s.module}:{s.class_name} [{s.protocol} protocol]")
        lines.append(f"      knob {s.knob}: default grid {list(s.grid('default'))}"
                     + (f"; defaults {dict(s.defaults)}" if s.defaults else ""))
    lines += [f"  {name:18s} NOT AVAILABLE ({why})" for name, why in _ENTRY_POINT_ERRORS.items()]
    return lines

"""``secondorder bench --config FILE.toml``: a sweep declared in a TOML file.

Top-level keys (all optional; a command-line flag wins over the file)::

    problems = ["cancer_logistic", "toy"]   # built-in or declared names
    optimizers = ["adam", "LBFGS", "torch.optim:RMSprop lr=1e-3,1e-2"]  # names or specs
    seeds = 2
    grid = "quick"                 # quick | default | full
    budget = 2                     # epochs; or budget_backprops / budget_seconds
    equal = "time"                 # time (calibrated equal time budget) | epochs
    evals_per_epoch = 2
    workers = 1
    sweep = "mine"
    data_dir = "data"
    tensorboard = "runs"

    [optimizer.rmsprop]            # an optimizer by import path
    class = "torch.optim:RMSprop"
    hyperparameters = { lr = [1e-3, 1e-2], alpha = 0.9 }  # a list: the tuned grid
    # protocol = "torch"; first_order = false

    [problem.toy]                  # a problem from a user's function
    factory = "mymodule:make_problem"
    kwargs = { n = 200 }

Which runs: the ``optimizers`` list (default: every available built-in) plus every
``[optimizer.NAME]`` table and every ``--optimizer`` spec; the ``problems`` list, plus every
``[problem.NAME]`` table (without a ``problems`` list: only the declared problems, or the
default suite when none is declared). Relative ``data_dir``/``tensorboard`` paths and
module files are taken relative to the current directory; the file's own directory is put
on ``sys.path`` so that ``factory``/``class`` may name modules beside it. Lists of
hyperparameter values are grids (a single-element list or a scalar is a fixed value; a
fixed list value is written as a one-element list of lists, ``betas = [[0.9, 0.99]]``).
See :mod:`secondorder.bench.plugins` for the spec grammar and the problem contract.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomllib

from secondorder.bench import plugins
from secondorder.bench.plugins import OptimizerDeclaration, PluginError
from secondorder.bench.registry import GRID_LEVELS

__all__ = ["ConfigError", "apply_bench_extensions", "load_config"]

_SCALARS: dict[str, type | tuple[type, ...]] = {
    "seeds": int, "grid": str, "budget": (int, float), "budget_backprops": (int, float),
    "budget_seconds": (int, float), "evals_per_epoch": int, "workers": int, "sweep": str,
    "data_dir": str, "tensorboard": str, "equal": str,
}
_LISTS = ("problems", "optimizers")
_TABLES = ("optimizer", "problem")
_OPTIMIZER_KEYS = {"class", "hyperparameters", "protocol", "first_order"}
_PROBLEM_KEYS = {"factory", "kwargs"}
_BUDGETS = ("budget", "budget_backprops", "budget_seconds")


class ConfigError(PluginError):
    """A bad config file; the message names the file and the key."""


def _check_type(path: Path, key: str, value: Any, kind) -> None:
    if isinstance(value, bool) or not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ConfigError(f"{path}: {key} must be {names}, got {value!r}")


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and check the config file (module docstring); returns its table.

    Raises:
        ConfigError: naming the file and the key for a missing file, bad TOML, an unknown
            key or a value of the wrong type.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read the file ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path}: not valid TOML ({e})") from None
    known = set(_SCALARS) | set(_LISTS) | set(_TABLES)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    for key, kind in _SCALARS.items():
        if key in data:
            _check_type(path, key, data[key], kind)
    for key in _LISTS:
        if key in data and not (isinstance(data[key], list)
                                and all(isinstance(v, str) for v in data[key])):
            raise ConfigError(f"{path}: {key} must be a list of strings, got {data[key]!r}")
    if "grid" in data and data["grid"] not in GRID_LEVELS:
        raise ConfigError(f"{path}: grid must be one of {', '.join(GRID_LEVELS)}, "
                          f"got {data['grid']!r}")
    if "equal" in data and data["equal"] not in ("time", "epochs"):
        raise ConfigError(f"{path}: equal must be time or epochs, got {data['equal']!r}")
    if sum(k in data for k in _BUDGETS) > 1:
        raise ConfigError(f"{path}: give only one of {', '.join(_BUDGETS)}")
    for table, allowed in (("optimizer", _OPTIMIZER_KEYS), ("problem", _PROBLEM_KEYS)):
        entries = data.get(table, {})
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}: [{table}] must be tables [{table}.NAME]")
        for name, entry in entries.items():
            where = f"{path}: [{table}.{name}]"
            if not isinstance(entry, dict):
                raise ConfigError(f"{where} must be a table")
            bad = sorted(set(entry) - allowed)
            if bad:
                raise ConfigError(f"{where}: unknown key(s) {', '.join(bad)}; "
                                  f"known: {', '.join(sorted(allowed))}")
            first = "class" if table == "optimizer" else "factory"
            if not isinstance(entry.get(first), str):
                raise ConfigError(f"{where}: needs {first} = \"module.path:Name\"")
            for sub in ("hyperparameters", "kwargs"):
                if sub in entry and not isinstance(entry[sub], dict):
                    raise ConfigError(f"{where}: {sub} must be a table, got {entry[sub]!r}")
    return data


def _declaration(path: Path, name: str, entry: Mapping[str, Any]) -> OptimizerDeclaration:
    values = {}
    for k, v in entry.get("hyperparameters", {}).items():
        values[k] = tuple(_tuple(x) for x in v) if isinstance(v, list) else (v,)
    protocol = entry.get("protocol", "torch")
    first_order = entry.get("first_order", False)
    if not isinstance(first_order, bool):
        raise ConfigError(f"{path}: [optimizer.{name}] first_order must be true or false")
    return OptimizerDeclaration(name, entry["class"], values, protocol, first_order,
                                source=f"{path} [optimizer.{name}]")


def _tuple(x: Any) -> Any:
    return tuple(_tuple(v) for v in x) if isinstance(x, list) else x


def apply_bench_extensions(args: argparse.Namespace) -> None:
    """Fold ``--config``, ``--optimizer`` and ``--tensorboard`` into the ``bench`` arguments.

    Sets ``args.problems``/``args.optimizers`` to the names to run (declaring the
    import-path optimizers and user problems) and fills every option the command line left
    unset from the config file.

    Raises:
        ValueError: (:class:`ConfigError`/:class:`~secondorder.bench.plugins.PluginError`)
            naming the file, spec or flag at fault.
    """
    from secondorder.bench.registry import available_optimizers
    from secondorder.bench.tensorboard import configure

    plugins.load_entry_points()
    cfg: dict[str, Any] = {}
    path = None
    if getattr(args, "config", None):
        path = Path(args.config)
        cfg = load_config(path)
        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
    cli_budget = any(getattr(args, k, None) is not None for k in _BUDGETS)
    for key in _SCALARS:
        if key in cfg and getattr(args, key, None) is None:
            if key in _BUDGETS and cli_budget:
                continue
            setattr(args, key, cfg[key])

    declared_problems = []
    for name, entry in cfg.get("problem", {}).items():
        plugins.declare_problem(name, entry["factory"], entry.get("kwargs"))
        declared_problems.append(name)
    added = []
    for name, entry in cfg.get("optimizer", {}).items():
        added.append(plugins.declare_optimizer(_declaration(path, name, entry)).name)
    builtin = None if args.optimizers is not None else cfg.get("optimizers")
    if builtin is not None:
        names = []
        for item in builtin:
            if ":" in item:
                names.append(plugins.declare_optimizer(item).name)
            else:
                names.append(item)
        builtin = names
    for spec in getattr(args, "optimizer", None) or ():
        added.append(plugins.declare_optimizer(spec).name)
    if added or builtin is not None:
        base = args.optimizers if args.optimizers is not None else builtin
        if base is None:
            base = available_optimizers()
        args.optimizers = list(dict.fromkeys([*base, *added]))
    if args.problems is None:
        if "problems" in cfg:
            args.problems = list(dict.fromkeys([*cfg["problems"], *declared_problems]))
        elif declared_problems:
            args.problems = declared_problems
    configure(getattr(args, "tensorboard", None))

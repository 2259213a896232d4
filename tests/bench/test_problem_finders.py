"""The problem registry consults its finders (the plug-in lookup) without importing them."""

from __future__ import annotations

import ast
import inspect

import pytest

from secondorder.bench import plugins
from secondorder.bench.problems import core as P


def test_get_problem_asks_the_finders_about_an_unknown_name(isolated):
    isolated.setattr(P, "_FINDERS", list(P._FINDERS))
    asked = []

    def finder(name):
        asked.append(name)
        if name == "late_rosenbrock":
            P.register(name, lambda data_dir, seed: P.get_problem("rosenbrock", seed=seed))
        return P.is_registered(name)

    P.add_problem_finder(finder)
    P.add_problem_finder(finder)  # a no-op
    assert P._FINDERS.count(finder) == 1
    assert P.get_problem("late_rosenbrock").name == "rosenbrock"
    assert asked == ["late_rosenbrock"]
    P.get_problem("late_rosenbrock")  # registered now: the finders are not asked again
    assert asked == ["late_rosenbrock"]
    with pytest.raises(ValueError, match="Unknown problem 'nowhere'; available: digits_softmax"):
        P.get_problem("nowhere")
    assert asked[-1] == "nowhere"


def test_the_plugin_finder_is_installed_with_the_bench_package():
    assert plugins.find_problem in P._FINDERS


def test_the_registry_imports_nothing_above_it():
    tree = ast.parse(inspect.getsource(P))
    top_level = set(tree.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            assert node in top_level, f"function-local import at line {node.lineno}"
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            assert "plugins" not in (module or ""), f"core imports {module} (line {node.lineno})"

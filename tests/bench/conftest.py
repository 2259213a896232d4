"""Fixtures of the bench tests."""

import pytest

from secondorder.bench import plugins, sweep
from secondorder.bench.problems import core as P
from secondorder.bench.tensorboard import ENV_DIR


@pytest.fixture
def isolated(monkeypatch):
    """Plug-in registries, the problem registry, the sweep's problem cache and the
    environment as they were; restored after the test."""
    monkeypatch.setattr(plugins, "_OPTIMIZERS", {})
    monkeypatch.setattr(plugins, "_OPTIMIZER_DECLS", {})
    monkeypatch.setattr(plugins, "_PROBLEM_DECLS", {})
    monkeypatch.setattr(plugins, "_ENTRY_POINT_ERRORS", {})
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    monkeypatch.setattr(P, "_REGISTRY", dict(P._REGISTRY))
    monkeypatch.setattr(sweep, "_PROBLEMS", {})
    monkeypatch.setenv(plugins.ENV_KEY, "")
    monkeypatch.setenv(ENV_DIR, "")
    return monkeypatch

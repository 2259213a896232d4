"""What data a problem actually used: its description, split sizes and chance level.

The sweep stores :func:`data_facts` of every problem it runs in the database (``meta`` key
:data:`META_KEY`), so a report rebuilt later states the data without reloading it. Reports
of databases written before that fall back to :func:`facts_from_registry`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from secondorder.bench.problems import get_problem, list_problems

__all__ = ["META_KEY", "data_facts", "describe", "facts_from_registry"]

#: ``meta`` key under which a sweep stores ``{problem: data_facts(problem)}``.
META_KEY = "problem_data"


def _majority_fraction(targets: torch.Tensor) -> float:
    """Share of the most frequent label: the accuracy of always predicting it."""
    _, counts = torch.unique(targets.reshape(-1), return_counts=True)
    return float(counts.max()) / float(targets.numel())


def data_facts(problem: Any) -> dict[str, Any]:
    """JSON-ready facts about the data of ``problem`` (a :class:`~.problems.Problem`).

    Returns:
        ``description``, split sizes ``train``/``validation``/``test``, ``batch_size``,
        ``full_batch``, ``epochs``, ``tags``; for classification problems also ``classes``
        (labels seen in the training split) and ``chance_validation`` / ``chance_test``:
        the accuracy of always predicting the split's most frequent label.
    """
    facts: dict[str, Any] = {
        "description": problem.description,
        "train": len(problem.train),
        "validation": len(problem.validation),
        "test": len(problem.test),
        "batch_size": int(problem.batch_size),
        "full_batch": bool(getattr(problem, "full_batch", False)),
        "epochs": getattr(problem, "epochs", None),
        "tags": list(getattr(problem, "tags", ()) or ()),
    }
    if problem.accuracy is not None:
        facts["classes"] = int(torch.unique(problem.train.targets).numel())
        facts["chance_validation"] = _majority_fraction(problem.validation.targets)
        facts["chance_test"] = _majority_fraction(problem.test.targets)
    return facts


def facts_from_registry(names: list[str], data_dir: str | Path | None = None
                        ) -> dict[str, dict[str, Any]]:
    """:func:`data_facts` of the registered problems among ``names`` that load now
    (split seed 0, as the sweep uses); problems that do not load are left out."""
    known = set(list_problems())
    out = {}
    for name in names:
        if name not in known:
            continue
        try:
            out[name] = data_facts(get_problem(name, data_dir=data_dir, seed=0))
        except Exception:  # noqa: BLE001 -- missing files: the report says "not recorded"
            continue
    return out


def describe(facts: Mapping[str, Any] | None) -> str:
    """One sentence for the report, e.g. ``"sklearn digits ...; splits 1,078 / 359 / 360
    (train / validation / test), 10 classes (...), batch size 32."``."""
    if not facts:
        return "Data: not recorded in the database and the problem does not load here."
    parts = [f"splits {facts['train']:,} / {facts['validation']:,} / {facts['test']:,} "
             "(train / validation / test)"]
    if facts.get("classes"):
        parts.append(f"{facts['classes']} classes (majority class: "
                     f"{facts['chance_test']:.3g} of the test split)")
    parts.append(f"batch size {facts['batch_size']:,}"
                 + (" (full-batch problem)" if facts.get("full_batch") else ""))
    return f"Data: {facts['description']}; " + ", ".join(parts) + "."

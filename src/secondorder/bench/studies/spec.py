"""A study's declared specification: problems, methods, budgets, seeds, tables, figures.

A :class:`Study` is data, not code that runs: :mod:`~secondorder.bench.studies.execute`
runs its :class:`Part` s through the benchmark's store (same database, same resume rules)
and :mod:`~secondorder.bench.studies.render` writes its :class:`Table` s (the paper's
layout, the paper's numbers beside ours) and :class:`Figure` s. :meth:`Study.validate`
checks the whole declaration before anything runs and names the first unknown item.

Two kinds of part:

- ``"epochs"``: mini-batch training by the benchmark runner
  (:func:`secondorder.bench.runner.run`, batches reshuffled every pass), budget in epochs,
  one evaluation per epoch ([Filippova]).
- ``"iterations"``: optimizer iterations on the sampled objective of [Veitch] eq. 28
  (:class:`~secondorder.optim.SampledObjective`; problem ``sampling`` ``"fixed"``,
  ``"reshuffled"`` (new batches each iteration) or ``"full"``), one evaluation per
  iteration (:mod:`~secondorder.bench.studies.iterations`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from secondorder.bench.registry import REGISTRY

__all__ = [
    "PART_KINDS",
    "SAMPLINGS",
    "SPECIAL_METHODS",
    "Column",
    "Figure",
    "MethodSpec",
    "Part",
    "ProblemSpec",
    "Row",
    "Study",
    "StudySpecError",
    "Table",
]

PART_KINDS = ("epochs", "iterations")
SAMPLINGS = ("epochs", "fixed", "reshuffled", "full")
#: Methods that are not torch optimizers: run by the iteration runner itself.
SPECIAL_METHODS = ("scipy_lbfgsb",)


class StudySpecError(ValueError):
    """A study declaration names something unknown or inconsistent (the message says what)."""


@dataclass(frozen=True)
class ProblemSpec:
    """A problem of a study part.

    Attributes:
        name: key within the study (``"logistic_fixed"``).
        build: name of a builder in :data:`secondorder.bench.studies.problems.BUILDERS`.
        batch_size: mini-batch size ``m_b``.
        sampling: one of :data:`SAMPLINGS`.
        num_batches: ``R`` of eq. 28 (``None``: ``ceil(m / m_b)``, the batches cover the set).
        options: keyword arguments of the builder (``hidden_layers=2``).
    """

    name: str
    build: str
    batch_size: int
    sampling: str = "epochs"
    num_batches: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    """A method: a registry optimizer (or a :data:`SPECIAL_METHODS` entry) and settings.

    Attributes:
        label: the name shown in tables and figures (``"Newton (LS)"``); unique in a part.
        optimizer: registry name (``secondorder list``) or ``"scipy_lbfgsb"``.
        hyperparameters: fixed keyword arguments (over the registry defaults).
        grid: values of the registry entry's knob tried on seed 0; the one with the best
            final validation accuracy is kept (:func:`secondorder.bench.sweep.select_best`).
            Empty: ``hyperparameters`` as given.
    """

    label: str
    optimizer: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    grid: tuple[float, ...] = ()

    @property
    def knob(self) -> str | None:
        spec = REGISTRY.get(self.optimizer)
        return None if spec is None else spec.knob

    def settings(self) -> list[dict[str, Any]]:
        """The hyperparameter dicts to try (one without a grid)."""
        if not self.grid:
            return [dict(self.hyperparameters)]
        return [{**self.hyperparameters, self.knob: v} for v in self.grid]


@dataclass(frozen=True)
class Part:
    """One experiment of a study: problems x methods x seeds under one budget.

    Attributes:
        name: key within the study.
        title: what it reproduces ("Tables 1-2, Figs. 4-5").
        kind: one of :data:`PART_KINDS`.
        problems, methods: what runs.
        budget: ``{"epochs": E}`` or ``{"iterations": N}``.
        seeds: repetitions of each selected setting (seeds ``0..seeds-1``).
    """

    name: str
    title: str
    kind: str
    problems: tuple[ProblemSpec, ...]
    methods: tuple[MethodSpec, ...]
    budget: Mapping[str, float]
    seeds: int = 1

    def method(self, label: str) -> MethodSpec:
        for m in self.methods:
            if m.label == label:
                return m
        raise StudySpecError(f"part {self.name!r} has no method {label!r}")

    def problem(self, name: str) -> ProblemSpec:
        for p in self.problems:
            if p.name == name:
                return p
        raise StudySpecError(f"part {self.name!r} has no problem {name!r}")


@dataclass(frozen=True)
class Column:
    """A table column: a header, the metric (:data:`secondorder.bench.studies.metrics.METRICS`)
    computing our value, and the tolerance within which ours "agrees" with the paper's."""

    header: str
    metric: str
    tolerance: float | None = None


@dataclass(frozen=True)
class Row:
    """A table row: the paper's label, our (problem, method) and the paper's numbers as
    printed, one string per column ("-" where the paper has none)."""

    label: str
    problem: str
    method: str
    paper: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """A table of the paper, in its layout, with the paper's column beside ours.

    Attributes:
        name: ``"Table 1"``.
        caption: the paper's caption (shortened) and what we ran.
        part: the part whose runs fill it.
        columns, rows: layout; ``len(row.paper) == len(columns)``.
        note: why ours may differ (printed after the agreement line).
    """

    name: str
    caption: str
    part: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    note: str = ""


@dataclass(frozen=True)
class Figure:
    """A figure redrawn from our runs: ``draw(results, path)`` writes the PNG at ``path``."""

    name: str
    caption: str
    part: str
    draw: Callable[[Any, Any], None]


@dataclass(frozen=True)
class Study:
    """A paper's study (module docstring).

    Attributes:
        name: the paper's reference key in lower case (``"veitch"``).
        key: the docs/references.md key (``"[Veitch]"``).
        title: the paper's title.
        parts, tables, figures: the declaration.
        data_note: which data set stands in for the paper's (said in every caption).
        notes: free text printed under the title (protocol departures, scaling).
    """

    name: str
    key: str
    title: str
    parts: tuple[Part, ...]
    tables: tuple[Table, ...]
    figures: tuple[Figure, ...]
    data_note: str = ""
    notes: tuple[str, ...] = ()

    def part(self, name: str) -> Part:
        for p in self.parts:
            if p.name == name:
                return p
        raise StudySpecError(f"study {self.name!r} has no part {name!r}")

    def validate(self) -> Study:
        """Check the declaration; returns ``self``.

        Raises:
            StudySpecError: naming the unknown method, problem builder, part, metric, or
                the inconsistent item.
        """
        from secondorder.bench.studies.metrics import METRICS
        from secondorder.bench.studies.problems import BUILDERS

        names = [p.name for p in self.parts]
        if len(set(names)) != len(names):
            raise StudySpecError(f"study {self.name!r}: duplicate part names {names}")
        for part in self.parts:
            where = f"study {self.name!r}, part {part.name!r}"
            if part.kind not in PART_KINDS:
                raise StudySpecError(f"{where}: unknown kind {part.kind!r}; use {PART_KINDS}")
            unit = "epochs" if part.kind == "epochs" else "iterations"
            if set(part.budget) != {unit} or not part.budget[unit] > 0:
                raise StudySpecError(
                    f"{where}: budget {dict(part.budget)}; expected {{{unit!r}: >0}}")
            if part.seeds < 1:
                raise StudySpecError(f"{where}: seeds {part.seeds}; it must be >= 1")
            for p in part.problems:
                if p.build not in BUILDERS:
                    raise StudySpecError(
                        f"{where}: unknown problem {p.build!r} (problem {p.name!r}); "
                        f"known: {', '.join(sorted(BUILDERS))}")
                if p.sampling not in SAMPLINGS:
                    raise StudySpecError(f"{where}: problem {p.name!r} has unknown sampling "
                                         f"{p.sampling!r}; use {SAMPLINGS}")
                if (p.sampling == "epochs") != (part.kind == "epochs"):
                    raise StudySpecError(f"{where}: problem {p.name!r} sampling {p.sampling!r} "
                                         f"does not fit a part of kind {part.kind!r}")
            labels = [m.label for m in part.methods]
            if len(set(labels)) != len(labels):
                raise StudySpecError(f"{where}: duplicate method labels {labels}")
            for m in part.methods:
                known = m.optimizer in REGISTRY or (
                    m.optimizer in SPECIAL_METHODS and part.kind == "iterations")
                if not known:
                    raise StudySpecError(
                        f"{where}: unknown method {m.optimizer!r} (label {m.label!r}); "
                        f"known: {', '.join([*REGISTRY, *SPECIAL_METHODS])}")
                if m.grid and m.knob is None:
                    raise StudySpecError(f"{where}: method {m.label!r} has a grid but no knob")
        for t in self.tables:
            part = self.part(t.part)
            for c in t.columns:
                if c.metric not in METRICS:
                    raise StudySpecError(f"{t.name}: unknown metric {c.metric!r}; known: "
                                         f"{', '.join(sorted(METRICS))}")
            for r in t.rows:
                part.problem(r.problem)
                part.method(r.method)
                if len(r.paper) != len(t.columns):
                    raise StudySpecError(f"{t.name}, row {r.label!r}: {len(r.paper)} paper "
                                         f"values for {len(t.columns)} columns")
        for f in self.figures:
            self.part(f.part)
        return self

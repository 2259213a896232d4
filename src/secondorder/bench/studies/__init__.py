"""The papers' experiments as one-command studies, with the papers' numbers beside ours.

``secondorder study NAME [--data-dir DIR] [--quick] [--seeds N] [--out DIR] [--executor ray
[--address ADDR]]`` runs a study
(:mod:`~secondorder.bench.studies.spec`: problems, methods, budgets, seeds, tables,
figures) through the benchmark's store (``OUT/results.sqlite``, resumable) and writes
``OUT/study.md``, ``OUT/study.html`` and ``OUT/figures/``. ``secondorder study --list``
lists the studies. Studies are named after the paper's reference key (docs/references.md).
``--executor ray`` runs each run as a Ray task (:mod:`secondorder.bench.executors`, as
``secondorder bench``); the database, resume and report are the same.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from secondorder.bench.executors import ExecutorUnavailableError, make_executor, use_executor
from secondorder.bench.studies import adaptive_norms, filippova, shen, veitch
from secondorder.bench.studies.spec import Study, StudySpecError
from secondorder.errors import DataFormatError

__all__ = ["STUDIES", "get_study", "list_studies", "main", "run"]

DB_NAME = "results.sqlite"

#: ``name -> build(quick, seeds) -> Study``.
STUDIES: dict[str, Callable[..., Study]] = {
    "veitch": veitch.build,
    "filippova": filippova.build,
    "shen": shen.build,
    "adaptive_norms": adaptive_norms.build,
}


def list_studies() -> list[str]:
    """The study names."""
    return list(STUDIES)


def get_study(name: str, *, quick: bool = False, seeds: int | None = None) -> Study:
    """The validated study ``name``.

    Raises:
        StudySpecError: for an unknown name (listing the known ones) or a bad ``seeds``.
    """
    if name not in STUDIES:
        raise StudySpecError(f"unknown study {name!r}; known: {', '.join(STUDIES)}")
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int)
                              or seeds < 1):
        raise StudySpecError(f"Invalid --seeds {seeds!r}; it must be an integer >= 1")
    return STUDIES[name](quick=quick, seeds=seeds).validate()


def run(name: str, out: str | Path, *, data_dir: str | None = None, quick: bool = False,
        seeds: int | None = None, progress: bool = True, command: str = "") -> dict:
    """Run study ``name`` into ``out`` and write its report; returns the report's paths
    and tables (:func:`~secondorder.bench.studies.render.write_study_report`). The runs
    execute on the active executor (:func:`secondorder.bench.executors.use_executor`;
    in this process by default)."""
    from secondorder.bench.studies.execute import run_study
    from secondorder.bench.studies.render import write_study_report

    study = get_study(name, quick=quick, seeds=seeds)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise StudySpecError(f"--data-dir {data_dir!r} does not exist")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_study(study, out / DB_NAME, data_dir=data_dir, quick=quick,
                        progress=progress)
    return write_study_report(results, out, command=command, quick=quick)


def main(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """The ``secondorder study`` command (``args`` from the CLI's ``study`` parser)."""
    try:
        if args.list:
            for name in STUDIES:
                study = get_study(name)
                parts = "; ".join(f"{p.name} ({p.title})" for p in study.parts)
                print(f"{name:10s} {study.key} {study.title}\n{'':10s} parts: {parts}")
            return 0
        if not args.name:
            raise StudySpecError("give a study NAME or --list; known: " + ", ".join(STUDIES))
        command = "secondorder " + " ".join(shlex.quote(a) for a in (argv or []))
        executor = make_executor(args.executor, address=args.address)  # exit 2 without Ray
        t0 = time.perf_counter()
        with use_executor(executor):
            rep = run(args.name, args.out, data_dir=args.data_dir, quick=args.quick,
                      seeds=args.seeds, command=command)
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (StudySpecError, ExecutorUnavailableError) as e:
        print(f"secondorder: error: {e}", file=sys.stderr)
        return 2
    except DataFormatError as e:
        print(f"secondorder: error: data: {e}", file=sys.stderr)
        return 2
    for name, (_, _, line) in rep["tables"].items():
        print(f"{name}: {line}")
    print(f"study {args.name!r} done in {time.perf_counter() - t0:.0f} s; report: "
          f"{rep['markdown']} and {rep['html']} ({len(rep['figures'])} figures)")
    return 0

"""The ``secondorder`` command line.

- ``secondorder bench``: tune and compare every available optimizer on the embedded suite
  (no download), store the runs in ``OUT/results.sqlite`` and write ``OUT/report.md``,
  ``OUT/report.html`` and ``OUT/figures/``. Rerunning resumes.
- ``secondorder report --out DIR``: rebuild the report from the database.
- ``secondorder export --out DIR``: ``DIR/export/{runs,measurements,environment}.csv`` and
  ``DIR/export/results.json``.
- ``secondorder list``: problems and optimizers with their defaults and grids.
- ``secondorder curvature --problem NAME``: Hessian spectrum, trace and diagonal mass at
  initialization, mid-training and end (seed 001 Fig. 2).

Defaults of ``bench`` are chosen to finish within 10 minutes on 2 CPU cores, ``--quick``
within 3 (see docs/benchmark.md for the measured times).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser", "QUICK_PROBLEMS", "DEFAULT_SEEDS"]

DB_NAME = "results.sqlite"
#: Problems of ``--quick``: a convex classifier, a small MLP, a deterministic function.
QUICK_PROBLEMS = ("cancer_logistic", "digits_mlp", "rosenbrock")
#: Seeds of the default ``bench`` (``--quick``: 1).
DEFAULT_SEEDS = 3


class CLIError(Exception):
    """A user error: printed without a traceback, exit status 2."""


def _names(values: Sequence[str] | None) -> list[str] | None:
    if values is None:
        return None
    out = []
    for v in values:
        out += [s for s in v.split(",") if s]
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and tests)."""
    p = argparse.ArgumentParser(prog="secondorder", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="tune and compare optimizers; write the report")
    b.add_argument("--problems", nargs="+", help="problem names (default: embedded suite)")
    b.add_argument("--optimizers", nargs="+", help="optimizer names (default: all available)")
    b.add_argument("--seeds", type=int, help=f"repetitions (default {DEFAULT_SEEDS}; quick 1)")
    g = b.add_mutually_exclusive_group()
    g.add_argument("--budget", type=float, help="epochs per run (default: each problem's)")
    g.add_argument("--budget-backprops", type=float,
                   help="backprop-equivalents per run (1 = one SGD epoch)")
    g.add_argument("--budget-seconds", type=float, help="training seconds per run")
    b.add_argument("--grid", choices=("quick", "default", "full"),
                   help="knob grid (default: default; quick: quick)")
    b.add_argument("--evals-per-epoch", type=int, default=1)
    b.add_argument("--workers", type=int,
                   help="worker processes (default: 2 if the machine has 2 cores, else 1)")
    b.add_argument("--data-dir", help="folder of the file-based data sets")
    b.add_argument("--out", default="secondorder-results", help="results folder")
    b.add_argument("--quick", action="store_true",
                   help="few problems, small grid, one seed (about 3 minutes)")
    b.add_argument("--sweep", help="sweep name in the database (default bench / quick)")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")

    r = sub.add_parser("report", help="write the report from the database")
    r.add_argument("--out", default="secondorder-results", help="results folder")
    r.add_argument("--sweep", help="sweep name (default: the latest)")

    e = sub.add_parser("export", help="export the database as CSV files and one JSON file")
    e.add_argument("--out", default="secondorder-results", help="results folder")
    e.add_argument("--format", choices=("csv", "json", "both"), default="both")

    sub.add_parser("list", help="problems and optimizers")

    c = sub.add_parser("curvature", help="Hessian spectrum and diagonal mass of a problem")
    c.add_argument("--problem", required=True)
    c.add_argument("--optimizer", default="adam", help="optimizer that trains the model")
    c.add_argument("--epochs", type=float, help="training epochs (default: the problem's)")
    c.add_argument("--top", type=int, default=5, help="number of top eigenvalues")
    c.add_argument("--data-dir")
    c.add_argument("--out", default="secondorder-results", help="results folder")
    st = sub.add_parser("study", help="run a paper's study; tables beside the paper's")
    st.add_argument("name", nargs="?", help="study name (see --list)")
    st.add_argument("--list", action="store_true", help="list the studies")
    st.add_argument("--data-dir", help="folder of the paper's data sets or the stand-ins")
    st.add_argument("--quick", action="store_true", help="CI-sized run (under a minute)")
    st.add_argument("--seeds", type=int, help="repetitions (default: the study's)")
    st.add_argument("--out", default="secondorder-study", help="results folder")
    return p


def _check_names(kind: str, names: list[str], valid: Sequence[str]) -> None:
    bad = [n for n in names if n not in valid]
    if bad:
        raise CLIError(f"unknown {kind} {', '.join(map(repr, bad))}; valid: {', '.join(valid)}")


def _cmd_list() -> int:
    from secondorder.bench import problems as P
    from secondorder.bench.registry import REGISTRY

    print("Problems (embedded suite marked *):")
    for name in P.list_problems():
        star = "*" if name in P.EMBEDDED else " "
        try:
            prob = P.get_problem(name)
            print(f" {star} {name:22s} n={len(prob.train):<6d} batch={prob.batch_size:<5d} "
                  f"epochs={prob.epochs:<4g} {'full-batch ' if prob.full_batch else ''}"
                  f"{prob.description}")
        except Exception as e:  # noqa: BLE001 -- file-based problems without data
            print(f" {star} {name:22s} (needs --data-dir: {type(e).__name__}: {e})")
    print("\nOptimizers:")
    for name, s in REGISTRY.items():
        reason = s.unavailable_reason()
        state = "available" if reason is None else f"NOT AVAILABLE ({reason})"
        print(f"  {name:18s} {s.module}.{s.class_name} [{s.protocol} protocol] {state}")
        print(f"      {s.description}")
        print(f"      knob {s.knob}: default grid {list(s.grid('default'))}, "
              f"full {list(s.grid('full'))}, quick {list(s.grid('quick'))}")
        extra = dict(s.defaults)
        flags = [f for f, on in (("full batch on full-batch problems", s.full_batch),
                                 ("global closure", s.global_closure),
                                 ("first-order baseline", s.first_order)) if on]
        if extra or flags:
            print(f"      defaults {extra} {'; '.join(flags)}")
    return 0


def _cmd_bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from secondorder.bench import problems as P
    from secondorder.bench.registry import available_optimizers, list_optimizers
    from secondorder.bench.report import SUMMARY_HEADERS, _summary_rows, write_report
    from secondorder.bench.runner import Budget
    from secondorder.bench.sweep import SweepConfig, run_sweep

    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise CLIError(f"data directory {args.data_dir!r} does not exist")
    problems = _names(args.problems) or list(QUICK_PROBLEMS if args.quick else P.EMBEDDED)
    _check_names("problem", problems, P.list_problems())
    optimizers = _names(args.optimizers) or available_optimizers()
    _check_names("optimizer", optimizers, list_optimizers())
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else DEFAULT_SEEDS)
    grid = args.grid or ("quick" if args.quick else "default")
    try:
        budget = None
        if args.budget is not None:
            budget = Budget(epochs=args.budget)
        elif args.budget_backprops is not None:
            budget = Budget(backprops=args.budget_backprops)
        elif args.budget_seconds is not None:
            budget = Budget(seconds=args.budget_seconds)
        config = SweepConfig(problems, optimizers, seeds=seeds, budget=budget, grid=grid,
                             workers=args.workers or min(2, os.cpu_count() or 1),
                             evals_per_epoch=args.evals_per_epoch,
                             data_dir=args.data_dir,
                             name=args.sweep or ("quick" if args.quick else "bench"))
    except ValueError as e:
        raise CLIError(str(e)) from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    db = out / DB_NAME
    t0 = time.perf_counter()
    try:
        res = run_sweep(config, db, progress=not args.no_progress)
    except Exception as e:
        from secondorder.errors import DataFormatError

        if isinstance(e, DataFormatError):
            raise CLIError(f"data: {e}") from None
        raise
    elapsed = time.perf_counter() - t0
    command = "secondorder " + " ".join(shlex.quote(a) for a in argv)
    rep = write_report(db, out, sweep=config.name, command=command)
    for name, reason in res["skipped_optimizers"].items():
        print(f"skipped {name}: {reason}")
    for ps in rep["summaries"]:
        print(f"\n{ps.problem} (metric {ps.metric}, target {ps.target:.4g})")
        rows = _summary_rows(ps)
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
                  for i, h in enumerate(SUMMARY_HEADERS)]
        print("  ".join(h.ljust(w) for h, w in zip(SUMMARY_HEADERS, widths, strict=True)))
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(f"\nsweep {config.name!r}: {sum(res['tuning'].values())} tuning and "
          f"{sum(res['final'].values())} repetition runs in {elapsed:.0f} s "
          f"(new or redone: {_done(res)})")
    print(f"database: {db}\nreport: {rep['markdown']} and {rep['html']}")
    return 0


def _done(res) -> int:
    return sum(v for c in (res["tuning"], res["final"]) for k, v in c.items() if k != "skipped")


def _cmd_report(args: argparse.Namespace) -> int:
    from secondorder.bench.report import write_report

    db = Path(args.out) / DB_NAME
    if not db.exists():
        raise CLIError(f"no results database at {db}; run `secondorder bench --out {args.out}`")
    rep = write_report(db, args.out, sweep=args.sweep)
    print(f"report: {rep['markdown']} and {rep['html']} ({len(rep['figures'])} figures)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from secondorder.bench.store import Store

    db = Path(args.out) / DB_NAME
    if not db.exists():
        raise CLIError(f"no results database at {db}; run `secondorder bench --out {args.out}`")
    written: list[Path] = []
    with Store(db) as store:
        if args.format in ("csv", "both"):
            written += store.export_csv(Path(args.out) / "export")
        if args.format in ("json", "both"):
            written.append(store.export_json(Path(args.out) / "export" / "results.json"))
    print("\n".join(f"wrote {p}" for p in written))
    return 0


def _cmd_curvature(args: argparse.Namespace) -> int:
    from secondorder.bench import problems as P

    _check_names("problem", [args.problem], P.list_problems())
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise CLIError(f"data directory {args.data_dir!r} does not exist")
    from secondorder.bench.curvature_report import curvature_report

    res = curvature_report(args.problem, Path(args.out), optimizer=args.optimizer,
                           epochs=args.epochs, top=args.top, data_dir=args.data_dir)
    print(res["text"])
    print(f"report: {res['markdown']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``secondorder`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            return _cmd_list()
        if args.command == "bench":
            return _cmd_bench(args, argv)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "export":
            return _cmd_export(args)
        if args.command == "curvature":
            return _cmd_curvature(args)
        if args.command == "study":
            from secondorder.bench.studies import main as study_main

            return study_main(args, argv)
    except CLIError as e:
        print(f"secondorder: error: {e}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command}")  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())



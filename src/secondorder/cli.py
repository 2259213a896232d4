"""The ``secondorder`` command line.

- ``secondorder bench``: tune and compare every available optimizer on the embedded suite
  (no download), store the runs in ``OUT/results.sqlite`` and write ``OUT/report.md``,
  ``OUT/report.html`` and ``OUT/figures/``. Rerunning resumes.
- ``secondorder report --out DIR``: rebuild the report from the database.
- ``secondorder export --out DIR``: ``DIR/export/{runs,measurements,environment}.csv`` and
  ``DIR/export/results.json``.
- ``secondorder list``: problems and optimizers with their defaults and grids.
- ``secondorder curvature --problem NAME``: Hessian spectrum, trace and diagonal mass at
  initialization, mid-training and end ([AdaptiveNorms] Fig. 2).

Defaults of ``bench`` are chosen to finish within 10 minutes on 2 CPU cores, ``--quick``
in about 4 on a shared machine (see docs/benchmark.md for the measured times).

Exit status: 0 on success; 1 when every run of a ``bench`` sweep failed; 2 for a user
error (a bad option, data file or results folder/database), printed as one line.
Several ``bench`` processes may share one ``--out``; a rerun resumes and retries the runs
that failed (``--no-retry-failed`` keeps them); see docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["main", "build_parser", "QUICK_PROBLEMS", "DEFAULT_SEEDS"]

DB_NAME = "results.sqlite"
#: Problems of ``--quick``: a convex classifier, a small MLP, a deterministic function.
QUICK_PROBLEMS = ("cancer_logistic", "digits_mlp", "rosenbrock")
#: Seeds of the default ``bench`` (``--quick``: 1).
DEFAULT_SEEDS = 3


class CLIError(Exception):
    """A user error: printed without a traceback, exit status 2."""


class SweepFailed(Exception):
    """Every run of a sweep failed: printed without a traceback, exit status 1."""


def _names(values: Sequence[str] | None) -> list[str] | None:
    if values is None:
        return None
    out = []
    for v in values:
        out += [s for s in v.split(",") if s]
    return out


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each option's help (except ``None`` and flags), epilogs as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default is True:
            return action.help or ""
        return super()._get_help_string(action)


DESCRIPTION = """Benchmark second-order and first-order optimizers on a problem suite.

bench writes OUT/results.sqlite, OUT/report.md, OUT/report.html and OUT/figures/;
rerunning it resumes. `secondorder COMMAND --help` explains each command.

Exit status: 0 on success; 1 when every run of a bench failed; 2 for a user error
(a bad option, data file or results folder/database), printed as one line."""

EPILOGS = {
    "main": """examples:
  secondorder bench --quick            # about {quick} on 2 cores
  secondorder bench                    # the default suite, within 10 minutes on 2 cores
  secondorder bench --help             # options of one command""",
    "bench": """The default suite finishes within 10 minutes on 2 CPU cores, --quick in about
{quick} (both measured on a shared machine; see docs/benchmark.md). Rerunning the same
command resumes; failed runs are retried unless --no-retry-failed.

examples:
  secondorder bench --quick
  secondorder bench --problems digits_mlp rosenbrock --optimizers adam NewtonCG --seeds 5
  secondorder bench --problems mnist --data-dir ~/data/mnist --out mnist-results
  secondorder bench --equal epochs --out equal-epochs   # the older equal-epoch comparison
  secondorder bench --budget-seconds 5 --out fixed-time""",
    "report": """examples:
  secondorder report --out secondorder-results
  secondorder report --out secondorder-results --sweep quick""",
    "export": """examples:
  secondorder export --out secondorder-results --format csv""",
    "list": """examples:
  secondorder list""",
    "curvature": """Trains with the setting the benchmark selected for this problem and optimizer
when OUT/results.sqlite has one, else with the optimizer's defaults (it says which),
and writes OUT/curvature/.

examples:
  secondorder curvature --problem digits_mlp
  secondorder curvature --problem rosenbrock --optimizer NewtonCG --epochs 20""",
    "study": """examples:
  secondorder study --list
  secondorder study veitch --quick
  secondorder study veitch --quick --executor ray  # each run a Ray task (local Ray)""",
}
#: Measured duration of ``secondorder bench --quick`` (docs/benchmark.md).
QUICK_DURATION = "a minute (4 minutes under heavy load)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and tests)."""
    fmt = {"formatter_class": _HelpFormatter}
    p = argparse.ArgumentParser(prog="secondorder", description=DESCRIPTION,
                                epilog=EPILOGS["main"].format(quick=QUICK_DURATION), **fmt)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str):
        return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                              epilog=EPILOGS[name].format(quick=QUICK_DURATION), **fmt)

    b = add("bench", "tune and compare optimizers; write the report")
    b.add_argument("--problems", nargs="+", metavar="NAME",
                   help="problem names, space or comma separated (default: the embedded "
                        "suite; --quick: " + ", ".join(QUICK_PROBLEMS) + ")")
    b.add_argument("--optimizers", nargs="+", metavar="NAME",
                   help="optimizer names (default: all available; see `secondorder list`)")
    b.add_argument("--seeds", type=int,
                   help=f"repetitions of each tuned setting (default {DEFAULT_SEEDS}; --quick 1)")
    b.add_argument("--equal", choices=("time", "epochs"),
                   help="what the measurement runs give every method the same of: 'time' = a "
                        "training-time budget per problem, calibrated after tuning (the "
                        "slowest tuned method's time for the epoch budget, at least 1 s; "
                        "cheap methods train more epochs, at most 20x); 'epochs' = the "
                        "epoch budget (default: time; docs/benchmark.md)")
    g = b.add_mutually_exclusive_group()
    g.add_argument("--budget", type=float, metavar="EPOCHS",
                   help="epochs per tuning run (default: each problem's, see "
                        "`secondorder list`); with --equal epochs, per run")
    g.add_argument("--budget-backprops", type=float, metavar="N",
                   help="backprop-equivalents per run (1 = one SGD epoch)")
    g.add_argument("--budget-seconds", type=float, metavar="S",
                   help="training seconds per run, tuning included (a fixed wall-clock "
                        "budget instead of the calibrated one)")
    b.add_argument("--grid", choices=("quick", "default", "full"),
                   help="grid of each optimizer's main knob (default: default; --quick: quick)")
    b.add_argument("--evals-per-epoch", type=int, metavar="N",
                   help="evaluations per pass through the training data, >= 1 (default: "
                        "per problem, enough for 10 evaluations per run: ceil(10 / epochs))")
    b.add_argument("--workers", type=int,
                   help="worker processes, >= 1; 1 runs in this process "
                        "(default: 2 if the machine has 2 cores or more, else 1)")
    b.add_argument("--no-retry-failed", dest="retry_failed", action="store_false",
                   help="do not retry runs that failed in an earlier invocation")
    b.add_argument("--data-dir", metavar="DIR", help="folder of the file-based data sets")
    b.add_argument("--out", default="secondorder-results", metavar="DIR",
                   help="results folder")
    b.add_argument("--quick", action="store_true",
                   help=f"few problems, small grid, one seed (about {QUICK_DURATION} on 2 cores)")
    b.add_argument("--sweep", help="sweep name in the database (default: bench; --quick: quick)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where runs execute: local processes or Ray tasks")
    b.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    _add_extension_arguments(b)

    r = add("report", "write the report from the database")
    r.add_argument("--out", default="secondorder-results", metavar="DIR", help="results folder")
    r.add_argument("--sweep", help="sweep name (default: the latest)")

    e = add("export", "export the database as CSV files and one JSON file")
    e.add_argument("--out", default="secondorder-results", metavar="DIR", help="results folder")
    e.add_argument("--format", choices=("csv", "json", "both"), default="both",
                   help="what to write")

    add("list", "problems and optimizers")

    c = add("curvature", "Hessian spectrum and diagonal mass of a problem")
    c.add_argument("--problem", required=True, metavar="NAME", help="problem name")
    c.add_argument("--optimizer", default="adam", metavar="NAME",
                   help="optimizer that trains the model")
    c.add_argument("--epochs", type=float, help="training epochs (default: the problem's)")
    c.add_argument("--top", type=int, default=5, help="number of top eigenvalues")
    c.add_argument("--data-dir", metavar="DIR", help="folder of the file-based data sets")
    c.add_argument("--out", default="secondorder-results", metavar="DIR",
                   help="results folder: its results.sqlite gives the tuned setting; the "
                        "report goes to OUT/curvature/")
    st = add("study", "run a paper's study; tables beside the paper's")
    st.add_argument("name", nargs="?", help="study name (see --list)")
    st.add_argument("--list", action="store_true", help="list the studies")
    st.add_argument("--data-dir", metavar="DIR",
                    help="folder of the paper's data sets or the stand-ins")
    st.add_argument("--quick", action="store_true", help="CI-sized run (under a minute)")
    st.add_argument("--seeds", type=int, help="repetitions (default: the study's)")
    st.add_argument("--out", default="secondorder-study", metavar="DIR", help="results folder")
    st.add_argument("--executor", choices=("local", "ray"), default="local",
                    help="where runs execute: this process (one after another) or Ray tasks")
    st.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    return p


def _add_extension_arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("--optimizer", action="append", metavar="SPEC",
                   help="an optimizer by import path with its grid, added to the sweep "
                        "(repeatable): '[NAME=]module.path:Class lr=1e-3,1e-2 key=value'")
    b.add_argument("--config", metavar="TOML",
                   help="sweep file: problems, optimizers, seeds, budget, user problems "
                        "(docs/benchmark.md); command-line flags win")
    b.add_argument("--tensorboard", metavar="DIR",
                   help="also write each run's measurements to TensorBoard event files "
                        "(needs the tensorboard extra)")


def _check_names(kind: str, names: list[str], valid: Sequence[str]) -> None:
    """Refuse unknown names, suggesting the closest valid one ("did you mean ...?")."""
    for n in names:
        if n in valid:
            continue
        low = {v.lower(): v for v in valid}  # case slips count for nothing: lbfgs -> LBFGS
        close = [low[m] for m in difflib.get_close_matches(n.lower(), list(low), n=1)]
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise CLIError(f"unknown {kind} {n!r}{hint} (valid: {', '.join(valid)})")


def _cmd_list() -> int:
    from secondorder.bench import plugins
    from secondorder.bench import problems as P
    from secondorder.bench.registry import REGISTRY

    plugins.load_entry_points()  # entry-point problems join the list
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
    print("\n".join(plugins.describe()))
    return 0


def _check_bench_options(args: argparse.Namespace) -> None:
    """Reject bad numeric options before any work, naming the flag."""
    for flag, value, low in (("--seeds", args.seeds, 1), ("--workers", args.workers, 1),
                             ("--evals-per-epoch", args.evals_per_epoch, 1)):
        if value is not None and value < low:
            raise CLIError(f"{flag} must be >= {low} (got {value})")
    for flag, value in (("--budget", args.budget), ("--budget-backprops", args.budget_backprops),
                        ("--budget-seconds", args.budget_seconds)):
        if value is not None and not (0 < value < float("inf")):
            raise CLIError(f"{flag} must be a positive number (got {value})")


@contextlib.contextmanager
def _report_lock(out: Path) -> Iterator[None]:
    """Serialize report writing of concurrent ``bench`` processes on one ``--out``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover -- not POSIX
        yield
        return
    with open(out / ".report.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cmd_bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from secondorder.bench import problems as P
    from secondorder.bench import timing
    from secondorder.bench.config import apply_bench_extensions
    from secondorder.bench.executors import make_executor, use_executor
    from secondorder.bench.registry import available_optimizers, list_optimizers
    from secondorder.bench.report import SUMMARY_HEADERS, summary_rows
    from secondorder.bench.runner import Budget
    from secondorder.bench.sweep import SweepConfig, run_sweep

    try:  # --config, --optimizer, --tensorboard (secondorder.bench.config)
        apply_bench_extensions(args)
    except ValueError as e:
        raise CLIError(str(e)) from None
    _check_bench_options(args)
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise CLIError(f"--data-dir {args.data_dir!r}: the folder does not exist")
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
                             name=args.sweep or ("quick" if args.quick else "bench"),
                             retry_failed=args.retry_failed, equal=args.equal or "time")
        executor = make_executor(args.executor, address=args.address)  # exit 2 without Ray
    except ValueError as e:
        raise CLIError(str(e)) from None
    out = Path(args.out)
    # the topmost folder this command creates (removed again if the bench fails at once)
    created = next((p for p in reversed((out, *out.parents)) if not p.exists()), None)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"{out}: cannot create the results folder ({e.strerror}); "
                       "pass a writable --out") from None
    db = out / DB_NAME
    command = "secondorder " + " ".join(shlex.quote(a) for a in argv)
    done: list[str] = []

    def interim(problem: str) -> None:
        done.append(problem)
        if len(done) < len(problems):
            _write_report(out, db, config.name, command, with_figures=False,
                          note=f"Interim report: {len(done)} of {len(problems)} problems "
                               "done; figures are drawn when the sweep ends.")

    t0 = time.perf_counter()
    try:
        with use_executor(executor):
            res = run_sweep(config, db, progress=not args.no_progress, on_plan=_print_plan,
                            on_problem_done=interim)
    except KeyboardInterrupt:
        rep = _write_report(out, db, config.name, command, with_figures=True,
                            note=f"Interrupted: {len(done)} of {len(problems)} problems done; "
                                 "rerun the same command to resume.")
        what = f"report of what finished: {rep['markdown']}" if rep else "no run finished"
        print(f"\ninterrupted; {what}; rerun the same command to resume", file=sys.stderr)
        return 130
    except BaseException as e:
        if created is not None:
            _remove_if_empty(created, out, db)
        from secondorder.errors import DataFormatError

        if isinstance(e, DataFormatError):
            raise CLIError(f"data (--data-dir): {e}") from None
        raise
    elapsed = time.perf_counter() - t0
    statuses = res["statuses"]
    if statuses and statuses.get("failed", 0) == sum(statuses.values()):
        raise SweepFailed(
            f"every run of sweep {config.name!r} failed ({statuses['failed']} runs), e.g. "
            f"{'; '.join(res['errors']) or 'no message'}; fix the cause and rerun (failed "
            f"runs are retried); database: {db}")
    rep = _write_report(out, db, config.name, command, with_figures=True)
    for name, reason in res["skipped_optimizers"].items():
        print(f"skipped {name}: {reason}")
    for ps in rep["summaries"]:
        when = (f"every method {ps.time_budget:.3g} s of training" if ps.equal_time
                else f"every method {ps.tuning_epochs:g} epochs")
        print(f"\n{ps.problem} (metric {ps.metric}, target {ps.target:.4g}; {when})")
        rows = summary_rows(ps)
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
                  for i, h in enumerate(SUMMARY_HEADERS)]
        print("  ".join(h.ljust(w) for h, w in zip(SUMMARY_HEADERS, widths, strict=True)))
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(f"\n{rep['answer']}")
    print(f"\n{timing.describe(res['timing'])}")
    warning = timing.summary_warning(res["timing"])
    if warning:
        print(f"secondorder: warning: {warning}", file=sys.stderr)
    print(f"\nsweep {config.name!r}: {sum(res['tuning'].values())} tuning and "
          f"{sum(res['final'].values())} repetition runs in {elapsed:.0f} s "
          f"(new or redone: {_done(res)})")
    print(f"database: {db}\nreport: {rep['markdown']} and {rep['html']}")
    return 0


def _fmt_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


def _print_plan(plan: dict) -> None:
    """The runs planned and the time estimate, printed once before the first run."""
    todo = plan["pending_tuning_runs"]
    print(f"planned: {plan['tuning_runs']} tuning runs ({todo} still to do) and "
          f"{plan['repetition_runs']} repetition runs; estimated time "
          f"{_fmt_seconds(plan['estimate_seconds'])} (from a "
          f"{plan['calibration_seconds']:.0f} s calibration; the machine's load changes it)",
          flush=True)


def _write_report(out: Path, db: Path, sweep: str, command: str, **kw):
    """Write the report under the report lock; ``None`` when no run has finished yet."""
    from secondorder.bench.report import write_report

    if not db.exists():
        return None
    with _report_lock(out):
        try:
            return write_report(db, out, sweep=sweep, command=command, **kw)
        except ValueError:  # no finished run yet
            return None


def _remove_if_empty(created: Path, out: Path, db: Path) -> None:
    """Remove ``created`` (the results folder ``out`` or the topmost parent this command
    created for it) if it holds no run (a failed bench leaves nothing behind)."""
    from secondorder.bench.store import Store

    try:
        if db.exists():
            with Store(db, readonly=True) as store:
                if store.runs(None):
                    return
        names = {DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", DB_NAME + "-journal",
                 ".report.lock"}
        others = [p for p in created.rglob("*") if p.is_file() and p.name not in names]
        if not others:
            shutil.rmtree(created)
    except Exception:  # noqa: BLE001 -- best effort; never hide the original error
        pass


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
    folder = Path(args.out) / "export"
    with Store(db, readonly=True) as store:
        try:
            if args.format in ("csv", "both"):
                written += store.export_csv(folder)
            if args.format in ("json", "both"):
                written.append(store.export_json(folder / "results.json"))
        except OSError as e:
            raise CLIError(f"{e.filename or folder}: cannot write the export "
                           f"({e.strerror}); make {folder} writable") from None
    print("\n".join(f"wrote {p}" for p in written))
    return 0


def _tuned_setting(out: Path, problem: str, optimizer: str) -> tuple[dict | None, str]:
    """The setting the benchmark selected for ``problem`` and ``optimizer`` in the latest
    sweep of ``out/results.sqlite`` that ran them, and where it comes from."""
    from secondorder.bench.store import Store
    from secondorder.bench.sweep import load_records, select_best

    db = out / DB_NAME
    if not db.exists():
        return None, f"no tuned setting: {db} does not exist"
    with Store(db, readonly=True) as store:
        for sweep in reversed(store.sweeps()):
            cands = [r for r in load_records(store, sweep)
                     if r.problem == problem and r.optimizer == optimizer and r.seed == 0]
            best = select_best(cands)
            if best is not None:
                return best.hyperparameters, f"the tuned setting of sweep {sweep!r} in {db}"
    return None, f"no tuned setting: {db} has no finished run of {problem} with {optimizer}"


def _cmd_curvature(args: argparse.Namespace) -> int:
    from secondorder.bench import problems as P
    from secondorder.bench.registry import get_optimizer, list_optimizers

    _check_names("problem", [args.problem], P.list_problems())
    _check_names("optimizer", [args.optimizer], list_optimizers())
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise CLIError(f"--data-dir {args.data_dir!r}: the folder does not exist")
    from secondorder.bench.curvature_report import curvature_report, default_setting

    out = Path(args.out)
    hyper, source = _tuned_setting(out, args.problem, args.optimizer)
    if hyper is None:
        shown = default_setting(get_optimizer(args.optimizer))
        print(f"trains with {args.optimizer}'s defaults {shown}: {source}")
    else:
        print(f"trains with {args.optimizer} {hyper}: {source}")
    res = curvature_report(args.problem, out / "curvature", optimizer=args.optimizer,
                           epochs=args.epochs, top=args.top, data_dir=args.data_dir,
                           hyperparameters=hyper)
    print(res["text"])
    print(f"report: {res['markdown']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``secondorder`` console script; returns the exit status."""
    from secondorder.bench.store import StoreError

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
    except (CLIError, StoreError) as e:
        print(f"secondorder: error: {e}", file=sys.stderr)
        return 2
    except SweepFailed as e:
        print(f"secondorder: error: {e}", file=sys.stderr)
        return 1
    raise AssertionError(f"unhandled command {args.command}")  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())



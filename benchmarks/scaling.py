"""Per-step cost and peak memory per parameter versus model size, one process per measurement.

For every optimizer in :mod:`secondorder.optim` plus ``torch.optim.SGD``, ``Adam`` and
``LBFGS`` (all with their default hyperparameters, plus the one required argument:
BarzilaiBorwein's ``epoch_length``, the 16 steps of one pass over the batches), on fully
connected nets 784-h-h-10 (tanh) whose size ranges from about 10k to a few million parameters, on
synthetic MNIST-shaped batches (256 samples, 784 inputs, 10 classes, labels from a random
linear teacher; 16 batches, each step takes the next one: a single fixed batch is fitted
within a few steps, after which methods with stopping tests, such as torch's LBFGS, do
almost nothing), this script measures:

1. **Time per step as a ratio to one SGD step**, same model size, same batch, same
   process: after the memory phase below and one more step of each, each round times
   one step of the method and one ``torch.optim.SGD`` step (``zero_grad``, forward,
   backward, update) on a copy of the model, on the same batch, back to back, in
   alternating order, for at
   least ``--rounds`` rounds and ``--min-time`` seconds (at most ``--max-rounds``); the
   figure is the median over rounds of the per-round ratio (paired, so a machine that
   slows down during the run moves both).
2. **Peak memory per parameter**: the number of parameter-sized float32 copies the
   optimizer holds at its peak, ``(peak RSS during the steps - RSS before the first step)
   / (4 bytes * n_params)``. The baseline already holds the model, its parameters and the
   batch, so the parameters themselves are *not* counted: SGD's figure is its gradient
   plus the activations, Adam's adds its two moment buffers and its temporaries.
3. The work per step read from the optimizers' counters: closure calls (forward passes;
   for the torch optimizers each is a forward and a backward), and for the secondorder
   optimizers gradients and Hessian(-like) vector products (``optimizer.counters``):
   this is what makes a method's cost grow with the model size.

How peak memory is measured (CPU, Linux): each ``(method, size)`` runs in a fresh Python
process (``--worker``), so peaks never mix, and returns one JSON line on stdout. In it:

- glibc's malloc is set (``mallopt`` through ctypes) to serve every block of 64 KiB or
  more with its own ``mmap`` and to return it on ``free``, and free heap memory is handed
  back (``malloc_trim``). By default glibc raises that threshold up to 32 MiB after the
  first frees, so freed tensors would stay resident in the heap and the resident set
  would overstate what is live (or understate a peak reusing freed heap pages).
- one forward and backward of the model (``p.grad`` then cleared) and two steps of the
  same optimizer class on a 4-3-3-2 net run before the baseline, so one-time
  initialisation (torch's kernels and autograd engine, lazy imports inside the
  optimizers: several MiB) is not charged to the optimizer;
- the baseline is the resident set (``VmRSS``) just before the first step; the peak is
  the kernel's high-water mark ``VmHWM``, reset to the current RSS by writing ``5`` to
  ``/proc/self/clear_refs`` right after the baseline, read after ``--mem-steps`` steps (the
  first step allocates the optimizer state; the L-BFGS methods run until their history
  is full: 11 steps for secondorder's, 6 of 20 iterations for torch's, whose default
  history is 100 pairs). This catches every transient peak,
  unlike a sampling thread. Where ``clear_refs`` is not writable, a thread samples the
  RSS every 0.5 ms with psutil instead (``"peak_method"`` in the JSON says which).

Below about 100k parameters a copy is under 400 KiB, so allocator granularity and the
activations of the 256-sample batch (``256 * (2h + 10)`` floats per forward, several
times that with graphs kept for Hessian products) dominate: read the copy counts at the
large sizes. The timing rounds run after the memory phase with malloc back to large
fixed thresholds (no page faults per step, as glibc's steady state).

Usage::

    PYTHONPATH=src python benchmarks/scaling.py --quick
    PYTHONPATH=src python benchmarks/scaling.py --sizes 1e4,1e5,1e6 --methods SGD,Adam,NewtonCG
    PYTHONPATH=src python benchmarks/scaling.py --json results.json   # every method, 6 sizes

Progress goes to stderr, the tables (markdown) to stdout.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import inspect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import secondorder.optim as so
from secondorder.bench.models import MLP, count_parameters, seeded
from secondorder.curvature import GGNOperator

TORCH_METHODS = {"SGD": torch.optim.SGD, "Adam": torch.optim.Adam,
                 "torch.LBFGS": torch.optim.LBFGS}
SECONDORDER_METHODS = {name: getattr(so, name) for name in sorted(so.__all__)
                       if isinstance(getattr(so, name), type)
                       and issubclass(getattr(so, name), so.SecondOrderOptimizer)
                       and getattr(so, name) is not so.SecondOrderOptimizer}
METHODS = {**TORCH_METHODS, **SECONDORDER_METHODS}
INPUTS, CLASSES, BATCH, BATCHES = 784, 10, 256, 16
# Arguments without a default: SGD-BB's steps per epoch (one pass over the batches).
REQUIRED_KWARGS: dict[str, dict[str, Any]] = {"BarzilaiBorwein": {"epoch_length": BATCHES}}
DEFAULT_SIZES = (1e4, 3e4, 1e5, 3e5, 1e6, 2e6)
QUICK_SIZES = (1e4, 1e5)
QUICK_METHODS = ("SGD", "Adam", "LBFGS", "NewtonCG")

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- model and data
def width_for(n_params: float) -> int:
    """Hidden width ``h`` of the 784-h-h-10 MLP closest to ``n_params`` parameters.

    The net has ``h^2 + 796 h + 10`` parameters (two weight matrices and biases, output
    layer 10h + 10).
    """
    h = (-796 + math.sqrt(796**2 + 4 * max(n_params - 10, 0))) / 2
    return max(1, round(h))


def make_model(width: int) -> nn.Module:
    return seeded(lambda: MLP((INPUTS, width, width, CLASSES), activation="tanh"), 0)


def make_batches(count: int = BATCHES) -> list[tuple[Tensor, Tensor]]:
    """Synthetic MNIST-shaped batches whose labels come from a random linear teacher."""
    gen = torch.Generator().manual_seed(1)
    teacher = torch.randn(INPUTS, CLASSES, generator=gen)
    out = []
    for _ in range(count):
        x = torch.randn(BATCH, INPUTS, generator=gen)
        out.append((x, (x @ teacher).argmax(1)))
    return out


# ---------------------------------------------------------------------- memory probes
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 -- glibc only
        return libc
    except (OSError, AttributeError):
        return None


def set_malloc(libc: ctypes.CDLL | None, *, mmap_threshold: int, trim_threshold: int) -> None:
    """Fix glibc's mmap and trim thresholds (disables their dynamic adjustment)."""
    if libc is None:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)


def release_free_memory(libc: ctypes.CDLL | None) -> None:
    gc.collect()
    if libc is not None:
        libc.malloc_trim(0)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakRSS:
    """Peak resident set size over a block, in bytes: ``VmHWM`` after a reset, or sampled."""

    def __init__(self) -> None:
        self.method = "VmHWM"
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRSS:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            import psutil

            self.method = "psutil-0.5ms"
            proc = psutil.Process()
            self.peak = proc.memory_info().rss

            def sample() -> None:
                while not self._stop.is_set():
                    self.peak = max(self.peak, proc.memory_info().rss)
                    time.sleep(5e-4)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        else:
            self.peak = _status_kib("VmHWM") * 1024


# ---------------------------------------------------------------------- stepping
class Stepper:
    """One optimizer on one model: ``step(x, y)`` makes one step on that batch.

    Counts closure calls; secondorder optimizers also report their own counters.
    Gauss-Newton optimizers (HessianFree's default) get ``ggn_closure`` on the same batch.
    """

    def __init__(self, method: str, model: nn.Module):
        self.model = model
        self.x = self.y = torch.empty(0)
        self.calls = 0
        cls = METHODS[method]
        self.optimizer = cls(model.parameters(), **REQUIRED_KWARGS.get(method, {}))
        self.torch_protocol = method in TORCH_METHODS
        self.kwargs: dict[str, Any] = {}
        params = inspect.signature(self.optimizer.step).parameters
        if "ggn_closure" in params and self.optimizer.param_groups[0].get(
                "curvature") == "gauss_newton":
            self.kwargs["ggn_closure"] = lambda: GGNOperator.from_model(
                model, F.cross_entropy, self.x, self.y)

    def closure(self) -> Tensor:
        self.calls += 1
        if self.torch_protocol:
            self.optimizer.zero_grad()
            loss = F.cross_entropy(self.model(self.x), self.y)
            loss.backward()
            return loss
        return F.cross_entropy(self.model(self.x), self.y, reduction="none")

    def step(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y
        self.optimizer.step(self.closure, **self.kwargs)

    def counts(self) -> dict[str, int]:
        out = {"closure_calls": self.calls}
        if isinstance(self.optimizer, so.SecondOrderOptimizer):
            c = self.optimizer.counters
            out.update(gradients=c.gradients, hvps=c.hvps, loss_evals=c.loss_evals)
        return out


def steps_to_fill_history(method: str, optimizer: torch.optim.Optimizer) -> int:
    """Steps after which a quasi-Newton history is full (1 for methods without one).

    secondorder's LBFGS stores one pair per step; torch's LBFGS one per inner iteration,
    ``max_iter`` of them per step.
    """
    d = optimizer.defaults
    if method == "LBFGS":
        return int(d["history_size"]) + 1
    if method == "torch.LBFGS":
        return math.ceil(d["history_size"] / d["max_iter"]) + 1
    return 1


def sgd_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def measure(method: str, n_target: float, *, mem_steps: int, rounds: int, min_time: float,
            max_rounds: int, threads: int) -> dict[str, Any]:
    """The worker: one ``(method, size)`` measurement in this (fresh) process."""
    torch.set_num_threads(threads)
    libc = _libc()
    set_malloc(libc, mmap_threshold=64 * 1024, trim_threshold=128 * 1024)
    width = width_for(n_target)
    model = make_model(width)
    n = count_parameters(model)
    batches = make_batches()
    x, y = batches[0]
    out: dict[str, Any] = {"method": method, "width": width, "n_params": n,
                           "threads": threads, "malloc_control": libc is not None}
    # One-time initialisation (kernels, autograd, the optimizer's lazy imports and code
    # paths, on a 4-3-3-2 net), then the baseline.
    F.cross_entropy(model(x), y).backward()
    for p in model.parameters():
        p.grad = None
    tiny = seeded(lambda: MLP((4, 3, 3, 2), activation="tanh"), 0)
    tiny_stepper = Stepper(method, tiny)
    for _ in range(2):
        tiny_stepper.step(x[:8, :4].contiguous(), y[:8] % 2)
    del tiny, tiny_stepper
    stepper = Stepper(method, model)
    steps = 0

    def next_batch() -> tuple[Tensor, Tensor]:
        nonlocal steps
        steps += 1
        return batches[steps % len(batches)]

    mem_steps = max(mem_steps, steps_to_fill_history(method, stepper.optimizer))
    release_free_memory(libc)
    base = _status_kib("VmRSS") * 1024
    with PeakRSS() as peak:
        for _ in range(mem_steps):
            stepper.step(*next_batch())
    out.update(mem_steps=mem_steps, baseline_mib=base / 2**20, peak_mib=peak.peak / 2**20,
               peak_method=peak.method, copies=(peak.peak - base) / (4 * n))

    # Timing: malloc in steady state (large fixed thresholds), SGD on a copy, interleaved.
    set_malloc(libc, mmap_threshold=32 * 2**20, trim_threshold=512 * 2**20)
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(ref.parameters())
    x, y = next_batch()
    sgd_step(ref, ref_opt, x, y)
    stepper.step(x, y)
    before = stepper.counts()
    t_sgd, t_method = [], []
    start = time.perf_counter()
    while len(t_sgd) < rounds or (time.perf_counter() - start < min_time
                                  and len(t_sgd) < max_rounds):
        x, y = next_batch()
        odd = len(t_sgd) % 2  # alternate the order: SGD first, method first, ...
        t0 = time.perf_counter()
        if odd:
            stepper.step(x, y)
        else:
            sgd_step(ref, ref_opt, x, y)
        t1 = time.perf_counter()
        if odd:
            sgd_step(ref, ref_opt, x, y)
        else:
            stepper.step(x, y)
        t2 = time.perf_counter()
        t_sgd.append(t2 - t1 if odd else t1 - t0)
        t_method.append(t1 - t0 if odd else t2 - t1)
    after = stepper.counts()
    out.update(
        sgd_ms=1e3 * statistics.median(t_sgd), method_ms=1e3 * statistics.median(t_method),
        ratio=statistics.median(m / s for m, s in zip(t_method, t_sgd, strict=True)),
        rounds=len(t_sgd),
        per_step={k: (after[k] - before[k]) / len(t_sgd) for k in after},
        loss=float(F.cross_entropy(model(x), y).detach()),
        sgd_loss=float(F.cross_entropy(ref(x), y).detach()),
    )
    return out


# ---------------------------------------------------------------------- driver
def run_worker(method: str, size: float, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, repr(size),
           "--mem-steps", str(args.mem_steps), "--rounds", str(args.rounds),
           "--min-time", str(args.min_time), "--max-rounds", str(args.max_rounds),
           "--threads", str(args.threads)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"method": method, "n_target": size, "error": f"timeout after {args.timeout} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"method": method, "n_target": size,
                "error": f"exit {proc.returncode}: {tail[0]}"}
    res = json.loads(lines[-1])
    res["n_target"], res["wall_s"] = size, time.perf_counter() - t0
    return res


def _cell(res: dict[str, Any] | None, key: str, fmt: str) -> str:
    if res is None:
        return ""
    if "error" in res:
        return "error" if "timeout" not in res["error"] else "timeout"
    return format(res[key], fmt)


def tables(results: list[dict[str, Any]], methods: list[str], sizes: list[float]) -> str:
    by = {(r["method"], r["n_target"]): r for r in results}
    heads = []
    for s in sizes:
        r = next((by[m, s] for m in methods if (m, s) in by and "n_params" in by[m, s]), None)
        heads.append(f"{r['n_params']:,} (h={r['width']})" if r else f"~{s:,.0f}")
    head = "| method | " + " | ".join(heads) + " |\n|---|" + "---:|" * len(sizes) + "\n"

    def table(key: str, fmt: str) -> str:
        rows = [f"| {m} | " + " | ".join(_cell(by.get((m, s)), key, fmt) for s in sizes) + " |"
                for m in methods]
        return head + "\n".join(rows) + "\n"

    sgd_ms = ["" if (r := by.get(("SGD", s))) is None or "error" in r
              else f"{r['sgd_ms']:.2f}" for s in sizes]
    work_rows = []
    for m in methods:
        cells = []
        for s in sizes:
            r = by.get((m, s))
            if r is None or "error" in r:
                cells.append(_cell(r, "", ""))
                continue
            ps = r["per_step"]
            cell = f"{ps['closure_calls']:.1f}"
            if "hvps" in ps:
                cell += f" / {ps['gradients']:.1f} / {ps['hvps']:.1f}"
            cells.append(cell)
        work_rows.append(f"| {m} | " + " | ".join(cells) + " |")
    errors = [f"- {r['method']} at ~{r['n_target']:,.0f}: {r['error']}" for r in results
              if "error" in r]
    return (
        "Time per step / time of one SGD step (median of paired rounds):\n\n"
        + table("ratio", ".2f")
        + "\nSGD step (ms, median): " + ", ".join(sgd_ms) + "\n"
        + "\nPeak memory in parameter-sized float32 copies, beyond the model and batch:\n\n"
        + table("copies", ".1f")
        + "\nWork per step: closure calls / gradients / Hessian(-like) vector products "
          "(closure calls only for torch.optim):\n\n"
        + head + "\n".join(work_rows) + "\n"
        + ("\nFailures:\n" + "\n".join(errors) + "\n" if errors else "")
    )


def parse_list(text: str, conv) -> list:
    return [conv(t) for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"sizes {QUICK_SIZES}, methods {QUICK_METHODS}")
    p.add_argument("--sizes", help="comma-separated target parameter counts, e.g. 1e4,1e6")
    p.add_argument("--methods", help=f"comma-separated, from {sorted(METHODS)}")
    p.add_argument("--mem-steps", type=int, default=2,
                   help="steps over which the peak is taken (the first allocates the state; "
                        "L-BFGS methods run until their history is full)")
    p.add_argument("--rounds", type=int, default=3,
                   help="least timed rounds (after one warm-up step)")
    p.add_argument("--min-time", type=float, default=3.0,
                   help="keep timing rounds until this many seconds have passed ...")
    p.add_argument("--max-rounds", type=int, default=50, help="... or this many rounds")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per worker process")
    p.add_argument("--json", help="also write the raw results to this file")
    p.add_argument("--from-json", nargs="+", metavar="FILE",
                   help="print the tables of earlier --json results (later files win)")
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "SIZE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("mem_steps", "rounds", "max_rounds", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    if args.worker:
        method, size = args.worker
        print(json.dumps(measure(method, float(size), mem_steps=args.mem_steps,
                                 rounds=args.rounds, min_time=args.min_time,
                                 max_rounds=args.max_rounds, threads=args.threads)))
        return

    if args.from_json:
        merged: dict[tuple[str, float], dict[str, Any]] = {}
        for path in args.from_json:
            with open(path) as f:
                merged.update({(r["method"], r["n_target"]): r for r in json.load(f)})
        results = list(merged.values())
        methods = [m for m in METHODS if any(r["method"] == m for r in results)]
        sizes = sorted({r["n_target"] for r in results})
        print(tables(results, methods, sizes))
        return

    sizes = parse_list(args.sizes, float) if args.sizes else list(
        QUICK_SIZES if args.quick else DEFAULT_SIZES)
    methods = parse_list(args.methods, str) if args.methods else list(
        QUICK_METHODS if args.quick else METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown --methods {unknown}; choose from {sorted(METHODS)}")
    if any(s < 20 for s in sizes):
        p.error(f"--sizes must be parameter counts >= 20, got {sizes}")

    results = []
    t0 = time.perf_counter()
    for s in sizes:
        for m in methods:
            r = run_worker(m, s, args)
            results.append(r)
            msg = r.get("error") or (f"{r['n_params']:,} params: x{r['ratio']:.2f} SGD, "
                                     f"{r['copies']:.1f} copies, {r['wall_s']:.1f} s")
            log(f"[{time.perf_counter() - t0:7.1f} s] {m} ~{s:,.0f}: {msg}")
    header = (f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
              f"{args.threads} thread(s), batch {BATCH}, float32, "
              f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n")
    print(header + tables(results, methods, sizes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

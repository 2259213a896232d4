"""Full-batch solvers against pytorch-minimize: time to the same target, as ratios.

Protocol (issue 11), float64 (``--dtype``) on a flat parameter vector ``x`` on the CPU
(``--device cuda``: on the GPU; then time is wall time with the device synchronized before
each excluded loss check and at the end):

1. The target of each problem is the loss scipy's ``L-BFGS-B`` reaches in a fixed number of
   iterations (``ftol = gtol = 0``, so it runs exactly that many unless its line search
   fails first, as it can in float32), on the same function in the same dtype and device.
2. Each solver runs from the same ``x0`` until the loss at its iterate is ``<= target``:
   ours (:class:`~secondorder.optim.LBFGS` and :class:`~secondorder.optim.NewtonCG` with
   ``full_batch=True``, :class:`~secondorder.optim.TrustRegion` with the
   spherical norm and ``full_batch=True``, all else default; the trust region's default
   radius rule is ``eta_expand=0.75``, Nocedal & Wright Alg. 4.1, which pytorch-minimize
   uses; the pair ``trust_paper`` of ``--solvers``, not run by default, takes
   [AdaptiveNorms] Alg. 1's ``eta_expand=None`` instead), and pytorch-minimize's
   ``torchmin.minimize`` (``l-bfgs``, ``newton-cg``, ``trust-ncg``, defaults) with a
   callback. Ours runs twice: one iteration per ``step`` (the ``torch.optim`` training
   loop, "steps"), and one ``step`` with ``max_iter`` and a callback that ends it at the
   target (the shape of the peer's call, "callback": the per-step cost of the transaction,
   the hooks and the group checks is paid once). The iterates are the same. The loss check
   after each iteration is excluded from the time on every side.
3. Time to target is the median of ``--repeats`` runs, interleaved (ours, peer, ours,
   peer...) so that a load change on the shared machine hits both; the ratio ours / peer
   is what to read. On the two tiny problems (a few milliseconds a solve) one run is the
   mean of 20 back-to-back solves, so that one scheduler hiccup does not decide it
   (``--statistic min``: the fastest of them, the least disturbed by other jobs). Time is
   wall time; ``--clock thread`` takes this thread's CPU time instead, which on a machine
   shared with other jobs leaves out the time the scheduler gives them (cache and memory
   contention still count).
4. Every run counts iterations, loss evaluations (forwards), gradients and Hessian-vector
   products through an identity wrapper around ``x`` whose backward (gradient) and double
   backward (HVP) count themselves (the same wrapper on both sides; the first run's
   counts are printed). Before the timed runs, both solvers run once on a 2-D quadratic
   so that one-time costs (imports, torch's first optimizer) are not timed.

Problems: L2-regularized softmax regression on the 10,000 MNIST test images (7,850
parameters); the 784-300-10 sigmoid MLP on 5,000 of them (238,510 parameters); the 2-D
Rosenbrock function from (-1.2, 1); binary logistic regression on the benchmark's 2-D
``logistic2d`` training split (3 parameters). MNIST is read from ``--data-dir`` (the IDX
test files); synthetic data of the same shape is used when absent.

Usage::

    python benchmarks/full_batch_solvers.py --data-dir /work/shared/data/mnist-t10k
    python benchmarks/full_batch_solvers.py --quick          # small sizes, while iterating
    python benchmarks/full_batch_solvers.py --device cuda --dtype float32

Needs the ``peers`` extra (``pip install -e .[peers]``: pytorch-minimize).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch
import torch.nn.functional as F
from torch import Tensor

from secondorder.bench.data import images_to_float, load_image_set
from secondorder.bench.models import MLP, seeded
from secondorder.bench.problems import ROSENBROCK_START, get_problem
from secondorder.errors import DataFormatError
from secondorder.optim import LBFGS, NewtonCG, TrustRegion

try:
    import torchmin
except ImportError as exc:  # pragma: no cover - benchmark-only dependency
    raise SystemExit(
        "this benchmark needs pytorch-minimize: pip install -e .[peers]"
    ) from exc

#: dtype and device of every problem (``--dtype``, ``--device``)
DTYPE = torch.float64
DEVICE = torch.device("cpu")


def synchronize() -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


# ----------------------------------------------------------------------------- counting


COUNTS = {"forwards": 0, "gradients": 0, "hvps": 0}
COUNTING = False
_HVP_PASSES = [0]  # HVP backward passes still to go through _CountGradient.backward


class _CountHVP(torch.autograd.Function):
    """Identity on the gradient whose backward is one Hessian-vector product."""

    @staticmethod
    def forward(ctx, g: Tensor) -> Tensor:  # noqa: D102
        return g.clone()

    @staticmethod
    def backward(ctx, v: Tensor) -> Tensor:  # noqa: D102
        COUNTS["hvps"] += 1
        _HVP_PASSES[0] += 1
        return v


class _CountGradient(torch.autograd.Function):
    """Identity on ``x`` whose backward is one gradient (and records the HVP counter)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        return x.clone()

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # noqa: D102
        if _HVP_PASSES[0] > 0:  # the HVP's pass through d x / d x: not a gradient
            _HVP_PASSES[0] -= 1
        else:
            COUNTS["gradients"] += 1
        return _CountHVP.apply(g)


def counted(fun: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``fun`` that counts forwards, gradients and HVPs when :data:`COUNTING` is set."""

    def wrapped(x: Tensor) -> Tensor:
        if not COUNTING:
            return fun(x)
        COUNTS["forwards"] += 1
        return fun(_CountGradient.apply(x) if x.requires_grad else x)

    return wrapped


# ----------------------------------------------------------------------------- problems


@dataclass
class FlatProblem:
    """A loss of one flat vector (:data:`DTYPE`, :data:`DEVICE`), its start and scipy's budget."""

    name: str
    fun: Callable[[Tensor], Tensor]
    x0: Tensor
    scipy_iters: int
    target: float = float("nan")
    solves_per_run: int = 1


def mnist(data_dir: str | None, n: int, seed: int = 0) -> tuple[Tensor, Tensor, str]:
    """``n`` MNIST test images (flattened, in [0, 1]) and labels, or synthetic ones."""
    try:
        images = load_image_set(data_dir, "mnist")
        x = torch.from_numpy(images_to_float(images.test_images[:n])).reshape(n, -1)
        y, source = torch.from_numpy(images.test_labels[:n]).long(), "MNIST t10k"
    except (DataFormatError, FileNotFoundError):
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(n, 784, generator=gen, dtype=torch.float64)
        teacher = torch.randn(784, 10, generator=gen, dtype=torch.float64)
        y, source = (x @ teacher).argmax(1), "synthetic (MNIST not found)"
    return x.to(DEVICE, DTYPE), y.to(DEVICE), source


def softmax_problem(data_dir: str | None, n: int, iters: int, l2: float = 1e-3) -> FlatProblem:
    """Multinomial logistic regression + ``l2 / 2 |W|^2`` on ``n`` images, from zero."""
    x, y, source = mnist(data_dir, n)

    def fun(w: Tensor) -> Tensor:
        weight, bias = w[:7840].view(10, 784), w[7840:]
        return F.cross_entropy(x @ weight.T + bias, y) + 0.5 * l2 * weight.pow(2).sum()

    name = f"softmax regression + L2 {l2:g}, {n} images ({source}), 7,850 parameters"
    return FlatProblem(name, fun, torch.zeros(7850, dtype=DTYPE, device=DEVICE), iters)


def mlp_problem(data_dir: str | None, n: int, iters: int) -> FlatProblem:
    """The 784-300-10 sigmoid MLP of the benchmark (its seeded initialization) on ``n`` images."""
    x, y, source = mnist(data_dir, n)
    model = seeded(lambda: MLP((784, 300, 10), "sigmoid"), 0)
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    x0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).to(DEVICE, DTYPE)

    def fun(w: Tensor) -> Tensor:
        w1, b1, w2, b2 = (t.view(s) for t, s in zip(w.split(sizes), shapes, strict=True))
        return F.cross_entropy(torch.sigmoid(x @ w1.T + b1) @ w2.T + b2, y)

    name = f"MLP 784-300-10 sigmoid, {n} images ({source}), {x0.numel():,} parameters"
    return FlatProblem(name, fun, x0, iters)


def rosenbrock_problem(iters: int) -> FlatProblem:
    """``(1 - x)^2 + 100 (y - x^2)^2`` from the benchmark's start (-1.2, 1)."""

    def fun(w: Tensor) -> Tensor:
        return (1 - w[0]) ** 2 + 100 * (w[1] - w[0] ** 2) ** 2

    return FlatProblem("Rosenbrock 2-D from (-1.2, 1)", fun,
                       torch.tensor(ROSENBROCK_START, dtype=DTYPE, device=DEVICE), iters,
                       solves_per_run=20)


def logistic_problem(iters: int) -> FlatProblem:
    """Binary logistic regression on the ``logistic2d`` training split, from zero."""
    train = get_problem("logistic2d").train
    x, y = train.inputs.to(DEVICE, DTYPE), train.targets.to(DEVICE, DTYPE)

    def fun(w: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(x @ w[:2] + w[2], y)

    name = f"logistic regression, logistic2d train split ({len(y)} points), 3 parameters"
    return FlatProblem(name, fun, torch.zeros(3, dtype=DTYPE, device=DEVICE), iters,
                       solves_per_run=20)


def scipy_target(problem: FlatProblem) -> tuple[float, int]:
    """The loss scipy L-BFGS-B reaches in ``problem.scipy_iters`` iterations, and its count.

    scipy iterates in float64 on the host; the function and gradient are evaluated in the
    problem's dtype on its device, so the target is one that dtype can reach.
    """

    def fg(w: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.from_numpy(w).to(DEVICE, DTYPE).requires_grad_(True)
        loss = problem.fun(t)
        (g,) = torch.autograd.grad(loss, t)
        return float(loss.detach()), g.detach().cpu().double().numpy()

    res = scipy.optimize.minimize(
        fg, problem.x0.cpu().double().numpy(), jac=True, method="L-BFGS-B",
        options=dict(maxiter=problem.scipy_iters, maxfun=100 * problem.scipy_iters,
                     ftol=0.0, gtol=0.0),
    )  # fmt: skip
    return float(res.fun), int(res.nit)


# ----------------------------------------------------------------------------- runs


#: the clock of :class:`Stopwatch`: wall time, or with ``--clock thread`` this thread's CPU
#: time (on a machine shared with other jobs it leaves out the time the scheduler gives them)
CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}
CLOCK = [time.perf_counter]


class Stopwatch:
    """Time on :data:`CLOCK` minus the time spent inside :meth:`paused`.

    On CUDA the device is synchronized before a pause and before the time is read, so the
    queued work of the timed part is counted in it and not in the pause.
    """

    def __init__(self) -> None:
        self.clock = CLOCK[0]
        synchronize()
        self.start = self.clock()
        self.excluded = 0.0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        synchronize()
        t0 = self.clock()
        yield
        synchronize()
        self.excluded += self.clock() - t0

    def elapsed(self) -> float:
        synchronize()
        return self.clock() - self.start - self.excluded


@dataclass
class Run:
    seconds: float
    iterations: int
    reached: bool


def run_ours(make: Callable, problem: FlatProblem, max_iter: int) -> Run:
    """Step ``make([x])`` until the loss at ``x`` is <= the target, one iteration a step."""
    fun = counted(problem.fun)
    sw = Stopwatch()
    x = problem.x0.clone().requires_grad_(True)
    opt = make([x])

    def closure() -> Tensor:
        return fun(x)

    for k in range(1, max_iter + 1):
        opt.step(closure)
        with sw.paused(), torch.no_grad():
            if float(problem.fun(x)) <= problem.target:
                return Run(sw.elapsed(), k, True)
    return Run(sw.elapsed(), max_iter, False)


def run_ours_callback(make: Callable, problem: FlatProblem, max_iter: int) -> Run:
    """``make([x], max_iter=...)`` in one ``step`` with a callback that stops at the target
    (the shape of ``torchmin.minimize`` with its callback; a step that ends early, at a
    tolerance, is followed by another with the iterations left)."""
    fun = counted(problem.fun)
    sw = Stopwatch()
    x = problem.x0.clone().requires_grad_(True)
    opt = make([x], max_iter=max_iter)
    state = {"k": 0, "reached": False}

    def closure() -> Tensor:
        return fun(x)

    def callback() -> bool:
        with sw.paused(), torch.no_grad():
            state["k"] += 1
            state["reached"] = float(problem.fun(x)) <= problem.target
        return state["reached"]

    while not state["reached"] and state["k"] < max_iter:
        k = state["k"]
        for group in opt.param_groups:
            group["max_iter"] = max_iter - k
        opt.step(closure, callback=callback)
        if state["k"] == k:  # the step could not move (a tolerance): as run_ours, go on
            with sw.paused(), torch.no_grad():
                state["k"] += 1
                state["reached"] = float(problem.fun(x)) <= problem.target
    return Run(sw.elapsed(), state["k"], state["reached"])


def run_peer(method: str, problem: FlatProblem, max_iter: int) -> Run:
    """``torchmin.minimize(method)`` with a callback that stops at the target."""
    fun = counted(problem.fun)
    sw = Stopwatch()
    state = {"k": 0, "reached": False}

    def callback(x: Tensor) -> bool:
        with sw.paused(), torch.no_grad():
            state["k"] += 1
            state["reached"] = float(problem.fun(x)) <= problem.target
        return state["reached"]

    try:
        torchmin.minimize(fun, problem.x0.clone(), method=method, max_iter=max_iter,
                          callback=callback)
    except IndexError:  # torchmin 0.1.0's trust-region loop has no message for a callback stop
        if not state["reached"]:
            raise
    return Run(sw.elapsed(), state["k"], state["reached"])


SOLVERS = {
    "lbfgs": ("LBFGS", lambda p, **kw: LBFGS(p, full_batch=True, **kw), "l-bfgs"),
    "newton": ("NewtonCG", lambda p, **kw: NewtonCG(p, full_batch=True, **kw), "newton-cg"),
    "trust": ("TrustRegion spherical",
              lambda p, **kw: TrustRegion(p, norm="spherical", full_batch=True, **kw),
              "trust-ncg"),
    "trust_paper": ("TrustRegion spherical, eta_expand=None",
                    lambda p, **kw: TrustRegion(p, norm="spherical", eta_expand=None,
                                                full_batch=True, **kw),
                    "trust-ncg"),
}
#: the pairs run without ``--solvers`` (``trust_paper`` on request: the default run stays short)
DEFAULT_SOLVERS = ("lbfgs", "newton", "trust")


def counted_run(run: Callable[[], Run]) -> tuple[Run, dict[str, int]]:
    global COUNTING
    for k in COUNTS:
        COUNTS[k] = 0
    _HVP_PASSES[0] = 0
    COUNTING = True
    try:
        r = run()
    finally:
        COUNTING = False
    return r, dict(COUNTS)


def bench_problem(problem: FlatProblem, solvers: list[str], repeats: int,
                  max_iter: int, statistic: str = "mean") -> list[str]:
    """Print the table of one problem; return the markdown rows of its ratios.

    ``statistic`` reduces the back-to-back solves of one run of a tiny problem: their
    ``"mean"``, or the ``"min"`` of those after the first (counted) one.
    """
    problem.target, scipy_iters = scipy_target(problem)
    print(f"\n{problem.name}")
    print(f"target: {problem.target:.10g} (scipy L-BFGS-B, {scipy_iters} iterations"
          + (f" of {problem.scipy_iters}: its line search stopped)"
             if scipy_iters < problem.scipy_iters else ")"))
    header = f"{'solver':<44}{'reached':>8}{'iters':>7}{'fwd':>6}{'grads':>7}{'HVPs':>7}"
    print(header + f"{'median s':>11}{'ours/peer':>11}")
    rows = []
    for ours_name, make, method in (SOLVERS[k] for k in solvers):
        runs = {
            "ours": lambda make=make: run_ours(make, problem, max_iter),
            "ours_cb": lambda make=make: run_ours_callback(make, problem, max_iter),
            "peer": lambda method=method: run_peer(method, problem, max_iter),
        }
        counts: dict[str, tuple[Run, dict[str, int]]] = {}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(repeats):
            for k, r in runs.items():
                run, c = counted_run(r)
                counts.setdefault(k, (run, c))
                solves = [run.seconds]
                for _ in range(problem.solves_per_run - 1):  # tiny problems: a run is N solves
                    solves.append(r().seconds)
                if statistic == "min" and len(solves) > 1:
                    times[k].append(min(solves[1:]))
                else:
                    times[k].append(statistics.fmean(solves))
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = {k: med[k] / med["peer"] for k in ("ours", "ours_cb")}
        labels = (("ours", f"ours {ours_name}, steps"), ("ours_cb", f"ours {ours_name}, callback"),
                  ("peer", f"torchmin {method}"))
        for k, label in labels:
            run, c = counts[k]
            line = (f"{label:<44}{str(run.reached):>8}{run.iterations:>7}{c['forwards']:>6}"
                    f"{c['gradients']:>7}{c['hvps']:>7}{med[k]:>11.4f}")
            print(line + (f"{ratio[k]:>11.2f}" if k in ratio else ""))
        (ro, co), (rc, cc), (rp, cp) = counts["ours"], counts["ours_cb"], counts["peer"]
        rows.append(
            f"| {problem.name.split(',')[0].split(' from ')[0]} | {ours_name} vs {method} | "
            f"{med['ours']:.3f} s ({ro.iterations} it, {co['hvps']} HVPs) | "
            f"{med['ours_cb']:.3f} s ({rc.iterations} it, {cc['hvps']} HVPs) | "
            f"{med['peer']:.3f} s ({rp.iterations} it, {cp['hvps']} HVPs) | "
            f"{ratio['ours']:.2f} | {ratio['ours_cb']:.2f} |"
            + ("" if ro.reached and rc.reached and rp.reached else " (target not reached)")
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="/work/shared/data/mnist-t10k",
                        help="folder with the MNIST IDX test files (synthetic data if absent)")
    parser.add_argument("--quick", action="store_true",
                        help="1,000/500 images and shorter targets (for iterating)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per solver")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: steadier on a machine shared with other jobs)")
    parser.add_argument("--max-iter", type=int, default=500, help="iterations before giving up")
    parser.add_argument("--statistic", choices=("mean", "min"), default="mean",
                        help="a run of a tiny problem: the mean of its 20 solves, or the min "
                             "(least disturbed by other jobs)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or this thread's CPU time (steadier on a loaded "
                             "machine; CPU only)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                        help="dtype of every problem (default float64)")
    parser.add_argument("--only", default=None,
                        help="comma-separated problems: softmax,mlp,rosenbrock,logistic")
    parser.add_argument("--solvers", default=",".join(DEFAULT_SOLVERS),
                        help=f"comma-separated pairs to run, from {','.join(SOLVERS)} "
                             f"(default: {','.join(DEFAULT_SOLVERS)})")
    args = parser.parse_args(argv)
    solvers = args.solvers.split(",")
    if any(k not in SOLVERS for k in solvers):
        parser.error(f"--solvers: unknown pair in {solvers}; choose from {list(SOLVERS)}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")

    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    global DTYPE, DEVICE
    try:
        DEVICE = torch.device(args.device)
    except RuntimeError as exc:
        parser.error(f"--device: {exc}")
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    if DEVICE.type == "cuda" and (DEVICE.index or 0) >= torch.cuda.device_count():
        parser.error(f"--device {args.device}: there are {torch.cuda.device_count()} CUDA "
                     "devices (cuda:0 ...)")
    if DEVICE.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if DEVICE.type == "cuda" and args.clock == "thread":
        parser.error("--clock thread leaves out the time spent waiting for the GPU; "
                     "use the default wall clock with --device cuda")
    DTYPE = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    CLOCK[0] = CLOCKS[args.clock]
    quick = args.quick
    builders = {
        "softmax": lambda: softmax_problem(args.data_dir, 1000 if quick else 10000,
                                           25 if quick else 50),
        "mlp": lambda: mlp_problem(args.data_dir, 500 if quick else 5000, 20 if quick else 30),
        "rosenbrock": lambda: rosenbrock_problem(30),
        "logistic": lambda: logistic_problem(6),
    }
    names = list(builders) if args.only is None else args.only.split(",")
    unknown = [n for n in names if n not in builders]
    if unknown:
        parser.error(f"--only: unknown problem(s) {unknown}; choose from {list(builders)}")
    where = (torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda"
             else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    print(f"torch {torch.__version__}, torchmin {torchmin.__version__}, {where}, {args.dtype}"
          f"{', quick' if quick else ''}, median of {args.repeats}, {args.clock} clock")
    warm = FlatProblem("warm-up", lambda w: (w * w).sum(),
                       torch.ones(2, dtype=DTYPE, device=DEVICE), 1, 0.0)
    for _, make, method in (SOLVERS[k] for k in solvers):
        run_ours(make, warm, 3)
        run_ours_callback(make, warm, 3)
        run_peer(method, warm, 3)
    rows = []
    for name in names:
        rows += bench_problem(builders[name](), solvers, args.repeats, args.max_iter,
                              args.statistic)
    print("\n| problem | pair | ours, steps | ours, callback | torchmin | steps / torchmin "
          "| callback / torchmin |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

"""Iteration runs on [Veitch]'s sampled objective (eq. 28), recorded like benchmark runs.

One iteration is one ``optimizer.step`` on a :class:`~secondorder.optim.SampledObjective`
over the training split: ``"fixed"`` batches drawn once (with ``R = ceil(m / m_b)`` they
cover the set, so eq. 28 is the full training loss), ``"reshuffled"`` batches drawn anew
at every iteration (every closure call of one iteration, line-search trials included, sees
the same batches), or ``"full"`` (one batch: the whole set). Optimizers on a deterministic
objective (``fixed``/``full``) get their registry ``full_batch_kwargs`` (L-BFGS and NLCG
keep their line-search assumptions); a reshuffled objective is noisy, so they do not.

``scipy_lbfgsb`` runs :func:`scipy.optimize.minimize` with ``method="L-BFGS-B"`` on the
same torch model and objective (float64 vector, ``jac=True``), one callback per iteration:
the paper's own path ([Veitch] Sec. 1 uses ``scipy.optimize``), beside our LBFGS.

After every iteration the run records what a benchmark run records
(:data:`secondorder.bench.store.MEASUREMENT_COLUMNS`: ``step`` = iteration, training wall
time without evaluation, train/validation/test loss and accuracy over the whole splits),
plus in ``optimizer_counters``: ``objective`` (eq. 28 on this iteration's batches),
``evaluations`` (closure calls so far), the parameters ``x`` when there are at most two
(Rosenbrock iterates), and at step 0 ``gradient_seconds``: the median time of one gradient
of the objective, measured in the same run, so per-iteration times compare across machines
as ratios.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import numpy as np
import torch

from secondorder.bench.registry import REGISTRY
from secondorder.bench.runner import RunResult, evaluate_split
from secondorder.optim import SampledObjective

__all__ = ["run_iterations"]

GRADIENT_TIMINGS = 5  # gradient evaluations timed per run (median), after one warm-up


def _objective(problem, sampling: str, batch_size: int, num_batches: int | None, seed: int,
               model) -> SampledObjective:
    train = problem.train
    n = len(train)
    if sampling == "full":
        batch_size, num_batches, mode = n, 1, "fixed"
    else:
        batch_size, mode = min(batch_size, n), sampling
    return SampledObjective(model, problem.loss, (train.inputs, train.targets), batch_size,
                            num_batches=num_batches, mode=mode,
                            generator=torch.Generator().manual_seed(seed), per_sample=True)


def _gradient_seconds(model, objective: SampledObjective) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    torch.autograd.grad(objective().mean(), params)  # warm-up, not timed
    times = []
    for _ in range(GRADIENT_TIMINGS):
        t0 = time.perf_counter()
        torch.autograd.grad(objective().mean(), params)
        times.append(time.perf_counter() - t0)
    objective.evaluations -= GRADIENT_TIMINGS + 1
    return statistics.median(times)


class _Recorder:
    """Evaluates the model on the three splits and appends a measurement."""

    def __init__(self, model, problem, objective: SampledObjective):
        self.model, self.problem, self.objective = model, problem, objective
        self.measurements: list[dict[str, Any]] = []
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.small = sum(p.numel() for p in self.params) <= 2

    def __call__(self, step: int, wall: float, objective_value: float,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
        with torch.no_grad():
            tr = evaluate_split(self.model, self.problem, self.problem.train)
            va = evaluate_split(self.model, self.problem, self.problem.validation)
            te = evaluate_split(self.model, self.problem, self.problem.test)
        counters: dict[str, Any] = {"objective": objective_value,
                                    "evaluations": self.objective.evaluations}
        if self.small:
            counters["x"] = [float(v) for p in self.params for v in p.detach().reshape(-1)]
        counters.update(extra or {})
        m = {"step": step, "epoch": float(step), "data_epoch": None, "wall_time": wall,
             "train_loss": tr[0], "train_acc": tr[1], "val_loss": va[0], "val_acc": va[1],
             "test_loss": te[0], "test_acc": te[1], "optimizer_counters": counters}
        self.measurements.append(m)
        return m


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(x)


def run_iterations(problem, optimizer: str, hyperparameters: dict[str, Any], seed: int,
                   iterations: int, *, sampling: str, batch_size: int,
                   num_batches: int | None = None, divergence_factor: float = 1e3) -> RunResult:
    """Run ``iterations`` optimizer iterations on eq. 28 and record each (module docstring).

    Args:
        problem: a :class:`secondorder.bench.problems.Problem`.
        optimizer: a registry name or ``"scipy_lbfgsb"``.
        hyperparameters: keyword arguments over the registry defaults (for
            ``scipy_lbfgsb``: ``maxcor``, the memory, default 10).
        seed: model initialization and batch draws.
        iterations: the budget.
        sampling: ``"fixed"``, ``"reshuffled"`` or ``"full"``.
        batch_size: ``m_b``.
        num_batches: ``R`` (``None``: the batches cover the set).
        divergence_factor: a training loss above this times the initial one diverges.

    Returns:
        A :class:`~secondorder.bench.runner.RunResult`; optimizer failures are recorded as
        ``failed``, non-finite or exploding losses as ``diverged``, never raised.
    """
    torch.manual_seed(seed)
    model = problem.make_model(seed)
    objective = _objective(problem, sampling, batch_size, num_batches, seed, model)
    record = _Recorder(model, problem, objective)
    result = RunResult("finished", record.measurements)
    grad_s = _gradient_seconds(model, objective)
    with torch.no_grad():
        first = float(objective().mean())
    objective.evaluations -= 1
    initial = record(0, 0.0, first, {"gradient_seconds": grad_s})["train_loss"]
    limit = divergence_factor * max(abs(initial), 1e-8)
    if optimizer == "scipy_lbfgsb":
        return _run_scipy(model, objective, record, result, hyperparameters, iterations, limit)
    spec = REGISTRY[optimizer]
    kwargs = dict(hyperparameters)
    if sampling in ("fixed", "full"):
        kwargs.update(spec.full_batch_kwargs)
    try:
        opt = spec.build(model.parameters(), **kwargs)
    except Exception as e:  # noqa: BLE001 -- a bad setting is a failed run
        result.status, result.error = "failed", f"{type(e).__name__}: {e}"
        return result
    if spec.protocol == "torch":
        def closure():
            opt.zero_grad()
            loss = objective().mean()
            loss.backward()
            return loss
    else:
        closure = objective
    wall = 0.0
    for k in range(1, iterations + 1):
        t0 = time.perf_counter()
        objective.next_iteration()
        try:
            out = opt.step(closure)
        except Exception as e:  # noqa: BLE001 -- recorded, never crashes the study
            result.status, result.error = "failed", f"{type(e).__name__}: {e}"
            return result
        wall += time.perf_counter() - t0
        value = float(out.detach().mean()) if isinstance(out, torch.Tensor) else math.nan
        m = record(k, wall, value)
        if not _finite(m["train_loss"]) or m["train_loss"] > limit:
            result.status = "diverged"
            result.error = f"training loss {m['train_loss']:.4g} at iteration {k}"
            return result
    return result


def _run_scipy(model, objective, record, result, hyperparameters, iterations, limit):
    from scipy.optimize import minimize

    params = [p for p in model.parameters() if p.requires_grad]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def assign(x: np.ndarray) -> None:
        with torch.no_grad():
            for p, chunk, shape in zip(params, np.split(x, np.cumsum(sizes)[:-1]), shapes,
                                       strict=True):
                p.copy_(torch.from_numpy(chunk).reshape(shape).to(p.dtype))

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        assign(x)
        loss = objective().mean()
        grads = torch.autograd.grad(loss, params)
        flat = torch.cat([g.reshape(-1) for g in grads]).double().numpy()
        return float(loss.detach()), flat

    clock = {"wall": 0.0, "start": time.perf_counter(), "k": 0, "stop": None}

    def callback(intermediate_result) -> None:
        clock["wall"] += time.perf_counter() - clock["start"]
        clock["k"] += 1
        assign(intermediate_result.x)
        m = record(clock["k"], clock["wall"], float(intermediate_result.fun))
        if not _finite(m["train_loss"]) or m["train_loss"] > limit:
            clock["stop"] = f"training loss {m['train_loss']:.4g} at iteration {clock['k']}"
            raise StopIteration
        clock["start"] = time.perf_counter()

    x0 = torch.cat([p.detach().reshape(-1) for p in params]).double().numpy()
    try:
        res = minimize(fun, x0, jac=True, method="L-BFGS-B", callback=callback,
                       options={"maxiter": iterations,
                                "maxcor": int(hyperparameters.get("maxcor", 10))})
    except Exception as e:  # noqa: BLE001 -- recorded, never crashes the study
        result.status, result.error = "failed", f"{type(e).__name__}: {e}"
        return result
    if clock["stop"] is not None:
        result.status, result.error = "diverged", clock["stop"]
    elif clock["k"] < iterations and not res.success:
        result.error = f"L-BFGS-B stopped after {clock['k']} iterations: {res.message}"
    elif clock["k"] < iterations:
        result.error = f"L-BFGS-B converged after {clock['k']} iterations: {res.message}"
    return result

"""One benchmark run: measurements, budgets, counts, divergence and failure handling."""

import math
import time
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from secondorder.bench.registry import OptimizerSpec, get_optimizer
from secondorder.bench.runner import EVAL_RELATIVE_GAP, Budget, evaluate_split, run


@dataclass(frozen=True)
class Split:
    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self):
        return len(self.inputs)


@dataclass
class FakeProblem:
    name: str
    description: str
    train: Split
    validation: Split
    test: Split
    make_model: object
    loss: object
    accuracy: object
    batch_size: int
    full_batch: bool = False
    regularization: float = 0.0
    epochs: int = 2
    tags: tuple = ()


def fake_problem(n=60, batch_size=20, full_batch=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n + 40, 3, generator=g)
    y = (x @ torch.tensor([1.0, -2.0, 0.5]) > 0).long()

    def make_model(seed):
        torch.manual_seed(seed)
        return nn.Linear(3, 2)

    return FakeProblem(
        "fake", "test problem", Split(x[:n], y[:n]), Split(x[n:n + 20], y[n:n + 20]),
        Split(x[n + 20:], y[n + 20:]), make_model,
        lambda o, t: nn.functional.cross_entropy(o, t, reduction="none"),
        lambda o, t: (o.argmax(1) == t).float().mean(), batch_size, full_batch)


def test_sgd_run_records_per_epoch_with_exact_counts():
    p = fake_problem()
    r = run(p, get_optimizer("sgd"), {"lr": 0.5}, 3, Budget(epochs=2))
    assert r.status == "finished" and r.error is None
    ms = r.measurements
    assert [m["step"] for m in ms] == [0, 3, 6]
    assert [m["data_epoch"] for m in ms] == [0.0, 1.0, 2.0]
    assert [m["forward_samples"] for m in ms] == [0, 60, 120]
    assert [m["gradient_samples"] for m in ms] == [0, 60, 120]
    assert [m["backprops"] for m in ms] == [0.0, 1.0, 2.0]
    assert ms[0]["wall_time"] == 0.0 and ms[1]["wall_time"] <= ms[2]["wall_time"]
    # Step-0 metrics are those of the freshly built model.
    m0 = p.make_model(3)
    loss, acc = evaluate_split(m0, p, p.validation)
    assert ms[0]["val_loss"] == pytest.approx(loss) and ms[0]["val_acc"] == pytest.approx(acc)
    manual = p.loss(m0(p.test.inputs), p.test.targets).mean().item()
    assert ms[0]["test_loss"] == pytest.approx(manual, rel=1e-6)
    assert ms[-1]["train_loss"] < ms[0]["train_loss"]


def test_runs_are_deterministic_in_the_seed():
    p = fake_problem()
    a = run(p, get_optimizer("adam"), {"lr": 0.05}, 1, Budget(epochs=1), evals_per_epoch=3)
    b = run(p, get_optimizer("adam"), {"lr": 0.05}, 1, Budget(epochs=1), evals_per_epoch=3)
    c = run(p, get_optimizer("adam"), {"lr": 0.05}, 2, Budget(epochs=1), evals_per_epoch=3)
    assert [m["step"] for m in a.measurements] == [0, 1, 2, 3]
    assert [m["train_loss"] for m in a.measurements] == [m["train_loss"] for m in b.measurements]
    assert a.measurements[-1]["train_loss"] != c.measurements[-1]["train_loss"]


def test_huge_learning_rate_diverges_and_keeps_what_was_recorded():
    p = fake_problem()
    p.loss = lambda o, t: nn.functional.cross_entropy(o, t, reduction="none") + o.pow(2).sum(1)
    r = run(p, get_optimizer("sgd"), {"lr": 1e6}, 0, Budget(epochs=5))
    assert r.status == "diverged"
    assert "training loss" in r.error and "limit" in r.error
    assert r.measurements[0]["step"] == 0 and len(r.measurements) >= 2
    assert r.measurements[-1]["step"] < 15


class Exploding(torch.optim.Optimizer):
    def __init__(self, params, lr=1.0):
        super().__init__(params, {"lr": lr})

    def step(self, closure):
        closure()
        raise RuntimeError("boom in step")


def _spec(cls, protocol="torch", **kw):
    s = OptimizerSpec("x", cls.__name__, "n/a", protocol, "lr",
                      {"quick": (1.0,), "default": (1.0,), "full": (1.0,)}, **kw)
    object.__setattr__(s, "resolve", lambda: cls)
    return s


def test_optimizer_exception_is_a_failed_run_with_the_message():
    r = run(fake_problem(), _spec(Exploding), {"lr": 1.0}, 0, Budget(epochs=1))
    assert r.status == "failed" and r.error == "RuntimeError: boom in step"
    assert len(r.measurements) == 1
    bad = run(fake_problem(), get_optimizer("sgd"), {"lr": -1.0}, 0, Budget(epochs=1))
    assert bad.status == "failed" and "Invalid learning rate" in bad.error


def test_full_batch_methods_take_one_step_per_epoch_on_full_batch_problems():
    p = fake_problem(full_batch=True)
    sgd_full = _spec(torch.optim.SGD, full_batch=True)
    r = run(p, sgd_full, {"lr": 0.1}, 0, Budget(epochs=3))
    assert [m["step"] for m in r.measurements] == [0, 1, 2, 3]
    assert r.measurements[-1]["gradient_samples"] == 180
    # A mini-batch method on the same problem keeps the problem's batch size.
    r2 = run(p, get_optimizer("sgd"), {"lr": 0.1}, 0, Budget(epochs=1))
    assert r2.measurements[-1]["step"] == 3


def test_backprop_and_time_budgets_stop_the_run():
    p = fake_problem()
    r = run(p, get_optimizer("sgd"), {"lr": 0.1}, 0, Budget(backprops=1.5))
    assert r.measurements[-1]["backprops"] == pytest.approx(5 / 3)  # first step past 1.5
    r = run(p, get_optimizer("sgd"), {"lr": 0.1}, 0, Budget(seconds=1e-9))
    assert r.measurements[-1]["step"] == 1


def test_secondorder_protocol_closure_returns_per_sample_losses():
    from secondorder.optim.base import SecondOrderOptimizer

    seen = []

    class GD(SecondOrderOptimizer):
        def __init__(self, params, lr=0.1):
            super().__init__(params, {"lr": lr})

        def step(self, closure, global_closure=None):
            seen.append((closure().shape, None if global_closure is None
                         else global_closure().shape))
            ev = self.evaluate(closure)
            self.add_to_params(ev.grads, -0.1)
            return ev.loss

    r = run(fake_problem(), _spec(GD, "secondorder", global_closure=True), {}, 0,
            Budget(epochs=1))
    assert r.status == "finished"
    assert seen[0] == (torch.Size([20]), torch.Size([60]))
    last = r.measurements[-1]
    assert last["optimizer_counters"]["gradient_samples"] == 60
    # Harness counts include the extra closure calls the optimizer made (3 per step).
    assert last["forward_samples"] == 3 * (20 + 60 + 20) and last["gradients"] == 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="Invalid budget: give epochs"):
        Budget()
    with pytest.raises(ValueError, match="Invalid budget epochs: -1"):
        Budget(epochs=-1)
    with pytest.raises(ValueError, match="Invalid budget seconds: inf"):
        Budget(seconds=math.inf)
    with pytest.raises(ValueError, match="Invalid evals_per_epoch: 0"):
        run(fake_problem(), get_optimizer("sgd"), {"lr": 0.1}, 0, Budget(epochs=1),
            evals_per_epoch=0)


# ------------------------------------------------------------------ Gauss-Newton closures
def _flat_hessian(f, params):
    """Dense float64 Hessian of ``f(params)`` over the flattened parameters."""
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def flat_f(w):
        return f([c.reshape(s) for c, s in zip(w.split(sizes), shapes, strict=True)])

    w = torch.cat([p.detach().reshape(-1) for p in params])
    return torch.func.hessian(flat_f)(w)


def _penalized_problem(inner, weight, n=8, classes=3, features=3):
    from secondorder.bench import models as zoo
    from secondorder.bench.problems import Penalized, cross_entropy

    g = torch.Generator().manual_seed(4)
    x = torch.randn(n, features, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    torch.manual_seed(0)
    model = zoo.L2Penalized(inner, weight).double()
    return model, Penalized(cross_entropy, add_penalty=True), x, y


def test_ggn_closure_on_a_linear_model_is_the_hessian_of_the_penalized_objective():
    # Softmax regression is linear in its parameters, so J^T H_L J + weight I_W is the exact
    # Hessian of the regularized objective; without the penalty term it is off by weight I_W.
    from secondorder.bench import models as zoo
    from secondorder.bench.runner import make_ggn_closure
    from secondorder.curvature.ggn import GGNOperator

    model, loss, x, y = _penalized_problem(zoo.SoftmaxRegression(3, 3), 0.3)
    problem = FakeProblem("p", "", None, None, None, None, loss, None, 8)
    op = make_ggn_closure(model, problem, x, y)()
    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]

    def objective(ps):
        out = torch.func.functional_call(model, dict(zip(names, ps, strict=True)), (x,))
        return loss(out, y).mean()

    exact = _flat_hessian(objective, params)
    torch.testing.assert_close(op.to_dense(), exact, rtol=1e-10, atol=1e-12)
    plain = GGNOperator.from_model(model, lambda o, t: loss(o, t).mean(), x, y).to_dense()
    mask = torch.cat([torch.full((p.numel(),), float(p.dim() > 1), dtype=torch.float64)
                      for p in params])
    torch.testing.assert_close(exact - plain, torch.diag(0.3 * mask), rtol=1e-10, atol=1e-12)


def test_ggn_closure_on_an_mlp_is_jt_hl_j_plus_the_penalty():
    # Oracle: dense Jacobian of the logits and dense Hessian of the output loss, float64.
    from secondorder.bench import models as zoo
    from secondorder.bench.problems import cross_entropy
    from secondorder.bench.runner import make_ggn_closure

    model, loss, x, y = _penalized_problem(zoo.MLP([3, 4, 3], "tanh"), 0.05)
    problem = FakeProblem("p", "", None, None, None, None, loss, None, 8)
    op = make_ggn_closure(model, problem, x, y)()
    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]
    w = torch.cat([p.detach().reshape(-1) for p in params])

    def logits(flat):
        ps = [c.reshape(s) for c, s in zip(flat.split(sizes), shapes, strict=True)]
        return torch.func.functional_call(model.model, dict(zip(
            [n.removeprefix("model.") for n in names], ps, strict=True)), (x,))

    z = logits(w)
    jac = torch.func.jacrev(logits)(w).reshape(z.numel(), -1)
    h_l = torch.func.hessian(lambda o: cross_entropy(o.reshape(z.shape), y).mean())(
        z.reshape(-1))
    mask = torch.cat([torch.full((p.numel(),), float(p.dim() > 1), dtype=torch.float64)
                      for p in params])
    expected = jac.T @ h_l @ jac + torch.diag(0.05 * mask)
    dense = op.to_dense()
    torch.testing.assert_close(dense, expected, rtol=1e-9, atol=1e-12)
    # PSD, and at least the penalty's curvature on the weight block.
    assert torch.linalg.eigvalsh(dense).min() > -1e-12
    w_block = dense[mask.bool()][:, mask.bool()]
    assert torch.linalg.eigvalsh(w_block).min() > 0.05 - 1e-12


def test_ggn_closure_on_a_deterministic_problem_is_the_hessian():
    from secondorder.bench import models as zoo
    from secondorder.bench.problems import objective_value
    from secondorder.bench.runner import make_ggn_closure

    model = zoo.Rosenbrock((0.5, -0.25)).double()
    problem = FakeProblem("r", "", None, None, None, None, objective_value, None, 1,
                          tags=("deterministic",))
    x, y = torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    dense = make_ggn_closure(model, problem, x, y)().to_dense()
    a, b = 0.5, -0.25  # f = (1 - a)^2 + 100 (b - a^2)^2
    exact = torch.tensor([[2 - 400 * (b - a * a) + 800 * a * a, -400 * a],
                          [-400 * a, 200.0]], dtype=torch.float64)
    torch.testing.assert_close(dense, exact, rtol=1e-12, atol=1e-10)


def test_hessian_free_step_in_the_runner_uses_and_counts_ggn_products():
    from secondorder.curvature.ggn import GGNOperator
    from secondorder.optim import HessianFree

    p = fake_problem(n=60, batch_size=60)  # one step per epoch, on the whole set
    spec = get_optimizer("HessianFree")
    hyper = {"damping": 1.0, "preconditioner": False}
    r = run(p, spec, hyper, 0, Budget(epochs=1))
    assert r.status == "finished"
    m = r.measurements[-1]
    oc = m["optimizer_counters"]
    assert m["step"] == 1 and oc["hvps"] >= 2
    # Every GGN product is one HVP on the 60-sample batch, seen by the harness too; the GGN
    # setup is a forward (hook) plus a counted backward; the rest are the closure's calls.
    assert (m["hvps"], m["hvp_samples"]) == (oc["hvps"], 60 * oc["hvps"])
    assert (m["gradients"], m["gradient_samples"]) == (2, 120)
    assert m["forwards"] == oc["loss_evals"] + 1
    assert m["backprops"] == pytest.approx(
        (0.5 * 60 * m["forwards"] + 0.5 * 120 + 60 * oc["hvps"]) / 60)
    # Same step as HessianFree driven by hand with the GGN on the batch.
    model = p.make_model(0)
    opt = HessianFree(model.parameters(), damping=1.0, preconditioner=False)
    x, y = p.train.inputs, p.train.targets

    def crit(o, t):
        return p.loss(o, t).mean()

    opt.step(lambda: p.loss(model(x), y),
             ggn_closure=lambda: GGNOperator.from_model(model, crit, x, y))
    assert opt.counters.hvps == oc["hvps"]
    assert m["train_loss"] == pytest.approx(evaluate_split(model, p, p.train)[0], rel=1e-5)
    # With Martens' preconditioner its Rademacher probes are repeated backward passes through
    # the closure's graph, which the harness prices as HVPs (accounting module docstring).
    r = run(p, spec, {"damping": 1.0, "fisher_probes": 3}, 0, Budget(epochs=1))
    m = r.measurements[-1]
    assert m["hvps"] == m["optimizer_counters"]["hvps"] + 3


def test_gauss_newton_closures_reach_trust_region_only_when_configured():
    from secondorder.bench.runner import uses_ggn_closure
    from secondorder.optim import HessianFree, TrustRegion

    p = fake_problem()
    spec = get_optimizer("TrustRegion")
    gn = run(p, spec, {"radius": 1.0, "curvature": "gauss_newton"}, 0, Budget(epochs=1))
    hess = run(p, spec, {"radius": 1.0}, 0, Budget(epochs=1))
    assert gn.status == hess.status == "finished"
    # 3 steps: the GGN setup adds one counted backward and one forward per step.
    assert gn.measurements[-1]["gradients"] == 6 and hess.measurements[-1]["gradients"] == 3
    w = [torch.zeros(2, requires_grad=True)]
    assert uses_ggn_closure(HessianFree(w))
    assert not uses_ggn_closure(HessianFree(w, curvature="hessian"))
    assert not uses_ggn_closure(TrustRegion(w)) and not uses_ggn_closure(torch.optim.SGD(w, 0.1))

    class Undeclared(torch.optim.SGD):  # takes ggn_closure but does not declare it
        def step(self, closure=None, ggn_closure=None):
            return super().step(closure)

    undeclared = Undeclared(w, 0.1)
    undeclared.param_groups[0]["curvature"] = "gauss_newton"
    assert not uses_ggn_closure(undeclared)  # the class attribute decides, not the signature


def test_time_budget_stops_within_one_step_and_thins_evaluations():
    """A seconds budget stops the run at the end of the first step past it (so within the
    budget plus one step, and so within one evaluation interval); with min_eval_gap the
    scheduled evaluations (every step here) are thinned to gaps of at least
    min(min_eval_gap, EVAL_RELATIVE_GAP x the previous evaluation's time)."""
    p = fake_problem(n=60, batch_size=20)
    seconds, gap = 0.3, 0.03
    stamps = []
    r = run(p, get_optimizer("sgd"), {"lr": 0.1}, 0, Budget(seconds=seconds, epochs=1e6),
            evals_per_epoch=3, min_eval_gap=gap,
            on_step=lambda _: stamps.append(time.perf_counter()))
    assert r.status == "finished"
    ms = r.measurements
    longest_step = max(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    assert seconds <= ms[-1]["wall_time"] <= seconds + longest_step
    steps = ms[-1]["step"]
    assert steps > 300  # thousands of scheduled evaluations (one per step) ...
    # ... of which at most T / gap linear ones and the geometric ones survive
    bound = seconds / gap + math.log(seconds / ms[1]["wall_time"]) / math.log(
        1 + EVAL_RELATIVE_GAP) + 3
    assert len(ms) <= bound < steps / 3
    for a, b in zip(ms[1:-2], ms[2:-1], strict=True):
        assert b["wall_time"] - a["wall_time"] >= min(gap, EVAL_RELATIVE_GAP * a["wall_time"])
    # Without thinning every scheduled evaluation is kept.
    r = run(p, get_optimizer("sgd"), {"lr": 0.1}, 0, Budget(epochs=4), evals_per_epoch=3)
    assert [m["step"] for m in r.measurements] == list(range(13))
    with pytest.raises(ValueError, match="Invalid min_eval_gap: -1"):
        run(p, get_optimizer("sgd"), {"lr": 0.1}, 0, Budget(epochs=1), min_eval_gap=-1)


class _Scalar(nn.Module):
    """One parameter ``w`` (initially 0.1), output ``w`` for every sample."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.1]))

    def forward(self, x):
        return self.w.expand(len(x), 1)


def test_a_rejected_trial_with_a_huge_loss_is_not_divergence():
    # f(w) = -w^2/2 + w^4/4 (minimum -1/4 at w = 1), started at w = 0.1 where the curvature
    # is negative: ARC with a small sigma steps to w ~ 100, whose trial loss (~2e7) is far
    # above 1e3 x the initial |f| (~5e-3). The step is rejected and the parameters restored,
    # as on the [AdaptiveNorms] MNIST CNN (docs/studies/adaptive_norms.md, "ARC on the MNIST
    # CNN"), where the runner used to read the last closure value -- that rejected trial's
    # loss -- and report a divergence although the model's loss was fine.
    p = fake_problem()
    p.make_model = lambda seed: _Scalar()
    p.loss = lambda o, t: (-o.pow(2) / 2 + o.pow(4) / 4).squeeze(1)
    p.accuracy = None
    trials = []
    spec = get_optimizer("AdaptiveCubic_spherical")
    r = run(p, spec, {"sigma": 1e-2}, 0, Budget(epochs=4), on_step=trials.append)
    assert r.status == "finished", r.error
    assert r.measurements[0]["train_loss"] == pytest.approx(-0.1**2 / 2 + 0.1**4 / 4)
    assert r.measurements[-1]["train_loss"] == pytest.approx(-0.25, abs=1e-4)
    assert len(trials) == 12

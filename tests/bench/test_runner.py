"""One benchmark run: measurements, budgets, counts, divergence and failure handling."""

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from secondorder.bench.registry import OptimizerSpec, get_optimizer
from secondorder.bench.runner import Budget, evaluate_split, run


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

"""The embedded problems of secondorder.bench.problems: splits, models, losses, known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import LogisticRegression as SkLogisticRegression

from secondorder.bench import problems as P
from secondorder.bench.problems import EMBEDDED, Split, get_problem, list_problems, split_indices

EXPECTED_SIZES = {
    "digits_softmax": (1257, 270, 270),
    "digits_mlp": (1257, 270, 270),
    "digits_cnn": (1257, 270, 270),
    "digits_autoencoder": (1257, 270, 270),
    "cancer_logistic": (341, 114, 114),
    "cancer_svm": (341, 114, 114),
    "logistic2d": (800, 100, 100),
    "rosenbrock": (1, 1, 1),
    "quadratic_axis": (1, 1, 1),
    "quadratic_rotated": (1, 1, 1),
}
DATA_PROBLEMS = [n for n in EMBEDDED if EXPECTED_SIZES[n][0] > 1]
DETERMINISTIC = ["rosenbrock", "quadratic_axis", "quadratic_rotated"]


@pytest.fixture(scope="module")
def built():
    return {name: get_problem(name) for name in EMBEDDED}


def rows(split: Split) -> set[bytes]:
    return {r.tobytes() for r in split.inputs.reshape(len(split), -1).numpy()}


# -------------------------------------------------------------------------- registry


def test_registry_lists_embedded_first_and_every_file_problem():
    names = list_problems()
    assert names[: len(EMBEDDED)] == list(EMBEDDED)
    assert set(EXPECTED_SIZES) == set(EMBEDDED)
    for name in ("mnist_mlp1", "mnist_mlp2", "mnist_lenet5", "mnist_autoencoder", "fmnist_mlp1",
                 "fmnist_2c2d", "kmnist_mlp1", "cifar10_cnn", "cifar10_vgg11", "cifar10_3c3d",
                 "libsvm_logistic"):  # fmt: skip
        assert name in names


def test_get_problem_rejects_unknown_name_and_bad_seed():
    with pytest.raises(ValueError, match=r"Unknown problem 'nope'; available: digits_softmax"):
        get_problem("nope")
    with pytest.raises(ValueError, match=r"Invalid seed: -1"):
        get_problem("rosenbrock", seed=-1)
    with pytest.raises(ValueError, match=r"Invalid seed: 1.5"):
        get_problem("rosenbrock", seed=1.5)


def test_register_rejects_duplicates():
    with pytest.raises(ValueError, match="'rosenbrock' is already registered"):
        P.register("rosenbrock", lambda d, s: None)


def test_split_validates_its_tensors():
    with pytest.raises(ValueError, match="Invalid Split: 3 inputs but 2 targets"):
        Split(torch.zeros(3, 1), torch.zeros(2))
    with pytest.raises(ValueError, match="inputs must be floating point, got torch.int64"):
        Split(torch.zeros(3, 1, dtype=torch.long), torch.zeros(3))


# ---------------------------------------------------------------------- split_indices


def test_split_indices_disjoint_covering_stratified_deterministic():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    parts = split_indices(100, (60, 20, 20), seed=5, labels=labels)
    assert [len(p) for p in parts] == [60, 20, 20]
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    assert np.bincount(labels[parts[0]]).tolist() == [30, 18, 12]
    assert np.bincount(labels[parts[1]]).tolist() == [10, 6, 4]
    again = split_indices(100, (60, 20, 20), seed=5, labels=labels)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = split_indices(100, (60, 20, 20), seed=6, labels=labels)
    assert not np.array_equal(parts[0], other[0])


def test_split_indices_rejects_bad_sizes():
    with pytest.raises(ValueError, match=r"Invalid split sizes \[5, 4\].*n=10"):
        split_indices(10, (5, 4), seed=0)
    with pytest.raises(ValueError, match=r"Invalid labels: shape \(9,\), expected \(10,\)"):
        split_indices(10, (5, 5), seed=0, labels=np.zeros(9))


# ------------------------------------------------------------------ every embedded problem


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_split_sizes_and_dtypes(built, name):
    problem = built[name]
    assert problem.name == name and "embedded" in problem.tags
    sizes = (len(problem.train), len(problem.validation), len(problem.test))
    assert sizes == EXPECTED_SIZES[name]
    for split in (problem.train, problem.validation, problem.test):
        assert split.inputs.dtype == torch.float32
        if problem.accuracy is not None:
            assert split.targets.dtype == torch.int64
    assert problem.regularization == 0.0
    assert problem.full_batch == (name in DETERMINISTIC or name.startswith("cancer"))


@pytest.mark.parametrize("name", DATA_PROBLEMS)
def test_embedded_splits_do_not_overlap(built, name):
    problem = built[name]
    train, val, test = rows(problem.train), rows(problem.validation), rows(problem.test)
    assert len(train) == len(problem.train)  # the sets' samples are all distinct
    assert not train & val and not train & test and not val & test


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_model_output_and_per_sample_loss_shapes(built, name):
    problem = built[name]
    model = problem.make_model(0)
    batch = problem.train.inputs[:7]
    targets = problem.train.targets[:7]
    with torch.no_grad():
        out = model(batch)
        loss = problem.loss(out, targets)
    assert out.shape[0] == len(batch)
    assert loss.shape == (len(batch),) and torch.isfinite(loss).all()
    if problem.accuracy is not None:
        acc = problem.accuracy(out, targets)
        assert acc.shape == () and 0.0 <= acc.item() <= 1.0


@pytest.mark.parametrize("name", EMBEDDED)
def test_make_model_deterministic_in_seed(built, name):
    make = built[name].make_model
    state = torch.random.get_rng_state()
    a, b, c = make(0), make(0), make(1)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert pa.dtype == torch.float32 and torch.equal(pa, pb)
    assert any(
        not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True)
    )


def test_splits_depend_on_problem_seed_only_through_the_permutation():
    a, b = get_problem("digits_mlp", seed=0), get_problem("digits_mlp", seed=1)
    assert rows(a.train) != rows(b.train)
    assert rows(a.train) | rows(a.validation) | rows(a.test) == rows(b.train) | rows(
        b.validation
    ) | rows(b.test)


# ------------------------------------------------------------------------ digits


def test_digits_pixels_scaled_to_unit_interval_and_stratified(built):
    problem = built["digits_mlp"]
    digits = load_digits()
    all_rows = {(r / 16.0).astype(np.float32).tobytes() for r in digits.data}
    assert rows(problem.train) | rows(problem.validation) | rows(problem.test) == all_rows
    assert problem.train.inputs.shape[1:] == (1, 8, 8)
    assert problem.train.inputs.min() == 0.0 and problem.train.inputs.max() == 1.0
    counts = np.bincount(problem.test.targets.numpy())
    expected = np.bincount(digits.target) * 270 / 1797
    assert np.all(np.abs(counts - expected) <= 1)


def test_digits_softmax_at_zero_is_log10_plus_penalty(built):
    problem = built["digits_softmax"]
    model = problem.make_model(0)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        loss = problem.loss(model(problem.train.inputs), problem.train.targets)
        np.testing.assert_allclose(loss.numpy(), math.log(10), rtol=1e-6)
        weight = model.model[1].weight
        weight.fill_(0.5)
        out = model(problem.train.inputs)
        logits = problem.train.inputs.reshape(-1, 64) @ weight.T
        expected = torch.nn.functional.cross_entropy(
            logits, problem.train.targets, reduction="none"
        )
        expected = expected + 0.5 * 1e-3 * (weight**2).sum()  # L2 on weights, not biases
        torch.testing.assert_close(problem.loss(out, problem.train.targets), expected)
        assert problem.accuracy(out, problem.train.targets).item() == pytest.approx(
            (logits.argmax(1) == problem.train.targets).float().mean().item()
        )


def test_digits_autoencoder_targets_and_mse(built):
    problem = built["digits_autoencoder"]
    torch.testing.assert_close(problem.train.targets, problem.train.inputs.reshape(-1, 64))
    model = problem.make_model(0)
    with torch.no_grad():
        out = model(problem.train.inputs[:5])
        expected = ((out - problem.train.targets[:5]) ** 2).mean(dim=1)
        torch.testing.assert_close(problem.loss(out, problem.train.targets[:5]), expected)
    assert out.shape == (5, 64) and out.min() > 0 and out.max() < 1  # sigmoid output


# ----------------------------------------------------------------- breast cancer


def test_cancer_standardized_with_train_statistics_only(built):
    problem = built["cancer_logistic"]
    raw = load_breast_cancer().data
    train = problem.train.inputs.double().numpy()
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-6)
    # recover the train rows' raw values, then check validation/test use their statistics
    idx = split_indices(569, (341, 114, 114), seed=0, labels=load_breast_cancer().target)
    mean, std = raw[idx[0]].mean(axis=0), raw[idx[0]].std(axis=0)
    np.testing.assert_allclose(train, (raw[idx[0]] - mean) / std, atol=1e-5)
    for split, i in ((problem.validation, idx[1]), (problem.test, idx[2])):
        np.testing.assert_allclose(split.inputs.numpy(), (raw[i] - mean) / std, atol=1e-5)
        assert np.abs(split.inputs.double().numpy().mean(axis=0)).max() > 1e-3
    positives = [int(s.targets.sum()) for s in (problem.train, problem.validation, problem.test)]
    assert positives == [214, 72, 71] or positives == [214, 71, 72]  # 357 positives, stratified


@pytest.mark.parametrize(
    ("name", "value_at_zero"), [("cancer_logistic", math.log(2)), ("cancer_svm", 1.0)]
)
def test_cancer_losses_at_zero_weights(built, name, value_at_zero):
    problem = built[name]
    model = problem.make_model(0)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        loss = problem.loss(model(problem.train.inputs), problem.train.targets)
    np.testing.assert_allclose(loss.numpy(), value_at_zero, rtol=1e-6)


def test_cancer_logistic_minimizer_matches_sklearn(built):
    """The regularized objective is mean log-loss + lambda/2 ||w||^2 (bias not penalized).

    sklearn minimizes C * sum(log-loss) + 1/2 ||w||^2, the same objective for C = 1/(lambda n).
    """
    problem = built["cancer_logistic"]
    x, y = problem.train.inputs.double(), problem.train.targets
    model = problem.make_model(0).double()
    optimizer = torch.optim.LBFGS(
        model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        optimizer.zero_grad()
        loss = problem.loss(model(x), y).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    n = len(y)
    sk = SkLogisticRegression(C=1.0 / (P.CANCER_L2 * n), tol=1e-12, max_iter=10_000)
    sk.fit(x.numpy(), y.numpy())
    linear = model.model.linear
    np.testing.assert_allclose(linear.weight.detach().numpy().ravel(), sk.coef_.ravel(), atol=1e-5)
    np.testing.assert_allclose(linear.bias.detach().numpy(), sk.intercept_, atol=1e-5)


def test_cancer_svm_squared_hinge_values(built):
    problem = built["cancer_svm"]
    logits = torch.tensor([2.0, 0.5, -0.25, -3.0])
    targets = torch.tensor([1, 1, 1, 0])
    outputs = torch.stack([logits, torch.full((4,), 0.125)], dim=1)  # penalty column 0.125
    expected = torch.tensor([0.0, 0.25, 1.5625, 0.0]) + 0.125
    torch.testing.assert_close(problem.loss(outputs, targets), expected)
    assert problem.accuracy(outputs, targets).item() == 0.75


# -------------------------------------------------------------------- logistic2d


def test_logistic2d_balanced_and_log2_at_zero(built):
    problem = built["logistic2d"]
    for split, n in zip(
        (problem.train, problem.validation, problem.test), (800, 100, 100), strict=True
    ):
        assert int(split.targets.sum()) == n // 2
        assert split.inputs.shape == (n, 2)
    model = problem.make_model(0)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        loss = problem.loss(model(problem.train.inputs), problem.train.targets)
    np.testing.assert_allclose(loss.numpy(), math.log(2), rtol=1e-6)
    # class means near the documented centres (-0.7, -0.7) and (0.7, 0.7)
    x, y = problem.train.inputs, problem.train.targets
    np.testing.assert_allclose(x[y == 0].mean(0).numpy(), [-0.7, -0.7], atol=0.15)
    np.testing.assert_allclose(x[y == 1].mean(0).numpy(), [0.7, 0.7], atol=0.15)


def test_logistic2d_bayes_rule_accuracy_matches_seed003_overlap(built):
    problem = built["logistic2d"]
    x = torch.cat([problem.train.inputs, problem.validation.inputs, problem.test.inputs])
    y = torch.cat([problem.train.targets, problem.validation.targets, problem.test.targets])
    bayes = ((x.sum(dim=1) > 0).long() == y).float().mean().item()  # optimal boundary x + y = 0
    assert 0.80 <= bayes <= 0.88  # Phi(0.99) = 0.84; [Veitch] reports 0.83


# ------------------------------------------------------------- deterministic problems


def test_rosenbrock_known_values(built):
    problem = built["rosenbrock"]
    model = problem.make_model(0)
    dummy = problem.train.inputs
    assert dummy.shape == (1, 1)
    loss = problem.loss(model(dummy), problem.train.targets)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(24.2, rel=1e-6)
    grad = torch.autograd.grad(loss.sum(), model.xy)[0]
    # d/dx = -2(1-x) - 400 x (y - x^2) ; d/dy = 200 (y - x^2)
    torch.testing.assert_close(grad, torch.tensor([-215.6, -88.0]))
    with torch.no_grad():
        model.xy.copy_(torch.tensor([1.0, 1.0]))
    assert problem.loss(model(dummy), problem.train.targets).item() == 0.0
    start = problem.make_model(3).xy.detach()
    assert not torch.equal(start, torch.tensor([-1.2, 1.0]))
    assert (start - torch.tensor([-1.2, 1.0])).abs().max() <= 0.5


@pytest.mark.parametrize("name", ["quadratic_axis", "quadratic_rotated"])
def test_quadratic_minimizer_condition_number_and_value(built, name):
    problem = built[name]
    model = problem.make_model(0).double()
    h = model.hessian
    eig = torch.linalg.eigvalsh(h)
    assert eig[-1] / eig[0] == pytest.approx(1e4, rel=1e-3)  # H is stored in float32
    assert torch.equal(h, h.T)
    assert (h[0, 1].abs() > 1.0) == (name == "quadratic_rotated")
    dummy = problem.train.inputs.double()
    w = model.w.detach().clone()
    r = w - torch.tensor([1.0, 1.0], dtype=torch.float64)
    value = problem.loss(model(dummy), problem.train.targets)
    assert value.item() == pytest.approx(0.5 * (r @ h @ r).item(), rel=1e-12)
    grad = torch.autograd.grad(value.sum(), model.w)[0]
    torch.testing.assert_close(grad, h @ r)
    newton = w - torch.linalg.solve(h, grad)  # one Newton step lands on the minimizer
    torch.testing.assert_close(newton, torch.tensor([1.0, 1.0], dtype=torch.float64))
    with torch.no_grad():
        model.w.copy_(newton)
    assert problem.loss(model(dummy), problem.train.targets).item() == pytest.approx(0.0, abs=1e-20)


def test_quadratic_starts_are_seeded_in_the_box(built):
    make = built["quadratic_axis"].make_model
    starts = torch.stack([make(s).w.detach() for s in range(5)])
    assert (starts.abs() <= 5).all()
    assert len({tuple(s.tolist()) for s in starts}) == 5


# -------------------------------------------------------------------------- budget


def test_default_budgets_are_small():
    """Each embedded problem's default budget is at most 1,000 optimizer steps."""
    for name in EMBEDDED:
        problem = get_problem(name)
        steps = problem.epochs * math.ceil(len(problem.train) / problem.batch_size)
        assert steps <= 1000, name

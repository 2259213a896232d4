"""The model zoo: parameter counts from the architectures, shapes, penalties, validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from secondorder.bench import models as zoo


def conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out


def dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


# ------------------------------------------------------------------- parameter counts


def test_lenet5_parameter_count_by_hand():
    # conv 1->6 5x5, conv 6->16 5x5, then 16*5*5 = 400 -> 120 -> 84 -> 10
    expected = conv(1, 6, 5) + conv(6, 16, 5) + dense(400, 120) + dense(120, 84) + dense(84, 10)
    assert expected == 61_706
    assert zoo.count_parameters(zoo.LeNet5("sigmoid")) == expected
    cifar = zoo.LeNet5("sigmoid", in_channels=3, image_size=32)
    assert zoo.count_parameters(cifar) == expected + 2 * 6 * 25  # two more input channels


def test_seed000_cnn_parameter_count_by_hand():
    # conv 3->6 5x5 (32->28, pool 14), conv 6->16 5x5 (14->10, pool 5), 400 -> 120 -> 10
    expected = conv(3, 6, 5) + conv(6, 16, 5) + dense(16 * 5 * 5, 120) + dense(120, 10)
    assert expected == 52_202
    assert zoo.count_parameters(zoo.Cifar10CNN()) == expected


def test_vgg11_parameter_count_by_hand():
    channels = [3, 64, 128, 256, 256, 512, 512, 512, 512]
    convs = sum(conv(a, b, 3) for a, b in zip(channels[:-1], channels[1:], strict=True))
    batch_norm = sum(2 * c for c in channels[1:])  # weight and bias per channel
    fc = dense(512, 512) + dense(512, 512) + dense(512, 10)
    assert convs + batch_norm + fc == 9_756_426
    assert (
        zoo.count_parameters(zoo.VGG11(batch_norm=True, activation="elu"))
        == convs + batch_norm + fc
    )
    assert zoo.count_parameters(zoo.VGG11(batch_norm=False)) == convs + fc


def test_deepobs_parameter_counts_by_hand():
    two = conv(1, 32, 5) + conv(32, 64, 5) + dense(7 * 7 * 64, 1024) + dense(1024, 10)
    assert two == 3_274_634  # DeepOBS fmnist_2c2d
    assert zoo.count_parameters(zoo.DeepOBS2c2d()) == two
    three = (
        conv(3, 64, 5) + conv(64, 96, 3) + conv(96, 128, 3)
        + dense(3 * 3 * 128, 512) + dense(512, 256) + dense(256, 10)
    )  # fmt: skip
    assert three == 895_210  # DeepOBS cifar10_3c3d
    assert zoo.count_parameters(zoo.DeepOBS3c3d()) == three


def test_autoencoder_and_mlp_parameter_counts_by_hand():
    enc = [784, 1000, 500, 250, 30]
    layers = list(zip(enc[:-1], enc[1:], strict=True))
    expected = sum(dense(a, b) + dense(b, a) for a, b in layers)
    assert zoo.count_parameters(zoo.Autoencoder(enc)) == expected
    assert zoo.count_parameters(zoo.MLP((784, 300, 10))) == dense(784, 300) + dense(300, 10)
    assert zoo.count_parameters(zoo.MLP((784, 300, 100, 10))) == (
        dense(784, 300) + dense(300, 100) + dense(100, 10)
    )
    assert zoo.count_parameters(zoo.DigitsCNN()) == conv(1, 8, 3) + conv(8, 16, 3) + dense(64, 10)


# ------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("factory", "shape", "out"),
    [
        (lambda: zoo.LeNet5("sigmoid"), (2, 1, 28, 28), (2, 10)),
        (zoo.Cifar10CNN, (2, 3, 32, 32), (2, 10)),
        (zoo.VGG11, (2, 3, 32, 32), (2, 10)),
        (zoo.DeepOBS2c2d, (2, 1, 28, 28), (2, 10)),
        (zoo.DeepOBS3c3d, (2, 3, 32, 32), (2, 10)),
        (lambda: zoo.Autoencoder((784, 1000, 500, 250, 30)), (2, 1, 28, 28), (2, 784)),
        (zoo.DigitsCNN, (2, 1, 8, 8), (2, 10)),
        (lambda: zoo.LogisticRegression(30), (2, 30), (2,)),
    ],
)
def test_output_shapes(factory, shape, out):
    model = zoo.seeded(factory, 0)
    with torch.no_grad():
        assert model(torch.rand(shape)).shape == out


def test_same_maxpool_matches_tensorflow_padding_after_relu():
    x = torch.relu(torch.randn(2, 4, 12, 12))
    ours = zoo._same_maxpool3()(x)
    reference = nn.functional.max_pool2d(
        nn.functional.pad(x, (0, 1, 0, 1), value=float("-inf")), 3, 2
    )
    assert ours.shape == (2, 4, 6, 6)
    torch.testing.assert_close(ours, reference)


def test_mlp_uses_activation_between_layers_only():
    model = zoo.MLP((3, 4, 2), "tanh")
    with torch.no_grad():
        x = torch.randn(5, 3)
        w1, b1, w2, b2 = (p for p in model.parameters())
        torch.testing.assert_close(model(x), torch.tanh(x @ w1.T + b1) @ w2.T + b2)


# ---------------------------------------------------------------------- penalties


def test_l2_penalized_appends_half_weight_times_squared_weights():
    inner = zoo.MLP((3, 4, 2))
    model = zoo.L2Penalized(inner, 0.3)
    x = torch.randn(6, 3)
    with torch.no_grad():
        out = model(x)
        weights = sum((p**2).sum() for n, p in inner.named_parameters() if n.endswith("weight"))
        assert out.shape == (6, 3)
        torch.testing.assert_close(out[:, :2], inner(x))
        torch.testing.assert_close(out[:, 2], torch.full((6,), 0.15 * weights.item()))
        with_bias = zoo.L2Penalized(inner, 0.3, include_bias=True)(x)[0, 2]
        every = sum((p**2).sum() for p in inner.parameters())
        assert with_bias.item() == pytest.approx(0.15 * every.item(), rel=1e-6)
    head, penalty = zoo.split_penalty(out)
    assert head.shape == (6, 2) and penalty.shape == (6,)


def test_l2_penalized_gradient_is_weight_times_w():
    inner = zoo.LogisticRegression(4)
    model = zoo.L2Penalized(inner, 0.5)
    penalty = model(torch.zeros(3, 4))[:, -1].mean()
    grad_w, grad_b = torch.autograd.grad(penalty, [inner.linear.weight, inner.linear.bias])
    torch.testing.assert_close(grad_w, 0.5 * inner.linear.weight)
    torch.testing.assert_close(grad_b, torch.zeros_like(grad_b))


# ----------------------------------------------------------------- deterministic models


def test_rosenbrock_values_and_parameters():
    model = zoo.Rosenbrock((-1.2, 1.0))
    assert model(torch.zeros(3, 1)).tolist() == pytest.approx([24.2] * 3)
    assert zoo.Rosenbrock((1.0, 1.0))(torch.zeros(1, 1)).item() == 0.0
    seed003 = zoo.Rosenbrock((0.0, 0.0), a=1.0, b=50.0)  # [Veitch] Fig. 1
    assert seed003(torch.zeros(1, 1)).item() == 1.0
    assert zoo.Rosenbrock((2.0, 4.0), a=2.0, b=50.0)(torch.zeros(1, 1)).item() == 0.0


def test_quadratic_buffers_follow_dtype_and_validate():
    h = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    model = zoo.Quadratic(h, torch.tensor([1.0, -1.0]), torch.tensor([0.0, 0.0])).double()
    assert model.hessian.dtype == torch.float64
    value = model(torch.zeros(1, 1)).item()
    assert value == pytest.approx(0.5 * (2.0 - 1.0 + 1.0))  # r = (-1, 1): r^T H r = 2 - 1 + 1
    with pytest.raises(ValueError, match="Invalid Quadratic hessian: it is not symmetric"):
        zoo.Quadratic(torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.zeros(2), torch.zeros(2))
    with pytest.raises(
        ValueError, match=r"Invalid Quadratic shapes: hessian \(2, 2\), minimizer \(3,\)"
    ):
        zoo.Quadratic(torch.eye(2), torch.zeros(3), torch.zeros(3))


# -------------------------------------------------------------------- validation


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"Invalid activation: 'swish'"):
        zoo.MLP((3, 2), "swish")
    with pytest.raises(ValueError, match=r"Invalid MLP sizes: \(3,\)"):
        zoo.MLP((3,))
    with pytest.raises(ValueError, match=r"Invalid MLP sizes: \(3, 0\)"):
        zoo.MLP((3, 0))
    with pytest.raises(ValueError, match=r"Invalid Autoencoder sizes: \(784,\)"):
        zoo.Autoencoder((784,))
    with pytest.raises(ValueError, match="Invalid LeNet5 image_size: 20"):
        zoo.LeNet5(image_size=20)
    with pytest.raises(ValueError, match="Invalid L2 weight: -0.1"):
        zoo.L2Penalized(nn.Linear(2, 1), -0.1)
    with pytest.raises(ValueError, match="Invalid L2 weight: nan"):
        zoo.L2Penalized(nn.Linear(2, 1), float("nan"))
    with pytest.raises(ValueError, match="Invalid seed: -3"):
        zoo.seeded(zoo.DigitsCNN, -3)
    with pytest.raises(ValueError, match=r"Invalid Rosenbrock init: \(1.0, 2.0, 3.0\)"):
        zoo.Rosenbrock((1.0, 2.0, 3.0))


def test_seeded_is_deterministic_and_restores_global_rng():
    torch.manual_seed(99)
    expected_next = torch.rand(3)
    torch.manual_seed(99)
    a = zoo.seeded(zoo.Cifar10CNN, 7)
    b = zoo.seeded(zoo.Cifar10CNN, 7)
    assert torch.equal(torch.rand(3), expected_next)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_l2_penalty_is_the_same_under_functional_call_with_plain_tensors():
    import torch
    from torch import nn

    from secondorder.bench.models import L2Penalized, split_penalty

    torch.manual_seed(0)
    model = L2Penalized(nn.Linear(3, 2), weight=0.5)
    x = torch.randn(4, 3)
    expected = 0.25 * float((model.model.weight.detach() ** 2).sum())
    _, pen = split_penalty(model(x))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}  # no requires_grad
    _, pen_functional = split_penalty(torch.func.functional_call(model, params, (x,)))
    assert abs(float(pen[0]) - expected) < 1e-6
    assert abs(float(pen_functional[0]) - expected) < 1e-6
    assert float(split_penalty(L2Penalized(nn.Linear(3, 2), 0.5, include_bias=False)(x))[1][0]) > 0

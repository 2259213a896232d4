"""The benchmark's model zoo.

Every model here is a plain :class:`torch.nn.Module` built from standard layers, so the
curvature tools (autograd, forward-mode and complex-step Hessian-vector products) see
nothing unusual. :func:`seeded` builds any of them deterministically from a seed without
touching the global random state.

Architectures and where they come from:

- :class:`MLP`: fully connected net; [Veitch] sec. 3.2 eqs. 19-22 (sigmoid hidden layers,
  softmax output folded into the cross-entropy loss).
- :class:`SoftmaxRegression`, :class:`LogisticRegression`: [Veitch] eqs. 15-16 and the
  multi-class LR / SVM tests of [Shen] (Fig. 3).
- :class:`LeNet5`: [Shen], "two sets of convolutional layers and average pooling layers,
  followed by a flattening layer and three FC layers, activated by sigmoid functions"
  ([LeCun1998]: 6 and 16 5x5 filters, 120-84-10 units).
- :class:`Autoencoder`: [Shen]'s deep autoencoder, encoder 784-1000-500-250-30, decoder
  mirrored ([HintonSalakhutdinov2006]: logistic hidden units, linear code layer).
- :class:`Cifar10CNN`: [Filippova] sec. 4, "a CNN which consists of two convolutional layers
  and two linear layers". The seed gives no widths; we use the PyTorch CIFAR-10 tutorial
  net with its middle linear layer removed: conv 3-6 5x5, max-pool 2, conv 6-16 5x5,
  max-pool 2, linear 400-120, linear 120-10, ReLU.
- :class:`VGG11`: [Shen], 64C3-MP2-128C3-MP2-2x256C3-MP2-2x512C3-MP2-2x512C3-MP2-2x512FC-10FC,
  ELU activations, batch normalization before each activation of the convolutions.
- :class:`DeepOBS2c2d`, :class:`DeepOBS3c3d`: the DeepOBS test problems ``fmnist_2c2d`` and
  ``cifar10_3c3d`` ([Schneider2019], sec. 3 and App. A); TensorFlow "same"
  max-pooling is reproduced with a right/bottom zero pad, exact after a ReLU.
- :class:`Rosenbrock`, :class:`Quadratic`: deterministic objectives in the benchmark's
  model shape (see :mod:`secondorder.bench.problems`): the parameter is the variable and
  ``forward`` maps a dummy batch of ``n`` rows to ``n`` copies of the objective value.
- :class:`L2Penalized`: appends the L2 penalty of a model's weights as an extra output
  column so that a per-sample loss can include regularization (the benchmark's loss sees
  only outputs and targets).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "make_activation",
    "seeded",
    "count_parameters",
    "MLP",
    "SoftmaxRegression",
    "LogisticRegression",
    "L2Penalized",
    "split_penalty",
    "LeNet5",
    "Autoencoder",
    "Cifar10CNN",
    "DigitsCNN",
    "VGG11",
    "DeepOBS2c2d",
    "DeepOBS3c3d",
    "Rosenbrock",
    "Quadratic",
]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module by name (one of :data:`ACTIVATIONS`).

    Raises:
        ValueError: if ``name`` is not a known activation.
    """
    if name not in ACTIVATIONS:
        raise ValueError(f"Invalid activation: {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def seeded(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build ``factory()`` with torch's CPU generator seeded by ``seed``, in float32.

    The global random state is saved and restored, so building a model does not change
    the random numbers seen by the caller.

    Raises:
        ValueError: if ``seed`` is not a non-negative integer.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"Invalid seed: {seed!r}; expected a non-negative int")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    return model.float()


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class MLP(nn.Sequential):
    """Fully connected network ``sizes[0] -> ... -> sizes[-1]`` ([Veitch] eqs. 19-20).

    Inputs are flattened; ``activation`` follows every layer but the last, whose output is
    the logits (the softmax of [Veitch] eq. 22 lives in the cross-entropy loss).

    Args:
        sizes: layer widths including input and output, at least two entries.
        activation: name of the hidden activation (see :data:`ACTIVATIONS`).

    Raises:
        ValueError: if ``sizes`` has fewer than two entries or a non-positive width.
    """

    def __init__(self, sizes: Sequence[int], activation: str = "sigmoid") -> None:
        sizes = tuple(sizes)
        if len(sizes) < 2 or any(int(s) != s or s < 1 for s in sizes):
            raise ValueError(f"Invalid MLP sizes: {sizes}; expected >= 2 positive widths")
        make_activation(activation)  # validate the name before building
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(make_activation(activation))
        super().__init__(*layers)
        self.sizes = sizes


class SoftmaxRegression(nn.Sequential):
    """Multinomial logistic regression: flatten, then one linear layer to the logits."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__(nn.Flatten(), nn.Linear(in_features, num_classes))


class LogisticRegression(nn.Module):
    """Binary logistic regression ``x -> x^T theta + b`` ([Veitch] eq. 16, before the sigmoid).

    Returns one logit per sample, shape ``(n,)``; the same linear model serves the squared
    hinge SVM of [Shen] (Fig. 3).
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 1)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.linear(inputs.flatten(1)).squeeze(-1)


class L2Penalized(nn.Module):
    """Wrap a model so its output carries ``weight / 2 * ||W||^2`` as a last column.

    The output is ``cat([model(x).reshape(n, -1), penalty.expand(n, 1)], dim=1)``;
    :func:`split_penalty` undoes it. A per-sample loss that adds the penalty column to each
    sample's data loss has mean ``mean data loss + weight / 2 * ||W||^2``, the regularized
    objective. The penalty uses ``w * w`` (not ``abs``) so it stays holomorphic for the
    complex-step derivative of [Shen].

    Args:
        model: the wrapped model.
        weight: the L2 coefficient ``lambda >= 0``.
        include_bias: whether one-dimensional parameters (biases, batch-norm affine
            parameters) are penalized too; by default only weight matrices and filters are.

    Raises:
        ValueError: if ``weight`` is negative or not finite.
    """

    def __init__(self, model: nn.Module, weight: float, *, include_bias: bool = False) -> None:
        super().__init__()
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"Invalid L2 weight: {weight}; expected a finite value >= 0")
        self.model = model
        self.weight = float(weight)
        self.include_bias = include_bias

    def penalty(self) -> Tensor:
        """``weight / 2`` times the sum of squares of the penalized parameters (0-dim)."""
        # Chosen by shape, not by requires_grad: under torch.func.functional_call the
        # parameters may be plain tensors (or complex ones), and the penalty must not change.
        terms = [
            (p * p).sum()
            for p in self.model.parameters()
            if self.include_bias or p.dim() > 1
        ]
        if not terms:
            return torch.zeros(())
        return 0.5 * self.weight * torch.stack(terms).sum()

    def forward(self, inputs: Tensor) -> Tensor:
        out = self.model(inputs)
        out = out.reshape(out.shape[0], -1)
        return torch.cat([out, self.penalty().expand(out.shape[0], 1).to(out.dtype)], dim=1)


def split_penalty(outputs: Tensor) -> tuple[Tensor, Tensor]:
    """Split an :class:`L2Penalized` output into ``(model outputs (n, k), penalty (n,))``."""
    return outputs[:, :-1], outputs[:, -1]


class LeNet5(nn.Sequential):
    """LeNet-5 ([LeCun1998] as used by [Shen]: conv-pool-conv-pool-FC-FC-FC.

    ``conv(c, 6, 5) -> act -> avgpool 2 -> conv(6, 16, 5) -> act -> avgpool 2 -> flatten ->
    400 -> 120 -> act -> 84 -> act -> num_classes``. Images smaller than 32 x 32 are
    zero-padded in the first convolution (padding 2 for MNIST's 28 x 28), as in the
    original, so the flattened size is always 16 * 5 * 5 = 400.

    Args:
        activation: activation after every layer but the last ([Shen]: sigmoid).
        in_channels: image channels (1 for MNIST, 3 for CIFAR-10).
        image_size: side of the square input, between 28 and 32.
        num_classes: number of output logits.

    Raises:
        ValueError: if ``image_size`` is outside 28..32 or its padding would be fractional.
    """

    def __init__(
        self,
        activation: str = "sigmoid",
        *,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
    ) -> None:
        if image_size not in (28, 30, 32):
            raise ValueError(f"Invalid LeNet5 image_size: {image_size}; expected 28, 30 or 32")
        act = activation
        make_activation(act)
        super().__init__(
            nn.Conv2d(in_channels, 6, 5, padding=(32 - image_size) // 2),
            make_activation(act),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5),
            make_activation(act),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            make_activation(act),
            nn.Linear(120, 84),
            make_activation(act),
            nn.Linear(84, num_classes),
        )


class Autoencoder(nn.Module):
    """Deep autoencoder: encoder ``sizes``, mirrored decoder ([Shen], [Martens2010]).

    ``sizes = (784, 1000, 500, 250, 30)`` gives 784-1000-500-250-30-250-500-1000-784.
    Hidden layers use ``activation``, the code layer is linear, the output layer uses
    ``output_activation`` (sigmoid keeps reconstructions of [0, 1] pixels in range). Inputs
    are flattened; the output has shape ``(n, sizes[0])``.

    Raises:
        ValueError: if ``sizes`` has fewer than two entries or a non-positive width.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "sigmoid",
        output_activation: str = "sigmoid",
    ) -> None:
        super().__init__()
        sizes = tuple(sizes)
        if len(sizes) < 2 or any(int(s) != s or s < 1 for s in sizes):
            raise ValueError(f"Invalid Autoencoder sizes: {sizes}; expected >= 2 positive widths")
        make_activation(activation)
        make_activation(output_activation)
        enc: list[nn.Module] = [nn.Flatten()]
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            enc.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                enc.append(make_activation(activation))
        back = sizes[::-1]
        dec: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(back[:-1], back[1:], strict=True)):
            dec.append(nn.Linear(a, b))
            last = i == len(back) - 2
            dec.append(make_activation(output_activation if last else activation))
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        self.sizes = sizes

    def forward(self, inputs: Tensor) -> Tensor:
        return self.decoder(self.encoder(inputs))


class Cifar10CNN(nn.Sequential):
    """[Filippova]'s CIFAR-10 CNN: two convolutional and two linear layers, ReLU.

    conv 3-6 5x5 -> ReLU -> maxpool 2 -> conv 6-16 5x5 -> ReLU -> maxpool 2 -> flatten 400
    -> linear 120 -> ReLU -> linear 10 (widths from the PyTorch CIFAR-10 tutorial; the
    seed does not state them).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(
            nn.Conv2d(3, 6, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, num_classes),
        )


class DigitsCNN(nn.Sequential):
    """A small CNN for scikit-learn's 8 x 8 digits (the benchmark's embedded CNN).

    conv 1-8 3x3 same -> tanh -> maxpool 2 -> conv 8-16 3x3 same -> tanh -> maxpool 2 ->
    flatten 64 -> linear 10: 1,898 parameters, small enough for exact curvature checks.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.Tanh(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.Tanh(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 2 * 2, num_classes),
        )


VGG11_CONFIG: tuple[int | str, ...] = (
    64,
    "M",
    128,
    "M",
    256,
    256,
    "M",
    512,
    512,
    "M",
    512,
    512,
    "M",
)


class VGG11(nn.Module):
    """VGG-11 for 32 x 32 images as in [Shen] ([SimonyanZisserman2014], config A).

    Eight 3x3 convolutions (64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M) each
    followed by batch normalization (if ``batch_norm``) and the activation, then
    ``512 -> 512 -> 512 -> num_classes`` fully connected with the activation between.

    Args:
        batch_norm: batch normalization before each convolution's activation ([Shen]).
        activation: activation name ([Shen]: ELU).
        in_channels: image channels.
        num_classes: number of output logits.
    """

    def __init__(
        self,
        batch_norm: bool = True,
        activation: str = "elu",
        *,
        in_channels: int = 3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        make_activation(activation)
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG11_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers.append(nn.Conv2d(channels, int(item), 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(item)))
            layers.append(make_activation(activation))
            channels = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(512, 512),
            make_activation(activation),
            nn.Linear(512, 512),
            make_activation(activation),
            nn.Linear(512, num_classes),
        )

    def forward(self, inputs: Tensor) -> Tensor:
        return self.classifier(self.features(inputs))


class DeepOBS2c2d(nn.Sequential):
    """DeepOBS ``2c2d`` (used by ``fmnist_2c2d``): 3,274,634 parameters for 28 x 28 x 1.

    conv 32 5x5 same -> ReLU -> maxpool 2 -> conv 64 5x5 same -> ReLU -> maxpool 2 ->
    flatten 3136 -> 1024 -> ReLU -> num_classes.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(7 * 7 * 64, 1024),
            nn.ReLU(),
            nn.Linear(1024, num_classes),
        )


def _same_maxpool3() -> nn.Sequential:
    # TensorFlow "same" 3x3/2 max-pool on even sides pads one row/column at the end; after
    # a ReLU the inputs are >= 0, so a zero pad gives the same maximum as -inf padding.
    return nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(3, 2))


class DeepOBS3c3d(nn.Sequential):
    """DeepOBS ``3c3d`` (used by ``cifar10_3c3d``): 895,210 parameters for 32 x 32 x 3.

    conv 64 5x5 valid -> ReLU -> maxpool 3/2 same -> conv 96 3x3 valid -> ReLU -> maxpool
    3/2 same -> conv 128 3x3 same -> ReLU -> maxpool 3/2 same -> flatten 1152 -> 512 ->
    ReLU -> 256 -> ReLU -> num_classes. (DeepOBS adds an L2 penalty of 0.002: see
    :class:`L2Penalized`.)
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 64, 5),
            nn.ReLU(),
            _same_maxpool3(),
            nn.Conv2d(64, 96, 3),
            nn.ReLU(),
            _same_maxpool3(),
            nn.Conv2d(96, 128, 3, padding=1),
            nn.ReLU(),
            _same_maxpool3(),
            nn.Flatten(),
            nn.Linear(3 * 3 * 128, 512),
            nn.ReLU(),
            nn.Linear(512, 256),
            nn.ReLU(),
            nn.Linear(256, num_classes),
        )


class Rosenbrock(nn.Module):
    """Rosenbrock function ``(a - x)^2 + b (y - x^2)^2`` ([Veitch] eq. 6) as a model.

    The parameter ``xy`` (shape ``(2,)``) is the variable; ``forward(inputs)`` ignores the
    values of ``inputs`` and returns the objective repeated ``inputs.shape[0]`` times. The
    unique minimizer is ``(a, a^2)`` with value 0.

    Args:
        init: the starting point ``(x, y)``.
        a: the ``a`` of eq. 6.
        b: the ``b`` of eq. 6 ([Veitch] Fig. 1 uses 50; the classic value is 100).
    """

    def __init__(self, init: Sequence[float] = (-1.2, 1.0), a: float = 1.0, b: float = 100.0):
        super().__init__()
        self.xy = nn.Parameter(torch.tensor([float(v) for v in init]))
        if self.xy.shape != (2,):
            raise ValueError(f"Invalid Rosenbrock init: {tuple(init)}; expected two numbers")
        self.a = float(a)
        self.b = float(b)

    def forward(self, inputs: Tensor) -> Tensor:
        x, y = self.xy[0], self.xy[1]
        value = (self.a - x) ** 2 + self.b * (y - x * x) ** 2
        return value.expand(inputs.shape[0])


class Quadratic(nn.Module):
    """Quadratic ``f(w) = 1/2 (w - w*)^T H (w - w*)`` as a model ([AdaptiveNorms] Fig. 1).

    ``H`` (symmetric positive definite) and ``w*`` are buffers, so they follow the model
    to any device; the parameter ``w`` is the variable. ``forward(inputs)`` returns
    ``f(w)`` repeated ``inputs.shape[0]`` times; the minimum is 0 at ``w*``.

    Raises:
        ValueError: if the shapes of ``hessian``, ``minimizer`` and ``init`` disagree or
            ``hessian`` is not symmetric.
    """

    def __init__(self, hessian: Tensor, minimizer: Tensor, init: Tensor) -> None:
        super().__init__()
        d = minimizer.numel()
        if hessian.shape != (d, d) or init.numel() != d:
            raise ValueError(
                f"Invalid Quadratic shapes: hessian {tuple(hessian.shape)}, minimizer "
                f"{tuple(minimizer.shape)}, init {tuple(init.shape)}"
            )
        if not torch.allclose(hessian, hessian.T):
            raise ValueError("Invalid Quadratic hessian: it is not symmetric")
        self.register_buffer("hessian", hessian.detach().clone().float())
        self.register_buffer("minimizer", minimizer.detach().reshape(d).clone().float())
        self.w = nn.Parameter(init.detach().reshape(d).clone().float())

    def forward(self, inputs: Tensor) -> Tensor:
        r = self.w - self.minimizer.to(self.w.dtype)
        value = 0.5 * (r @ (self.hessian.to(self.w.dtype) @ r))
        return value.expand(inputs.shape[0])

"""[Veitch]'s sampled objective (eq. 28): the loss averaged over R mini-batches.

``L_sub = (1/R) sum_r L(X^{B_r}, y^{B_r})`` with each batch ``B_r`` drawn without
replacement. [Veitch] compares two regimes: batches **fixed** throughout training (a
deterministic objective, so L-BFGS and NLCG line searches keep their assumptions), and
batches **reshuffled at every iteration** (a noisy objective on which "the NLCG and BFGS
solvers terminated quickly", sec. 4.1). :class:`SampledObjective` builds either closure so
the two can be compared with the same optimizer.

An iteration is one optimizer step: every closure call inside it (the line-search trials
included) sees the same batches, so each step minimizes one well-defined eq. 28 objective
and only the next step sees new batches. Drive the iterations with
:meth:`SampledObjective.step` (or call :meth:`SampledObjective.next_iteration` before each
``optimizer.step``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["SAMPLING_MODES", "SampledObjective"]

SAMPLING_MODES = ("fixed", "reshuffled")


class SampledObjective:
    """A closure computing [Veitch] eq. 28 over fixed or reshuffled batches.

    Batches are consecutive slices of random permutations of the ``m`` samples (a new
    permutation starts when one is used up), so with ``R = ceil(m / batch_size)`` the fixed
    batches cover the data once, as in [Veitch].

    Args:
        model: maps inputs to outputs.
        loss: ``loss(outputs, targets)``, per-sample (a 1-D tensor, e.g.
            ``reduction="none"``) or a mean over the samples; all ``R`` batches share one
            forward (the batches have equal sizes, so the mean of their means is the mean).
        data: ``(inputs, targets)`` with the samples along dimension 0.
        batch_size: samples per batch ``m_b``.
        num_batches: ``R`` (``None``: ``ceil(m / batch_size)``).
        mode: ``"fixed"`` (draw once) or ``"reshuffled"`` (draw again at every iteration,
            :meth:`next_iteration`).
        generator: random generator for the batches.
        per_sample: make the closure return the per-sample losses of all batches (their
            mean is eq. 28) instead of the scalar; needs a per-sample ``loss``.

    Example:
        >>> import torch
        >>> X, y = torch.randn(10, 3), torch.randn(10)
        >>> model = torch.nn.Linear(3, 1)
        >>> mse = lambda out, t: (out.squeeze(-1) - t) ** 2
        >>> obj = SampledObjective(model, mse, (X, y), batch_size=5)
        >>> bool(torch.allclose(obj(), mse(model(X), y).mean()))
        True
    """

    def __init__(
        self,
        model: nn.Module | Callable[[Tensor], Tensor],
        loss: Callable[[Tensor, Tensor], Tensor],
        data: tuple[Tensor, Tensor],
        batch_size: int,
        num_batches: int | None = None,
        mode: str = "fixed",
        generator: torch.Generator | None = None,
        per_sample: bool = False,
    ):
        if not (isinstance(data, tuple | list) and len(data) == 2):
            raise ValueError("Invalid data: expected a pair (inputs, targets)")
        inputs, targets = data
        m = inputs.shape[0]
        if targets.shape[0] != m:
            raise ValueError(
                f"Invalid data: {m} inputs but {targets.shape[0]} targets along dimension 0"
            )
        if not (isinstance(batch_size, int) and 1 <= batch_size <= m):
            raise ValueError(f"Invalid batch_size: {batch_size} (need an int in [1, {m}])")
        if num_batches is None:
            num_batches = math.ceil(m / batch_size)
        if not (isinstance(num_batches, int) and num_batches >= 1):
            raise ValueError(f"Invalid num_batches: {num_batches} (need an int >= 1)")
        if mode not in SAMPLING_MODES:
            raise ValueError(f"Invalid mode: {mode!r} (choose from {SAMPLING_MODES})")
        self.model = model
        self.loss = loss
        self.inputs, self.targets = inputs, targets
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.mode = mode
        self.generator = generator
        self.per_sample = per_sample
        self.evaluations = 0
        self.iterations = 0
        self.batches = self.draw()

    @property
    def num_samples(self) -> int:
        """Samples touched per evaluation, ``R * m_b``."""
        return self.num_batches * self.batch_size

    def draw(self) -> list[Tensor]:
        """Draw ``R`` batches of indices (each without replacement)."""
        m = self.inputs.shape[0]
        need = self.num_batches * self.batch_size
        chunks, total = [], 0
        while total < need:
            n_full = (m // self.batch_size) * self.batch_size  # whole batches per permutation
            perm = torch.randperm(m, generator=self.generator)[:n_full]
            chunks.append(perm)
            total += n_full
        idx = torch.cat(chunks)[:need].to(self.inputs.device)
        return list(idx.view(self.num_batches, self.batch_size))

    def next_iteration(self) -> None:
        """Start an optimizer iteration: in ``"reshuffled"`` mode every iteration after the
        first draws new batches; ``"fixed"`` batches never change."""
        if self.mode == "reshuffled" and self.iterations > 0:
            self.batches = self.draw()
        self.iterations += 1

    def step(self, optimizer: torch.optim.Optimizer, **step_kwargs) -> Tensor:
        """One iteration: :meth:`next_iteration`, then ``optimizer.step(self, **step_kwargs)``.

        Returns:
            What ``optimizer.step`` returns (the loss before the step).
        """
        self.next_iteration()
        return optimizer.step(self, **step_kwargs)

    def __call__(self) -> Tensor:
        """Eq. 28 at the model's current parameters on this iteration's batches."""
        self.evaluations += 1
        idx = torch.cat(self.batches)
        out = self.loss(self.model(self.inputs[idx]), self.targets[idx])
        if out.dim() == 1 and out.numel() == idx.numel():
            return out if self.per_sample else out.mean()
        if self.per_sample:
            raise ValueError("per_sample=True needs a loss that returns per-sample losses")
        return out.reshape(())  # a mean over equal-size batches is the mean of their means

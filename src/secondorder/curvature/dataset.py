"""Curvature of the loss over a whole data set, one batch at a time.

The full-data objective is the mean loss over all ``N`` samples. With a criterion that
averages over its batch (``reduction="mean"``, the torch default), batch ``b`` of size
``n_b`` contributes ``(n_b / N) * L_b``, so any linear quantity of the loss (value,
gradient, Hessian-vector product) is the batch-size-weighted mean of the per-batch ones,
uneven last batch included. :func:`batch_mean` is the one loop over the data (after
curvlinops): it moves each batch to the parameters' device and applies the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from secondorder import tensorlist as tl
from secondorder.curvature.functional import LossFunction, functional_loss
from secondorder.curvature.hvp import gradient, hvp
from secondorder.curvature.operators import CurvatureOperator
from secondorder.errors import DataFormatError

__all__ = ["batch_mean", "DatasetHessianOperator"]

Criterion = Callable[[Tensor, Tensor], Tensor]


def _split_batch(batch, index: int) -> tuple[Tensor, Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, targets = batch
        if isinstance(inputs, Tensor) and isinstance(targets, Tensor):
            return inputs, targets
    raise DataFormatError(
        f"batch {index} is a {type(batch).__name__}; expected an (inputs, targets) pair of "
        "tensors"
    )


def batch_mean(
    loader: Iterable,
    fn: Callable[[Tensor, Tensor], Sequence[Tensor]],
    *,
    device: torch.device | str | None = None,
) -> tuple[Tensor, ...]:
    """``sum_b n_b fn(x_b, y_b) / sum_b n_b`` over the ``(inputs, targets)`` batches.

    Each batch is moved to ``device`` before ``fn`` sees it; ``n_b`` is the batch's first
    dimension. Only one batch's results (and whatever graph ``fn`` keeps alive) exist at a
    time, so memory does not grow with the number of batches.

    Args:
        loader: an iterable of ``(inputs, targets)`` tensor pairs (a ``DataLoader``).
        fn: the per-batch quantity, a tuple of tensors (e.g. ``(loss, *grads)``).
        device: where to move each batch (default: leave it where it is).

    Returns:
        The weighted mean, a tuple of tensors.

    Raises:
        DataFormatError: a batch that is not an ``(inputs, targets)`` pair of tensors, or
            an empty loader.
    """
    total: tuple[Tensor, ...] | None = None
    count = 0
    for index, batch in enumerate(loader):
        inputs, targets = _split_batch(batch, index)
        if device is not None:
            inputs, targets = inputs.to(device), targets.to(device)
        n_b = inputs.shape[0]
        values = tuple(t.detach() for t in fn(inputs, targets))
        total = tl.scale(values, n_b) if total is None else tl.axpy(n_b, values, total)
        count += n_b
    if total is None or count == 0:
        raise DataFormatError("the data loader yielded no samples")
    return tl.scale(total, 1.0 / count)


class DatasetHessianOperator(CurvatureOperator):
    """Hessian of the mean loss over a whole data loader, at the model's current parameters.

    Each product loops over the loader with :func:`batch_mean`; per batch it builds the
    loss graph, takes one Hessian-vector product (Pearlmutter's double backward) and frees
    the graph, so memory stays that of one batch. A product therefore costs one pass over
    the data (forward + two backwards per batch). The loader must yield the same batches
    every pass (no shuffling) for the operator to be a fixed matrix.

    The criterion must average over its batch (``reduction="mean"``).

    Args:
        model: the network; its trainable parameters (or ``params``) are the variables.
        criterion: loss of ``(outputs, targets)``, mean over the batch.
        loader: an iterable of ``(inputs, targets)`` pairs, re-iterable.
        params: which of the model's parameters to use (default: all requiring grad).

    Raises:
        ValueError: if the model has no trainable parameter.

    Example:
        >>> model = nn.Linear(2, 1, bias=False).double()
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
        >>> data = [(x[:2], torch.zeros(2, 1, dtype=torch.float64)),
        ...         (x[2:], torch.zeros(1, 1, dtype=torch.float64))]
        >>> DatasetHessianOperator(model, nn.MSELoss(), data).to_dense()  # 2 X^T X / 3
        tensor([[1.3333, 0.6667],
                [0.6667, 3.3333]], dtype=torch.float64)
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: Criterion,
        loader: Iterable,
        *,
        params: Sequence[Tensor] | None = None,
    ):
        self.model = model
        self.criterion = criterion
        self.loader = loader
        # functional_loss validates the model and selects the parameters once.
        _, selected = self._batch_loss(None, None, params)
        super().__init__(selected)

    def _batch_loss(self, inputs, targets, params=None) -> tuple[LossFunction, tuple]:
        chosen = params if params is not None else getattr(self, "params", None)
        return functional_loss(self.model, self.criterion, inputs, targets, params=chosen)

    @property
    def _device(self) -> torch.device:
        return self.params[0].device

    def _matvec(self, vec: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        def batch_hvp(inputs: Tensor, targets: Tensor) -> tuple[Tensor, ...]:
            loss_fn, params = self._batch_loss(inputs, targets)
            return hvp(loss_fn, params, vec)

        return batch_mean(self.loader, batch_hvp, device=self._device)

    def loss_and_gradient(self) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Full-data mean loss and its gradient (one pass, no graph kept).

        Returns:
            ``(loss, grads)``: a 0-dim tensor and a tuple shaped like the parameters.
        """

        def batch_grad(inputs: Tensor, targets: Tensor) -> tuple[Tensor, ...]:
            loss_fn, params = self._batch_loss(inputs, targets)
            loss, grads = gradient(loss_fn, params)
            return (loss, *grads)

        loss, *grads = batch_mean(self.loader, batch_grad, device=self._device)
        return loss, tuple(grads)

"""Per-layer Hessians of an MLP by Hessian back-propagation ([Veitch], Appendix B).

For ``nn.Sequential(Linear, act, Linear, act, ..., Linear)`` with ``act`` sigmoid or tanh
and softmax cross-entropy averaged over the batch of ``m`` samples ([Veitch] eqs. 19-22),
the Hessian of the loss with respect to the pre-activations of the output layer is, per
sample ``i`` ([Veitch] eq. 83, ``p = softmax(z)``)::

    H_Z^[L](i) = (diag(p_i) - p_i p_i^T) / m

and it is back-propagated layer by layer (eqs. 66-67 = 81-82)::

    H_X^[l-1](i) = W^[l]T H_Z^[l](i) W^[l]
    H_Z^[l-1](i) = s'_i H_X^[l-1](i) s'_i^T  (entrywise)  + diag(s''_i * dL/dX^[l-1](i))

with ``s' = sigma'(Z^[l-1])``, ``s'' = sigma''(Z^[l-1])`` and ``dL/dX^[l-1]`` from ordinary
back-propagation (eqs. 23-27). The Hessian block of layer ``l`` then follows from the layer
input ``x = X^[l-1](i)`` (eqs. 68-70, written with Kronecker products in eqs. 78-80)::

    H_W[(j,k),(j',k')] = sum_i H_Z(i)[j,j'] x_k x_k'
    H_Wb[(j,k), j']    = sum_i H_Z(i)[j,j'] x_k
    H_b[j, j']         = sum_i H_Z(i)[j,j']

These are the diagonal blocks of the full Hessian (cross-layer blocks are not computed).

Note: [Veitch] eq. 82 writes ``Diag(grad L_X^[l])``; the derivation (eq. 67) has the
gradient with respect to ``X^[l-1]``, which is what is used here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["layer_hessians"]

_ACTIVATIONS = (nn.Sigmoid, nn.Tanh)


def _derivatives(act: nn.Module, z: Tensor) -> tuple[Tensor, Tensor]:
    """``(sigma'(z), sigma''(z))`` for sigmoid and tanh."""
    if isinstance(act, nn.Sigmoid):
        s = torch.sigmoid(z)
        d1 = s * (1 - s)
        return d1, d1 * (1 - 2 * s)
    t = torch.tanh(z)
    d1 = 1 - t * t
    return d1, -2 * t * d1


def _check_architecture(model: nn.Module) -> tuple[list[nn.Linear], list[nn.Module]]:
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            f"layer_hessians supports nn.Sequential MLPs, got {type(model).__name__}"
        )
    modules = list(model)
    linears, acts = modules[0::2], modules[1::2]
    for i, m in enumerate(modules):
        want_linear = i % 2 == 0
        ok = isinstance(m, nn.Linear) if want_linear else isinstance(m, _ACTIVATIONS)
        if not ok:
            want = "nn.Linear" if want_linear else "nn.Sigmoid or nn.Tanh"
            raise ValueError(
                f"layer_hessians supports Linear/(Sigmoid|Tanh)/.../Linear MLPs ending in the "
                f"logits of a softmax cross-entropy; module {i} is {type(m).__name__}, "
                f"expected {want}"
            )
    if len(modules) == 0 or len(modules) % 2 == 0:
        raise ValueError(
            "layer_hessians needs the model to end with an nn.Linear producing the logits"
        )
    for i, lin in enumerate(linears):
        for name, p in lin.named_parameters():
            if not p.requires_grad:
                raise ValueError(f"layer_hessians: layer {i} has a frozen parameter {name!r}")
    return linears, acts


def _one_hot_targets(targets: Tensor, logits: Tensor) -> Tensor:
    m, k = logits.shape
    if targets.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        if targets.shape != (m,):
            raise ValueError(
                f"class-index targets must have shape ({m},), got {tuple(targets.shape)}"
            )
        return torch.nn.functional.one_hot(targets.long(), k).to(logits.dtype)
    if targets.shape != (m, k):
        raise ValueError(
            f"probability targets must have shape ({m}, {k}), got {tuple(targets.shape)}"
        )
    return targets.to(logits.dtype)


def _layer_block(hz: Tensor, x: Tensor, has_bias: bool) -> Tensor:
    """[Veitch] eqs. 68-70: the ``(W, b)`` block from per-sample ``H_Z`` and inputs ``x``."""
    n_out, n_in = hz.shape[1], x.shape[1]
    hw = torch.einsum("iab,ic,id->acbd", hz, x, x).reshape(n_out * n_in, n_out * n_in)
    if not has_bias:
        return hw
    hwb = torch.einsum("iab,ic->acb", hz, x).reshape(n_out * n_in, n_out)
    hb = hz.sum(dim=0)
    return torch.cat([torch.cat([hw, hwb], dim=1), torch.cat([hwb.T, hb], dim=1)], dim=0)


@torch.no_grad()
def layer_hessians(model: nn.Module, inputs: Tensor, targets: Tensor) -> list[Tensor]:
    """Dense per-layer Hessian blocks of the mean softmax cross-entropy ([Veitch] App. B).

    Block ``l`` (one per ``nn.Linear``, in model order, first layer first) is the Hessian
    of ``CrossEntropyLoss()(model(inputs), targets)`` with respect to that layer's
    parameters, in ``model.parameters()`` order flattened: the weight ``W`` of shape
    ``(out, in)`` row-major (entry ``(j, k)`` at index ``j * in + k``), then the bias
    ``(out,)`` when present. It equals the corresponding diagonal block of the full dense
    Hessian. Cost: ``O(m (out * in)^2)`` per layer, no autograd.

    Args:
        model: ``nn.Sequential(Linear, Sigmoid|Tanh, ..., Linear)``; the last layer gives
            the logits.
        inputs: the batch, shape ``(m, in_features)``.
        targets: class indices, shape ``(m,)``, or class probabilities, shape ``(m, K)``.

    Returns:
        A list of square tensors, one per linear layer.

    Raises:
        ValueError: for any other architecture (naming the offending module), frozen
            parameters, or badly shaped inputs/targets.

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        >>> x, y = torch.randn(5, 3).double(), torch.tensor([0, 1, 1, 0, 1])
        >>> blocks = layer_hessians(model, x, y)
        >>> [tuple(b.shape) for b in blocks]
        [(16, 16), (10, 10)]
    """
    linears, acts = _check_architecture(model)
    if inputs.dim() != 2 or inputs.shape[1] != linears[0].in_features:
        raise ValueError(
            f"inputs must have shape (m, {linears[0].in_features}), got {tuple(inputs.shape)}"
        )
    # Forward ([Veitch] eqs. 19-20): keep each layer input X^[l-1] and pre-activation Z.
    xs, zs = [inputs.to(linears[0].weight.dtype)], []
    for i, lin in enumerate(linears):
        z = lin(xs[-1])
        zs.append(z)
        if i < len(acts):
            xs.append(acts[i](z))
    logits = zs[-1]
    m = logits.shape[0]
    y = _one_hot_targets(targets, logits)
    p = torch.softmax(logits, dim=1)
    # Output layer (eqs. 23, 83).
    gz = (p - y) / m
    hz = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]) / m
    blocks = []
    for idx in range(len(linears) - 1, -1, -1):
        lin = linears[idx]
        blocks.append(_layer_block(hz, xs[idx], lin.bias is not None))
        if idx == 0:
            break
        w = lin.weight
        gx = gz @ w  # eq. 26
        hx = torch.einsum("pk,ipq,qr->ikr", w, hz, w)  # eq. 66 / 81
        d1, d2 = _derivatives(acts[idx - 1], zs[idx - 1])
        gz = d1 * gx  # eq. 27
        hz = d1[:, :, None] * hx * d1[:, None, :] + torch.diag_embed(d2 * gx)  # eq. 67 / 82
    return blocks[::-1]

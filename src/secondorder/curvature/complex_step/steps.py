"""Complex dtypes and step sizes ``h`` for the complex step ([Shen] eq. 5, 10, 11)."""

from __future__ import annotations

import math

import torch

__all__ = [
    "COMPLEX_OF",
    "REAL_OF",
    "check_step",
    "complex_dtype",
    "default_step",
    "first_order_step",
]

COMPLEX_OF = {torch.float64: torch.complex128, torch.float32: torch.complex64}
REAL_OF = {torch.complex128: torch.float64, torch.complex64: torch.float32}


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype that carries ``dtype`` parameters (float64 -> complex128, ...).

    Raises:
        ValueError: for a dtype other than float32/float64 (half precision has no usable
            complex arithmetic in PyTorch).
    """
    if dtype in COMPLEX_OF:
        return COMPLEX_OF[dtype]
    if dtype in REAL_OF:
        return dtype
    raise ValueError(
        f"complex step needs float32 or float64 parameters, got {dtype}; "
        "cast the parameters (and the model) to float32 or float64"
    )


def default_step(dtype: torch.dtype, order: int = 1) -> float:
    """Default complex step ``h`` for parameters of ``dtype``.

    The truncation error is ``O(h^2)`` relative and there is no cancellation, so ``h`` is
    limited only by underflow: the perturbation (``h`` for eq. 10, ``h^2`` for the
    bicomplex eq. 11) times small weights and activations must stay a normal number.

    Args:
        dtype: float64/complex128 or float32/complex64.
        order: 1 for eq. 5/10 (one imaginary unit), 2 for the bicomplex eq. 11.

    Returns:
        ``1e-20`` in float64 (both orders); in float32 ``1e-10`` (order 1) and ``1e-8``
        (order 2), measured in ``tests/curvature/test_complex_step.py``.

    Raises:
        ValueError: bad dtype or order.
    """
    if order not in (1, 2):
        raise ValueError(f"Invalid complex-step order: {order}; use 1 or 2")
    cdtype = complex_dtype(dtype)
    if cdtype == torch.complex128:
        return 1e-20
    return 1e-10 if order == 1 else 1e-8


def check_step(h: float | None, dtype: torch.dtype, order: int = 1) -> float:
    """``h`` as a float, or :func:`default_step` when ``None``.

    Raises:
        ValueError: if ``h`` is not positive and finite.
    """
    if h is None:
        return default_step(dtype, order)
    h = float(h)
    if not (h > 0 and math.isfinite(h)):
        raise ValueError(f"Invalid complex step: h={h}; it must be positive and finite")
    return h


#: Margin below ``sqrt(eps)`` for :func:`first_order_step`: the imaginary parts are ``h``
#: times the direction and the activations' sensitivities, allowed up to ``1e4`` here.
FIRST_ORDER_MARGIN = 1e-4


def first_order_step(dtype: torch.dtype) -> float:
    """Largest step ``h`` at which elementwise rules may drop ``O(h^2)`` terms exactly.

    For an analytic ``f`` and ``z = a + i b`` with ``b = O(h)``,
    ``f(z) = f(a) - b^2 f''(a) / 2 + i b (f'(a) - b^2 f'''(a) / 6) + O(b^4)``. The
    neglected terms are ``O(|b|^2 |f''| / |f|)`` relative to the real part and
    ``O(|b|^2 |f'''| / |f'|)`` relative to the imaginary part, so once ``|b|^2 <= eps``
    they are below the rounding of the real dtype and complex arithmetic itself computes
    ``f(a) + i b f'(a)``. With ``h <= 1e-4 sqrt(eps)`` this holds for imaginary parts up
    to ``1e4 h`` (directions times activation sensitivities up to ``1e4``); the default
    steps (``1e-20`` in float64, ``1e-10`` in float32) are far below. Larger steps (the
    [Shen] Fig. 1 sweep) keep the true complex evaluation.

    Args:
        dtype: the real or complex dtype of the parameters.

    Returns:
        ``1e-4 * sqrt(eps)`` of the real dtype (about ``1.5e-12`` in float64 and
        ``3.5e-8`` in float32).

    Raises:
        ValueError: for a dtype other than float32/float64 (or their complex dtypes).
    """
    real = REAL_OF[complex_dtype(dtype)]
    return FIRST_ORDER_MARGIN * math.sqrt(torch.finfo(real).eps)

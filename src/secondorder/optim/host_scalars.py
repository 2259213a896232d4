"""Arithmetic on scalars read to the host.

Optimizers that decide on the host read a few 0-dim tensors at once
(:func:`secondorder.tensorlist.read_floats`) and go on in Python floats, which costs no
kernel launch. Python's division raises on a zero divisor where a float64 tensor gives an
infinity or NaN; :func:`ieee_divide` gives the tensor's answer.
"""

from __future__ import annotations

import math

__all__ = ["ieee_divide"]


def ieee_divide(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` in IEEE arithmetic, as a float64 tensor divides: a zero
    denominator gives a signed infinity, or NaN for ``0 / 0`` (Python would raise).

    Example:
        >>> ieee_divide(1.0, -0.0), ieee_divide(0.0, 0.0), ieee_divide(3.0, 2.0)
        (-inf, nan, 1.5)
    """
    if denominator != 0:  # (NaN included)
        return numerator / denominator
    if numerator == 0 or math.isnan(numerator):
        return math.nan
    return math.copysign(math.inf, numerator) * math.copysign(1.0, denominator)

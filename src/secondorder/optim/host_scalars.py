"""Arithmetic on scalars read to the host.

Optimizers that decide on the host read a few 0-dim tensors at once
(:func:`secondorder.tensorlist.read_floats`) and go on in Python floats, which costs no
kernel launch. Two things differ from 0-dim tensor arithmetic, and each has a function:

* Python's division raises on a zero divisor where a float64 tensor gives an infinity or
  NaN; :func:`ieee_divide` gives the tensor's answer.
* A float passed back to a kernel as its scalar (``torch.add(a, b, alpha=x)``) must fit the
  tensors' dtype: torch raises for a finite number beyond its range (above 65504 in
  float16), where a 0-dim tensor of that dtype would have held an infinity;
  :func:`scalar_in_range` gives that infinity.
"""

from __future__ import annotations

import math

__all__ = ["ieee_divide", "scalar_in_range"]


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


def scalar_in_range(value: float, largest: float) -> float:
    """``value``, or the infinity of its sign when ``|value| > largest``, the largest finite
    number of the tensors' dtype (``torch.finfo(dtype).max``): what a 0-dim tensor of that
    dtype would hold, and a scalar that torch's kernels accept (NaN passes through).

    Example:
        >>> largest_float16 = 65504.0  # torch.finfo(torch.float16).max
        >>> scalar_in_range(1e5, largest_float16), scalar_in_range(-3.0, largest_float16)
        (inf, -3.0)
    """
    return math.copysign(math.inf, value) if abs(value) > largest else value

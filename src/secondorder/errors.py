"""Exceptions raised by secondorder.

Each names the problem so that a user can act on it; callers catch these types rather
than matching message text.
"""

from __future__ import annotations

__all__ = ["NonFiniteLossError", "ComplexStepUnsupportedError", "DataFormatError"]


class NonFiniteLossError(FloatingPointError):
    """The loss (or a quantity derived from it) is NaN or infinite.

    An optimizer's ``step`` raises it when the loss, the gradient or a Hessian-vector
    product at the current parameters is not finite, after undoing the step: parameters
    and optimizer state are exactly as before it (see :mod:`secondorder.optim.base`), so a
    training loop may catch it and go on with the next batch.
    """


class ComplexStepUnsupportedError(TypeError):
    """A model uses an operation that has no complex-step-safe rule.

    The message names the module or op so the user can replace it or register a rule.
    """


class DataFormatError(ValueError):
    """A data file is missing, truncated or not in the expected format."""

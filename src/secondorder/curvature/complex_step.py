"""Complex-step Hessian-vector products (seed 002 eq. 10-11). Stub: being written."""

from __future__ import annotations


def complex_step_hvp(loss_fn, params, vec, h=None):
    raise NotImplementedError("complex-step backend is being written")

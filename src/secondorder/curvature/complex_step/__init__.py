"""Complex-step directional derivatives through real networks ([Shen] eq. 5, 10).

[Shen] eq. 10 gives a Hessian-vector product from one complex gradient,

    ``H v = Im(g(w + i h v)) / h``,

with ``g`` the gradient of the loss's holomorphic extension ``f*``. No difference is taken,
so there is no subtractive cancellation and ``h`` can be tiny (``1e-20``): the truncation
error ``O(h^2)`` vanishes and the result is exact to rounding ([Shen] Fig. 1). The
first-order form (eq. 5) gives ``g^T v = Im f(w + i h v) / h``.

The catch is ``f*``: a network evaluated on complex parameters must compute the
*holomorphic* extension of the real function. Many ops are not complex-analytic (ReLU,
``max``, ``abs``, comparisons) or have no complex kernel (pooling, batch norm, the fused
losses). While :class:`ComplexStepMode` is active, every torch function that meets a
complex tensor goes through one of three tables:

- :data:`ANALYTIC_OPS` and :data:`STRUCTURAL_OPS`: run as is, after promoting the real
  floating tensors among the arguments (inputs, targets, buffers) to the complex dtype;
- :data:`RULES`: complex-step-safe replacements. Every branch is decided by the real
  part, which is what the real function computes: ``relu(z) = z * (Re z > 0)``,
  max-pooling gathers at the real part's argmax, ``logsumexp`` shifts by the real
  part's max, batch norm uses the analytic variance ``mean((x - mu)^2)`` (no conjugate);
  dropout is the identity (evaluation semantics) and batch norm does not update its
  running statistics; ``detach`` gives the real part (a constant, as autograd treats
  it); embedding lookups and ``scaled_dot_product_attention`` (the math kernel, its
  softmax shifted by the real part's max, ``-inf`` masks put in with ``where``) have
  rules, and the Python body of ``multi_head_attention_forward``
  (:data:`COMPOSITE_OPS`) runs under the mode, so ``nn.MultiheadAttention`` and
  ``nn.TransformerEncoder`` work;
- anything else raises :class:`~secondorder.errors.ComplexStepUnsupportedError` naming
  the op and, when the loss has a ``.model`` (:func:`~secondorder.curvature.functional_loss`
  sets it), the module it was called in.

Speed (exact to rounding, never approximate): when the step is at most
:func:`first_order_step` (the defaults always are), sigmoid and tanh compute
``f(a) + i b f'(a)`` in real arithmetic with a holomorphic backward
(:class:`~.first_order.FirstOrder`) instead of complex ``exp``/division (exact GELU,
whose ``erf`` has no complex kernel, runs only this way); a real input meets a complex
weight in one real GEMM (``linear``); average pooling runs as one real pool over the
interleaved (re, im) pairs. The products run on :func:`unit_direction` (the direction
divided by a power of two) and scale back, so the imaginary parts never become subnormal
(slow on many CPUs) whatever the direction's norm.

A NaN or infinite loss raises :class:`~secondorder.errors.NonFiniteLossError`, as the
other backends do.

Gradients of the complex evaluation come from :func:`torch.autograd.grad`. PyTorch
returns the conjugate Wirtinger gradient: for a real ``L = Re f*(z)`` it gives
``dL/dx + i dL/dy = conj(f*'(z))``, so ``Im(g) = -Im(autograd)``.

The package groups the machinery by kind: :mod:`.steps` (dtypes, ``h``),
:mod:`.scope` (op names, errors), :mod:`.arguments`, :mod:`.first_order`, the rules
(:mod:`.elementwise`, :mod:`.reductions`, :mod:`.losses`, :mod:`.linear_maps`,
:mod:`.attention`, :mod:`.structural`), :mod:`.mode` (:class:`ComplexStepMode`, the merged
:data:`RULES`) and :mod:`.products`.
"""

from secondorder.curvature.complex_step.arguments import real_part
from secondorder.curvature.complex_step.linear_maps import CONV_RULES, LINEAR_RULES
from secondorder.curvature.complex_step.mode import RULES, ComplexStepMode, complex_call
from secondorder.curvature.complex_step.products import (
    check_finite_loss,
    check_point,
    complex_step_directional,
    complex_step_hvp,
    unit_direction,
)
from secondorder.curvature.complex_step.scope import base_name, module_scope, op_name, unsupported
from secondorder.curvature.complex_step.steps import (
    check_step,
    complex_dtype,
    default_step,
    first_order_step,
)
from secondorder.curvature.complex_step.structural import (
    ANALYTIC_OPS,
    COMPOSITE_OPS,
    STRUCTURAL_OPS,
)

__all__ = [
    "ANALYTIC_OPS",
    "COMPOSITE_OPS",
    "CONV_RULES",
    "LINEAR_RULES",
    "RULES",
    "STRUCTURAL_OPS",
    "ComplexStepMode",
    "base_name",
    "check_finite_loss",
    "check_point",
    "check_step",
    "complex_call",
    "complex_dtype",
    "complex_step_directional",
    "complex_step_hvp",
    "default_step",
    "first_order_step",
    "module_scope",
    "op_name",
    "real_part",
    "unit_direction",
    "unsupported",
]

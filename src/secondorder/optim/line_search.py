"""Line searches, written once and composed into every optimizer. (STUB: being implemented.)

Contract (fixed; optimizers code against it):

``Objective = Callable[[float], tuple[Tensor, tuple[Tensor, ...] | None]]``
    ``phi(t)`` evaluates the loss (0-dim tensor) and, when the search asks for it, the
    gradient (tuple shaped like the parameters) at ``x + t * d``. The optimizer writes
    ``phi`` (it moves its parameters and calls its closure); the search only calls it.

``LineSearchResult(step, loss, grad, evaluations, success, message)``
    ``step`` (float) accepted; ``loss``/``grad`` at ``x + step * d`` (``grad`` is None when
    the search never evaluated a gradient there) so the optimizer reuses them instead of
    evaluating again; ``evaluations`` calls of phi; ``success`` False when the conditions
    could not be met within the budget (the step is then the best one seen).

``backtracking(phi, loss0, slope0, *, step=1.0, c1=1e-4, shrink=0.5, max_evals=30,
need_grad=False)``: Armijo backtracking (Nocedal & Wright Alg. 3.1), with quadratic/cubic
interpolation safeguarded in [0.1, 0.5] * step; ``slope0 = g0 . d``.

``strong_wolfe(phi, direction, loss0, grad0, *, step=1.0, c1=1e-4, c2=0.9,
tolerance_change=1e-9, max_evals=25)``: Nocedal & Wright Alg. 3.5/3.6 with cubic
interpolation; it reproduces ``torch.optim.lbfgs._strong_wolfe`` (same bracketing and
interpolation) so that our L-BFGS can match torch's iterates.
"""

"""Complex-step HVP and directional derivative ([Shen] eq. 5, 10; Fig. 1) vs float64 oracles."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from nets import small_cnn, tanh_mlp
from torch import nn

from secondorder import tensorlist as tl
from secondorder.curvature.complex_step import (
    ComplexStepMode,
    complex_step_directional,
    complex_step_hvp,
    default_step,
    first_order_step,
)
from secondorder.curvature.functional import functional_loss
from secondorder.curvature.hvp import gradient, hvp
from secondorder.errors import ComplexStepUnsupportedError

F64 = torch.float64


def dense_hessian(loss_fn, params, func_api=True):
    """Dense float64 Hessian of ``loss_fn`` at ``params``.

    ``torch.func.hessian`` (vmap over forward-over-reverse) differs from double backward
    by ~4% through training-mode batch norm in torch 2.13, so batch-norm models use
    ``torch.autograd.functional.hessian`` instead.
    """
    sizes = [p.numel() for p in params]

    def f(w):
        return loss_fn([c.view_as(p) for c, p in zip(w.split(sizes), params, strict=True)])

    flat = tl.flatten([p.detach() for p in params])
    if func_api:
        return torch.func.hessian(f)(flat)
    return torch.autograd.functional.hessian(f, flat)


def _relerr(a, b):
    return float((a - b).norm() / b.norm())


def _bn():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Linear(4, 6), nn.BatchNorm1d(6, track_running_stats=False), nn.ELU(),
        nn.Linear(6, 3), nn.Sigmoid(), nn.Linear(3, 2),
    )
    return model.train(), nn.CrossEntropyLoss(), torch.randn(8, 4), torch.randint(0, 2, (8,))


def _mse():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Softplus(), nn.Linear(6, 2))
    return model, nn.MSELoss(), torch.randn(9, 4), torch.randn(9, 2)


PROBLEMS = {
    "mlp-tanh-ce": (tanh_mlp, True),
    "cnn": (small_cnn, True),
    "batchnorm-elu-sigmoid": (_bn, False),
    "mse": (_mse, True),
}


def _problem(make, dtype=F64):
    model, crit, x, y = make()
    model = model.to(dtype)
    y = y.to(dtype) if y.is_floating_point() else y
    loss_fn, params = functional_loss(model, crit, x.to(dtype), y)
    torch.manual_seed(10)
    vec = tuple(torch.randn_like(p) for p in params)
    return loss_fn, params, vec


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_hvp_matches_dense_hessian(name):
    make, func_api = PROBLEMS[name]
    loss_fn, params, vec = _problem(make)
    ref = dense_hessian(loss_fn, params, func_api) @ tl.flatten(vec)
    hv = complex_step_hvp(loss_fn, params, vec)
    assert _relerr(tl.flatten(hv), ref) <= 1e-12
    assert all(h.dtype == F64 and h.shape == p.shape for h, p in zip(hv, params, strict=True))
    # through the hvp dispatcher too
    assert _relerr(tl.flatten(hvp(loss_fn, params, vec, backend="complex-step")), ref) <= 1e-12


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_directional_derivative_is_gradient_dot_v(name):
    loss_fn, params, vec = _problem(PROBLEMS[name][0])
    _, grads = gradient(loss_fn, params)
    ref = tl.dot(grads, vec)
    got = complex_step_directional(loss_fn, params, vec)
    assert abs(float(got - ref)) <= 1e-13 * abs(float(ref))


def test_batchnorm_with_running_stats_matches_autograd_and_leaves_stats_alone():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 16, 2)).double().train()
    x = torch.randn(5, 1, 6, 6, dtype=F64)
    loss_fn, params = functional_loss(model, nn.CrossEntropyLoss(), x, torch.randint(0, 2, (5,)))
    vec = tuple(torch.randn_like(p) for p in params)
    ref = tl.flatten(hvp(loss_fn, params, vec))  # double backward, training-mode statistics
    bn = model[1]
    before = (bn.running_mean.clone(), bn.running_var.clone())
    got = tl.flatten(complex_step_hvp(loss_fn, params, vec))
    assert _relerr(got, ref) <= 1e-12
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    model.eval()
    ref_eval = tl.flatten(hvp(loss_fn, params, vec))
    assert _relerr(tl.flatten(complex_step_hvp(loss_fn, params, vec)), ref_eval) <= 1e-12


@pytest.mark.parametrize("name", ["mlp-tanh-ce", "cnn"])
def test_float32_hvp_matches_float64_oracle(name):
    make, func_api = PROBLEMS[name]
    model, crit, x, y = make()
    f64, p64 = functional_loss(copy.deepcopy(model).double(), crit, x.double(), y)
    f32, p32 = functional_loss(model.float(), crit, x, y)
    torch.manual_seed(11)
    v64 = tuple(torch.randn_like(p) for p in p64)
    ref = dense_hessian(f64, p64, func_api) @ tl.flatten(v64)
    hv = complex_step_hvp(f32, p32, tuple(v.float() for v in v64))
    assert all(h.dtype == torch.float32 for h in hv)
    assert _relerr(tl.flatten(hv).double(), ref) <= 1e-4


def test_default_step_values_and_errors():
    assert default_step(F64) == 1e-20 and default_step(torch.complex128, order=2) == 1e-20
    assert default_step(torch.float32) == 1e-10 and default_step(torch.float32, order=2) == 1e-8
    with pytest.raises(ValueError, match="float32 or float64.*float16"):
        default_step(torch.float16)
    with pytest.raises(ValueError, match="Invalid complex-step order: 3"):
        default_step(F64, order=3)


def test_bad_inputs_raise():
    loss_fn, params, vec = _problem(_mse)
    with pytest.raises(ValueError, match="Invalid complex step: h=-1"):
        complex_step_hvp(loss_fn, params, vec, h=-1.0)
    with pytest.raises(ValueError, match="Invalid complex step: h=nan"):
        complex_step_directional(loss_fn, params, vec, h=float("nan"))
    with pytest.raises(ValueError, match="vec has 1 tensors but there are 4"):
        complex_step_hvp(loss_fn, params, vec[:1])
    with pytest.raises(ValueError, match="float32 or float64"):
        complex_step_hvp(lambda ps: ps[0].sum(), [torch.ones(2, dtype=torch.float16)],
                         [torch.ones(2, dtype=torch.float16)])


# ----------------------------------------------------------------- [Shen] Fig. 1


def _fig1(x):
    return torch.exp(x) / (x * x + 1)


def _fig1_derivative(x):
    return math.exp(x) * (x * x - 2 * x + 1) / (x * x + 1) ** 2


def test_seed002_fig1_scalar():
    x0 = 10.0
    exact = _fig1_derivative(x0)
    x = torch.tensor(x0, dtype=F64)
    steps = [10.0 ** -k for k in range(2, 31)]
    fwd, cen, cs = [], [], []
    for h in steps:
        fwd.append(abs(float((_fig1(x + h) - _fig1(x)) / h) - exact) / exact)
        cen.append(abs(float((_fig1(x + h) - _fig1(x - h)) / (2 * h)) - exact) / exact)
        one = [torch.ones((), dtype=F64)]
        val = complex_step_directional(lambda ps: _fig1(ps[0]), [x], one, h=h)
        cs.append(abs(float(val) - exact) / exact)
    for errs in (fwd, cen):  # a floor, then subtractive cancellation takes over
        assert min(errs) < errs[0]
    i14 = steps.index(1e-14)
    assert fwd[i14] > 100 * min(fwd)
    assert cen[i14] > 100 * min(cen)
    assert max(fwd[steps.index(1e-17):]) >= 1.0  # x + h == x: the difference is zero
    for h, err in zip(steps, cs, strict=True):
        if h <= 1e-8:
            assert err <= 1e-13, (h, err)


def test_seed002_fig1_along_mlp_direction():
    loss_fn, params, vec = _problem(tanh_mlp)
    _, grads = gradient(loss_fn, params)
    exact = float(tl.dot(grads, vec))

    def phi(t):
        return float(loss_fn(tl.add(params, vec, t)).detach())

    f0 = phi(0.0)
    steps = [10.0 ** -k for k in range(2, 31)]
    fwd = [abs((phi(h) - f0) / h - exact) / abs(exact) for h in steps]
    cen = [abs((phi(h) - phi(-h)) / (2 * h) - exact) / abs(exact) for h in steps]
    assert min(fwd) < fwd[0] and min(cen) < cen[0]
    assert fwd[steps.index(1e-14)] > 100 * min(fwd)
    for h in steps:
        if h <= 1e-8:
            got = float(complex_step_directional(loss_fn, params, vec, h=h))
            assert abs(got - exact) <= 1e-13 * abs(exact), h


def test_hvp_independent_of_tiny_step():
    loss_fn, params, vec = _problem(tanh_mlp)
    ref = tl.flatten(complex_step_hvp(loss_fn, params, vec, h=1e-20))
    for h in (1e-8, 1e-30, 1e-100):
        assert _relerr(tl.flatten(complex_step_hvp(loss_fn, params, vec, h=h)), ref) <= 1e-14


# ----------------------------------------------------------------- rules and errors


class _SortNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return torch.sort(self.fc(x), dim=-1).values


class _FFTNet(nn.Module):
    def forward(self, x):
        return torch.fft.fft(x).real


def test_unsupported_op_names_op_and_module():
    model = nn.Sequential(nn.Linear(3, 3), _SortNet(), nn.Linear(4, 1)).double()
    loss_fn, params = functional_loss(model, nn.MSELoss(), torch.randn(4, 3, dtype=F64),
                                      torch.randn(4, 1, dtype=F64))
    vec = tuple(torch.ones_like(p) for p in params)
    with pytest.raises(ComplexStepUnsupportedError, match=r"op 'sort'.*in module '1' \(_SortNet\)"):
        complex_step_hvp(loss_fn, params, vec)
    with pytest.raises(ComplexStepUnsupportedError, match=r"op 'sort'.*_SortNet"):
        complex_step_directional(loss_fn, params, vec)


def test_unsupported_fft_and_exact_gelu_above_the_first_order_step():
    model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 1)).double()
    loss_fn, params = functional_loss(model, nn.MSELoss(), torch.randn(4, 3, dtype=F64),
                                      torch.randn(4, 1, dtype=F64))
    vec = tuple(torch.ones_like(p) for p in params)
    with pytest.raises(ComplexStepUnsupportedError, match=r"'gelu'.*module '1' \(GELU\).*erf"):
        complex_step_hvp(loss_fn, params, vec, h=1e-6)
    # at the default step exact GELU runs to first order, exact to rounding
    want = hvp(loss_fn, params, vec, backend="autograd")
    assert _relerr(tl.flatten(complex_step_hvp(loss_fn, params, vec)), tl.flatten(want)) < 1e-12
    model = nn.Sequential(nn.Linear(3, 4), _FFTNet(), nn.Linear(4, 1)).double()
    loss_fn, params = functional_loss(model, nn.MSELoss(), torch.randn(4, 3, dtype=F64),
                                      torch.randn(4, 1, dtype=F64))
    with pytest.raises(ComplexStepUnsupportedError, match=r"'fft_fft'.*_FFTNet"):
        complex_step_hvp(loss_fn, params, tuple(torch.ones_like(p) for p in params))


def test_unsupported_without_model_names_op():
    w = torch.ones(3, dtype=F64)
    with pytest.raises(ComplexStepUnsupportedError, match=r"op 'sort'"):
        complex_step_hvp(lambda ps: torch.sort(ps[0]).values.sum(), [w], [w])


def test_tanh_gelu_and_other_rules_match_autograd():
    torch.manual_seed(5)
    x = torch.randn(7, 4, dtype=F64)
    y = torch.rand(7, 3, dtype=F64)

    def loss_fn(ps):
        z = x @ ps[0]
        a = torch.cat([
            nn.functional.leaky_relu(z, 0.1), nn.functional.gelu(z, approximate="tanh"),
            nn.functional.silu(z), torch.clamp(z, -0.5, 0.5) * z, torch.abs(z) * z,
            torch.maximum(z, -z) * z, nn.functional.layer_norm(z, (3,)),
            nn.functional.log_softmax(z, 1), torch.logsumexp(z, 1, keepdim=True),
            torch.amax(z, 1, keepdim=True) * z, torch.max(z, 1).values[:, None] * z,
        ], 1)
        return (nn.functional.binary_cross_entropy_with_logits(a[:, :3], y)
                + (a ** 2).mean() + nn.functional.l1_loss(a[:, 3:6], y)
                + nn.functional.nll_loss(a[:, 21:24], torch.tensor([0, 1, 2, 0, 1, 2, 0])))

    w = torch.randn(4, 3, dtype=F64)
    v = torch.randn(4, 3, dtype=F64)
    ref = hvp(loss_fn, [w], [v])[0]
    assert _relerr(complex_step_hvp(loss_fn, [w], [v])[0], ref) <= 1e-12


def test_mode_relu_rule_by_real_part():
    z = torch.tensor([-1.0 + 1e-20j, 2.0 + 1e-20j, -3.0 - 1.0j], dtype=torch.complex128)
    with ComplexStepMode():
        r = torch.relu(z)
        m = torch.max(z)
    assert torch.equal(r, torch.tensor([0, 2.0 + 1e-20j, 0], dtype=torch.complex128))
    assert m == z[1]


def test_dropout_is_identity_in_complex_evaluation():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 5), nn.Dropout(0.5), nn.Tanh(), nn.Linear(5, 1)).double()
    x, y = torch.randn(6, 3, dtype=F64), torch.randn(6, 1, dtype=F64)
    loss_fn, params = functional_loss(model.train(), nn.MSELoss(), x, y)
    vec = tuple(torch.randn_like(p) for p in params)
    got = complex_step_hvp(loss_fn, params, vec)
    ref = hvp(functional_loss(model.eval(), nn.MSELoss(), x, y)[0], params, vec)
    assert _relerr(tl.flatten(got), tl.flatten(ref)) <= 1e-12


def test_first_order_rules_only_below_their_step():
    """Sigmoid/tanh use f(a) + i b f'(a) in real arithmetic only when h^2 is below
    rounding; at h = 1e-3 the true complex evaluation (and its O(h^2) error) is kept."""
    assert first_order_step(F64) == 1e-4 * math.sqrt(torch.finfo(F64).eps)
    assert first_order_step(torch.complex64) == 1e-4 * math.sqrt(torch.finfo(torch.float32).eps)
    assert default_step(F64) <= first_order_step(F64)
    assert default_step(torch.float32) <= first_order_step(torch.float32)
    with pytest.raises(ValueError, match="float32 or float64.*float16"):
        first_order_step(torch.float16)
    w = torch.tensor([-2.0, 0.3, 1.5], dtype=F64)
    one = [torch.ones(3, dtype=F64)]

    def f(ps):
        return (torch.sigmoid(ps[0]) + torch.tanh(ps[0]) * 2.0).sum()

    s, t = torch.sigmoid(w), torch.tanh(w)
    exact = float((s * (1 - s) + 2 * (1 - t * t)).sum())
    h = 1e-3
    z = w.to(torch.complex128) + 1j * h
    true_cs = float(((1 / (1 + torch.exp(-z))) + torch.tanh(z) * 2).sum().imag) / h
    assert abs(true_cs - exact) > 1e-9 * abs(exact)  # the O(h^2) complex-step error
    got = float(complex_step_directional(f, [w], one, h=h))
    assert abs(got - true_cs) <= 1e-14 * abs(exact)
    assert abs(float(complex_step_directional(f, [w], one)) - exact) <= 1e-15 * abs(exact)
    # the first-order rules carry the Hessian through their backward (f'' b term)
    v = [torch.tensor([0.5, -1.0, 2.0], dtype=F64)]
    ref = hvp(f, [w], v)[0]
    assert _relerr(complex_step_hvp(f, [w], v)[0], ref) <= 1e-14
    hv_big = complex_step_hvp(f, [w], v, h=1e-3)[0]  # complex path: O(h^2) off
    assert 1e-12 < _relerr(hv_big, ref) <= 1e-5


def test_interleaved_pool_and_linear_rules_match_split_parts_and_autograd():
    torch.manual_seed(12)
    fn = nn.functional
    x1 = torch.randn(2, 3, 9, dtype=F64)
    x2 = torch.randn(2, 3, 7, 6, dtype=F64)
    z1 = torch.complex(x1, torch.randn_like(x1))
    z2 = torch.complex(x2, torch.randn_like(x2))
    pools = [
        (lambda t: fn.avg_pool1d(t, 3, 2, 1, True, False), z1),
        (lambda t: fn.avg_pool1d(t, 2), z1),
        (lambda t: fn.avg_pool2d(t, (3, 2), 2, (1, 0), False, True, 5), z2),
        (lambda t: fn.avg_pool2d(t[0], 2), z2),  # unbatched
        (lambda t: fn.adaptive_avg_pool1d(t, 4), z1),
        (lambda t: fn.adaptive_avg_pool2d(t, (None, 4)), z2),
    ]
    for pool, z in pools:
        with ComplexStepMode():
            got = pool(z)
        want = torch.complex(pool(z.real), pool(z.imag))
        torch.testing.assert_close(got, want, rtol=1e-15, atol=0)
    x = torch.randn(5, dtype=F64)

    def loss_fn(ps):
        a = torch.sigmoid(nn.functional.linear(x, ps[0]))  # unbatched real input
        b = torch.tanh(a.reshape(1, 2, 3, 1) * x2[:1, :2, :3, :4])
        return (fn.avg_pool2d(b, 2, 1) ** 2).sum() + (fn.adaptive_avg_pool1d(b[0], 2) ** 3).sum()

    w, v = torch.randn(6, 5, dtype=F64), torch.randn(6, 5, dtype=F64)
    ref = hvp(loss_fn, [w], [v])[0]
    assert _relerr(complex_step_hvp(loss_fn, [w], [v])[0], ref) <= 1e-12


def test_first_order_convolution_matches_autograd_and_complex_path():
    """conv1d/2d/3d of complex activations and weights (stride, padding, dilation, groups,
    partial positional arguments) at the default step vs double backward, and vs the
    four-convolution complex path at a step above first_order_step."""
    torch.manual_seed(13)
    fn = nn.functional
    x1, x2 = torch.randn(3, 4, 11, dtype=F64), torch.randn(2, 2, 7, 6, dtype=F64)
    x3 = torch.randn(2, 2, 4, 5, 4, dtype=F64)
    k2 = torch.randn(2, 2, 3, 3, dtype=F64)
    k3 = torch.randn(2, 2, 2, 2, 2, dtype=F64)

    def loss_fn(ps):
        a = fn.conv1d(x1, ps[0], ps[1])  # real input, complex weight
        b = fn.conv1d(torch.tanh(a), ps[2], None, 2, 1, 2, 2)  # groups, dilation
        c = fn.conv2d(torch.sigmoid(fn.conv2d(x2, k2 * ps[1][0])), k2 * ps[1][1], None, (2, 1))
        d = fn.conv3d(torch.tanh(fn.conv3d(x3, k3 * ps[1][2])), k3 * ps[1][3], None, 1, 1)
        return (b ** 2).sum() + (c ** 3).sum() + (torch.sigmoid(d) ** 2).sum()

    params = [torch.randn(4, 4, 3, dtype=F64), torch.randn(4, dtype=F64),
              torch.randn(4, 2, 2, dtype=F64)]
    vec = [torch.randn_like(p) for p in params]
    ref = tl.flatten(hvp(loss_fn, params, vec))
    assert _relerr(tl.flatten(complex_step_hvp(loss_fn, params, vec)), ref) <= 1e-12
    big = tl.flatten(complex_step_hvp(loss_fn, params, vec, h=1e-5))  # full complex evaluation
    assert _relerr(big, ref) <= 1e-8


# --------------------------------------------------------------------------- issue 8 item 5
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("product", ["hvp-forward", "hvp-complex-step", "vhv-complex-step",
                                     "directional"])
def test_non_finite_loss_raises_instead_of_returning_nan(product, bad):
    from secondorder.curvature.vhv import vhv
    from secondorder.errors import NonFiniteLossError

    loss_fn, params, vec = _problem(tanh_mlp)

    def poisoned(ps):
        return loss_fn(ps) * bad

    call = {
        "hvp-forward": lambda: hvp(poisoned, params, vec, backend="forward"),
        "hvp-complex-step": lambda: hvp(poisoned, params, vec, backend="complex-step"),
        "vhv-complex-step": lambda: vhv(poisoned, params, vec, backend="complex-step"),
        "directional": lambda: complex_step_directional(poisoned, params, vec),
    }[product]
    with pytest.raises(NonFiniteLossError, match=f"the loss is not finite: {bad}"):
        call()


def _detached_penalty_problem():
    """MLP loss plus terms whose detached factors autograd treats as constants."""
    loss_fn, params, vec = _problem(tanh_mlp)

    def with_detach(ps):
        w = ps[0]
        return (loss_fn(ps) + (w * w.detach()).sum() + (w * w * w.data).sum()
                + (torch.tanh(w) * w.detach() ** 2).sum() + 0.5 * (w * w).sum())

    return with_detach, params, vec


def test_detach_is_a_constant_in_hvp_and_directional_derivative():
    from secondorder.curvature.hvp import gradient

    loss_fn, params, vec = _detached_penalty_problem()
    want = hvp(loss_fn, params, vec, backend="autograd")
    got = complex_step_hvp(loss_fn, params, vec)
    assert _relerr(tl.flatten(got), tl.flatten(want)) < 1e-12
    _, g = gradient(loss_fn, params)
    gv = float(tl.dot(g, vec))
    assert float(complex_step_directional(loss_fn, params, vec)) == pytest.approx(gv, rel=1e-12)


def test_detach_is_a_constant_in_vhv():
    from secondorder.curvature.vhv import vhv

    loss_fn, params, vec = _detached_penalty_problem()
    want = float(vhv(loss_fn, params, vec, backend="autograd"))
    assert float(vhv(loss_fn, params, vec, backend="complex-step")) == pytest.approx(
        want, rel=1e-10
    )


def test_in_place_detach_of_a_complex_step_tensor_is_refused():
    w = torch.ones(2, dtype=F64)
    with pytest.raises(ComplexStepUnsupportedError, match="detach_"):
        complex_step_hvp(lambda ps: (ps[0] * ps[0].detach_()).sum(), [w], [w])


def test_required_parameter_the_loss_ignores_is_an_error():
    a, b = torch.ones(2, dtype=F64), torch.ones(3, dtype=F64)
    outside = torch.ones(3, dtype=F64)

    def f(ps):
        return (ps[0] ** 3).sum() + (outside ** 2).sum()  # ignores ps[1]

    vec = [torch.ones(2, dtype=F64), torch.ones(3, dtype=F64)]
    hv = complex_step_hvp(f, [a, b], vec, required=[True, False])  # unused: zero row
    assert torch.equal(hv[1], torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match=r"params\[1\] \(shape \(3,\)\)"):
        complex_step_hvp(f, [a, b], vec, required=[True, True])
    with pytest.raises(ValueError, match="required has 1 entries for 2 parameters"):
        complex_step_hvp(f, [a, b], vec, required=[True])

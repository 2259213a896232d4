"""engine_grad: the same gradients as torch.autograd.grad, bit for bit, and its checks."""

import pytest
import torch

from secondorder.curvature.engine_grad import engine_grad


def _problem(dtype):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(5, 3, generator=gen, dtype=dtype)
    w = torch.randn(3, generator=gen, dtype=dtype).requires_grad_(True)
    b = torch.nn.Parameter(torch.randn(5, generator=gen, dtype=dtype))
    unused = torch.randn(2, generator=gen, dtype=dtype).requires_grad_(True)
    return a, w, b, unused


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradient_and_hvp_are_bit_identical_to_autograd_grad(dtype):
    a, w, b, unused = _problem(dtype)
    params = (w, b, unused)

    def loss():
        return torch.log1p(torch.exp(torch.sin(a @ w) * b)).mean()

    ref = torch.autograd.grad(loss(), params, create_graph=True, allow_unused=True)
    got = engine_grad((loss(),), params, create_graph=True, allow_unused=True)
    assert got[2] is None and ref[2] is None
    for r, g in zip(ref[:2], got[:2], strict=True):
        assert torch.equal(r, g) and g.requires_grad
    v = [torch.linspace(-1, 1, 3, dtype=dtype), torch.linspace(2, 3, 5, dtype=dtype)]
    href = torch.autograd.grad(ref[:2], params, v, retain_graph=True, allow_unused=True)
    hgot = engine_grad(got[:2], params, v, retain_graph=True, allow_unused=True)
    assert hgot[2] is None
    for r, g in zip(href[:2], hgot[:2], strict=True):
        assert torch.equal(r, g) and not g.requires_grad
    # retained: a second product through the same graph works
    assert torch.equal(engine_grad(got[:2], params, v, retain_graph=True,
                                   allow_unused=True)[0], hgot[0])


def test_graph_is_freed_without_retain_graph():
    a, w, b, _ = _problem(torch.float64)
    loss = (a @ w * b).pow(2).sum()
    engine_grad((loss,), (w,))
    with pytest.raises(RuntimeError, match="second time"):
        engine_grad((loss,), (w,))


def test_outside_the_plain_case_torch_checks_and_messages_apply():
    _, w, _, unused = _problem(torch.float64)
    with pytest.raises(RuntimeError, match="does not require grad"):
        engine_grad((w.detach().sum(),), (w,))
    with pytest.raises(RuntimeError, match="only for scalar outputs"):
        engine_grad((w * 2,), (w,))
    with pytest.raises(RuntimeError, match="appears to not have been used"):
        engine_grad(((w * 2).sum(),), (w, unused))
    with pytest.raises(RuntimeError, match="Mismatch in shape|shape"):
        engine_grad((w * 2,), (w,), (torch.ones(4, dtype=torch.float64),))


def test_a_torch_function_mode_goes_through_autograd_grad():
    _, w, _, _ = _problem(torch.float64)
    seen = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    loss = (w * w).sum()
    with Spy():
        (g,) = engine_grad((loss,), (w,))
    assert "grad" in seen
    assert torch.equal(g, 2 * w.detach())


def test_the_engine_call_is_checked_at_import_and_falls_back_when_it_disagrees(monkeypatch):
    # a torch whose private engine entry point takes other arguments must not be used
    from secondorder.curvature import engine_grad as eg

    assert eg._engine_call_agrees()

    def changed(*args, **kwargs):
        raise TypeError("run_backward() got an unexpected keyword argument")

    monkeypatch.setattr(eg, "_engine_run_backward", changed)
    assert not eg._engine_call_agrees()
    monkeypatch.setattr(eg, "_engine_run_backward", None)
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    (g,) = eg.engine_grad([(x**2).sum()], [x])  # torch.autograd.grad's path
    assert torch.equal(g, 2 * x.detach())


def test_a_broadcastable_grad_output_of_another_shape_gets_torchs_error():
    # the engine would sum a (3,) grad_output into a (1,) output; torch.autograd.grad refuses
    x = torch.ones(1, requires_grad=True)
    with pytest.raises(RuntimeError, match="[Mm]ismatch in shape"):
        engine_grad([x * 2], [x], [torch.ones(3)])


def test_the_import_check_passes_under_no_grad():
    from secondorder.curvature import engine_grad as eg

    with torch.no_grad():
        assert eg._engine_call_agrees()
    with torch.inference_mode():
        assert eg._engine_call_agrees()

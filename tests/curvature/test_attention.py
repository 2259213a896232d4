"""Curvature through attention: the library selects a twice-differentiable kernel.

PyTorch's default CPU attention kernel (flash attention) has no double backward and no
forward-mode rule; before :mod:`secondorder.curvature.attention` every HVP through an
``nn.TransformerEncoder`` or ``nn.MultiheadAttention`` raised. The oracle is independent
of the fix: central differences of float64 gradients, which need one backward only and so
run through the default kernel.
"""

import pytest
import torch
from nets import AttentionClassifier, TransformerClassifier, transformer_classifier
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from secondorder import tensorlist as tl
from secondorder.curvature import (
    DatasetHessianOperator,
    GGNOperator,
    HessianOperator,
    double_differentiable_attention,
    eigenvalues,
    functional_loss,
    gradient,
    hessian,
    hessian_diagonal,
    hvp,
)

DT = torch.float64


def _central_difference_hvp(loss_fn, params, v, h=1e-5):
    """``(g(w + h v) - g(w - h v)) / 2h`` with the default attention kernel (1st order)."""
    plus = gradient(loss_fn, tl.add(tl.clone(params), v, h))[1]
    minus = gradient(loss_fn, tl.add(tl.clone(params), v, -h))[1]
    return tl.scale(tl.sub(plus, minus), 0.5 / h)


def _problem(model, d_model, seq=4, batch=5):
    model = model.to(DT)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, seq, d_model, generator=g, dtype=DT)
    y = torch.randint(0, 3, (batch,), generator=g)
    loss_fn, params = functional_loss(model, nn.CrossEntropyLoss(), x, y)
    v = tuple(torch.randn(p.shape, generator=g, dtype=DT) for p in params)
    return model, x, y, loss_fn, params, v


MODELS = {
    "transformer-encoder": lambda: (TransformerClassifier(d_model=8, heads=4, layers=2), 8),
    "multihead-attention": lambda: (AttentionClassifier(d_model=8, heads=2), 8),
    "multihead-attention-causal": lambda: (AttentionClassifier(d_model=8, causal=True), 8),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_autograd_and_forward_hvps_match_the_dense_hessian_and_finite_differences(name):
    torch.manual_seed(1)
    model, d_model = MODELS[name]()
    _, _, _, loss_fn, params, v = _problem(model, d_model)
    dense = hessian(loss_fn, params)
    torch.testing.assert_close(dense, dense.T, atol=1e-12, rtol=0)
    expected = dense @ tl.flatten(v)
    scale = float(expected.abs().max())
    for backend in ("autograd", "forward"):
        got = tl.flatten(hvp(loss_fn, params, v, backend=backend))
        torch.testing.assert_close(got, expected, atol=1e-12 * scale, rtol=0)
    # Independent oracle (truncation error ~h^2 = 1e-10, rounding ~eps / h = 1e-11).
    fd = tl.flatten(_central_difference_hvp(loss_fn, params, v))
    torch.testing.assert_close(fd, expected, atol=1e-7 * scale, rtol=0)


def test_user_loss_function_and_curvature_tools_through_a_transformer():
    torch.manual_seed(3)
    model, x, y, _, params, v = _problem(TransformerClassifier(d_model=8, heads=4), 8)
    names = [n for n, _ in model.named_parameters()]

    def user_loss(ps):  # calls the model itself, not through functional_loss
        out = torch.func.functional_call(model, dict(zip(names, ps, strict=True)), (x,))
        return nn.functional.cross_entropy(out, y)

    op = HessianOperator(user_loss, params)
    fd = tl.flatten(_central_difference_hvp(user_loss, params, v))
    hv = tl.flatten(op.matvec(v))
    torch.testing.assert_close(hv, fd, atol=1e-7 * float(fd.abs().max()), rtol=0)
    dense = hessian(user_loss, params)
    diag = tl.flatten(hessian_diagonal(user_loss, params, method="exact"))
    torch.testing.assert_close(diag, dense.diagonal(), atol=1e-12, rtol=0)
    top = eigenvalues(op, k=2, tol=1e-10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(top, torch.linalg.eigvalsh(dense).flip(0)[:2], atol=1e-10, rtol=0)
    ggn = GGNOperator.from_model(model, nn.CrossEntropyLoss(), x, y)
    assert float(tl.dot(v, ggn.matvec(v))) > 0  # the GGN of a cross-entropy is PSD
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    data_op = DatasetHessianOperator(model, nn.CrossEntropyLoss(), loader)
    torch.testing.assert_close(tl.flatten(data_op.matvec(v)), dense @ tl.flatten(v),
                               atol=1e-12, rtol=0)


def test_the_context_restores_the_kernels_selected_before():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    before = torch.backends.cuda.flash_sdp_enabled()
    with double_differentiable_attention():
        assert not torch.backends.cuda.flash_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled() == before
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), double_differentiable_attention(enabled=False):
        assert not torch.backends.cuda.math_sdp_enabled()


def test_float32_transformer_classifier_autograd_and_forward_agree():
    # The setting: float32, 2 layers, 4 heads, GELU, batch_first.
    model, criterion, x, y = transformer_classifier()
    loss_fn, params = functional_loss(model, criterion, x, y)
    v = tuple(torch.randn_like(p) for p in params)
    a = tl.flatten(hvp(loss_fn, params, v, backend="autograd"))
    f = tl.flatten(hvp(loss_fn, params, v, backend="forward"))
    torch.testing.assert_close(f, a, atol=1e-4 * float(a.abs().max()), rtol=0)


def test_context_sets_and_restores_the_flags_of_sdpa_kernel_math():
    # the lean context sets the same process-wide backend flags as torch's
    # sdpa_kernel(SDPBackend.MATH) and restores the previous ones, also after an error
    from torch.nn.attention import SDPBackend, _cur_sdpa_kernel_backends, sdpa_kernel

    before = _cur_sdpa_kernel_backends()
    with sdpa_kernel(SDPBackend.MATH):
        expected = _cur_sdpa_kernel_backends()
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):  # a non-default start
        outer = _cur_sdpa_kernel_backends()
        with double_differentiable_attention():
            assert _cur_sdpa_kernel_backends() == expected == [SDPBackend.MATH]
        assert _cur_sdpa_kernel_backends() == outer
        with pytest.raises(RuntimeError, match="boom"), double_differentiable_attention():
            raise RuntimeError("boom")
        assert _cur_sdpa_kernel_backends() == outer
    assert _cur_sdpa_kernel_backends() == before
    with double_differentiable_attention(enabled=False):
        assert _cur_sdpa_kernel_backends() == before


def test_a_backend_this_module_cannot_read_falls_back_to_sdpa_kernel(monkeypatch):
    # a torch whose sdpa_kernel sets a flag without a getter here (a backend added later)
    # must not get the lean context, which would leave that backend enabled
    import torch.nn.attention as attention

    from secondorder.curvature import attention as ours

    assert len(ours._flag_functions()) == len(attention._backend_names)
    monkeypatch.setattr(attention, "_backend_names",
                        {**attention._backend_names, "future": "FUTURE_ATTENTION"})
    assert ours._flag_functions() == ()
    monkeypatch.delattr(attention, "_backend_names")
    assert ours._flag_functions() == ()

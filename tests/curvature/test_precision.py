"""Curvature of low-precision models: float32 products for bfloat16 models, autocast.

The reference is the float64 Hessian-vector product of the *same* bfloat16 weights (cast
exactly to float64), so only the arithmetic precision differs.
"""

import copy

import pytest
import torch
from torch import nn

from secondorder import tensorlist as tl
from secondorder.curvature import GGNOperator, functional_loss, hvp


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 5))
    return model, torch.randn(64, 20), torch.randint(0, 5, (64,))


def _bn_cnn():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )  # fmt: skip
    return model.train(), torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))


def _rel(a, b):
    return float(tl.norm(tl.sub(a, b)) / tl.norm(b))


@pytest.mark.parametrize("make", [_mlp, _bn_cnn], ids=["mlp", "batchnorm-cnn-train"])
def test_bfloat16_model_gets_float32_products_with_functional_loss_dtype(make):
    model, x, y = make()
    model = model.to(torch.bfloat16)
    before = copy.deepcopy(model.state_dict())
    ref_fn, ref_params = functional_loss(copy.deepcopy(model).double(), nn.CrossEntropyLoss(),
                                         x.bfloat16().double(), y)
    g = torch.Generator().manual_seed(0)
    v64 = tuple(torch.randn(p.shape, generator=g, dtype=torch.float64) for p in ref_params)
    ref = hvp(ref_fn, ref_params, v64)

    up_fn, up_params = functional_loss(model, nn.CrossEntropyLoss(), x.bfloat16(), y,
                                       dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in up_params)
    up = hvp(up_fn, up_params, tuple(v.float() for v in v64))
    assert all(h.dtype == torch.float32 for h in up)
    assert _rel(tuple(h.double() for h in up), ref) < 5e-6  # measured 1.8e-7, 4.9e-7

    bf_fn, bf_params = functional_loss(model, nn.CrossEntropyLoss(), x.bfloat16(), y)
    bf = hvp(bf_fn, bf_params, tuple(v.bfloat16() for v in v64))
    assert _rel(tuple(h.double() for h in bf), ref) > 5e-4  # bfloat16: 5.4e-3, 4.9e-3

    after = model.state_dict()  # the model (weights, batch-norm statistics) is untouched
    assert all(torch.equal(after[k], before[k]) and after[k].dtype == before[k].dtype
               for k in before)


def test_invalid_dtype_is_refused():
    model, x, y = _mlp()
    with pytest.raises(ValueError, match="Invalid dtype: torch.int64"):
        functional_loss(model, nn.CrossEntropyLoss(), x, y, dtype=torch.int64)


def test_forward_mode_under_autocast_works_for_linear_layers():
    model, x, y = _mlp()
    loss_fn, params = functional_loss(model, nn.CrossEntropyLoss(), x, y)
    v = tuple(torch.randn_like(p) for p in params)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fwd = hvp(loss_fn, params, v, backend="forward")
        rev = hvp(loss_fn, params, v, backend="autograd")
    assert _rel(fwd, rev) < 3e-2  # two bfloat16 computations of one product: 3.3e-3


def test_forward_mode_under_autocast_through_a_convolution_raises_a_clear_error():
    model, x, y = _bn_cnn()
    loss_fn, params = functional_loss(model, nn.CrossEntropyLoss(), x, y)
    v = tuple(torch.randn_like(p) for p in params)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hvp(loss_fn, params, v, backend="autograd")  # the double backward works
        with pytest.raises(RuntimeError, match=r"backend='forward'\) failed under torch.autocast"):
            hvp(loss_fn, params, v, backend="forward")


def test_ggn_of_a_bfloat16_model_in_float32():
    model, x, y = _mlp()
    model = model.to(torch.bfloat16)
    ref = GGNOperator.from_model(copy.deepcopy(model).double(), nn.CrossEntropyLoss(),
                                 x.bfloat16().double(), y)
    ggn = GGNOperator.from_model(model, nn.CrossEntropyLoss(), x.bfloat16(), y,
                                 dtype=torch.float32)
    v64 = tuple(torch.randn(p.shape, generator=torch.Generator().manual_seed(0),
                            dtype=torch.float64) for p in ref.params)
    out = ggn.matvec(tuple(v.float() for v in v64))
    assert all(o.dtype == torch.float32 for o in out)
    assert _rel(tuple(o.double() for o in out), ref.matvec(v64)) < 5e-6

"""tensorlist arithmetic against the same operations on flattened float64 vectors."""

from __future__ import annotations

import pytest
import torch

from secondorder import tensorlist as tl


@pytest.fixture(name="pair")
def pair_fixture():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,), (2, 1, 3)]
    a = tuple(torch.randn(s, generator=g, dtype=torch.float64) for s in shapes)
    b = tuple(torch.randn(s, generator=g, dtype=torch.float64) for s in shapes)
    return a, b


def test_reductions_match_flat_vectors(pair):
    a, b = pair
    fa, fb = tl.flatten(a), tl.flatten(b)
    assert fa.numel() == 12 + 5 + 6
    assert torch.allclose(tl.dot(a, b), fa @ fb, rtol=1e-14)
    assert torch.allclose(tl.norm(a), fa.norm(), rtol=1e-14)
    assert tl.dot(a, b).dim() == 0 and tl.norm(a).dim() == 0


def test_linear_operations_match_flat_vectors(pair):
    a, b = pair
    fa, fb = tl.flatten(a), tl.flatten(b)
    s = torch.tensor(-0.7, dtype=torch.float64)
    assert torch.allclose(
        tl.flatten(tl.add(a, b, 2.5)), fa + 2.5 * fb, rtol=1e-15
    )  # fused multiply-add
    assert torch.allclose(tl.flatten(tl.add(a, b, s)), fa + s * fb, rtol=1e-15)
    assert torch.allclose(tl.flatten(tl.axpy(3.0, a, b)), fb + 3.0 * fa, rtol=1e-15)
    assert torch.equal(tl.flatten(tl.sub(a, b)), fa - fb)
    assert torch.equal(tl.flatten(tl.scale(a, 4.0)), 4.0 * fa)
    assert torch.equal(tl.flatten(tl.mul(a, b)), fa * fb)
    assert torch.equal(tl.flatten(tl.neg(a)), -fa)
    assert torch.allclose(tl.flatten(tl.lincomb([2.0, -1.0], [a, b])), 2 * fa - fb, rtol=1e-15)


def test_unflatten_round_trip_and_shape_error(pair):
    a, _ = pair
    back = tl.unflatten(tl.flatten(a), a)
    assert all(torch.equal(x, y) for x, y in zip(a, back, strict=True))
    with pytest.raises(
        ValueError, match=r"expected a 1-D tensor with 23 entries, got shape \(22,\)"
    ):
        tl.unflatten(torch.zeros(22, dtype=torch.float64), a)


def test_all_finite_and_clone(pair):
    a, _ = pair
    assert bool(tl.all_finite(a))
    c = tl.clone(a)
    c[1][2] = float("nan")
    assert not bool(tl.all_finite(c))
    assert bool(torch.isfinite(a[1]).all())  # the clone did not alias


@pytest.mark.parametrize("n", [1, 3, 7850])
def test_norm_of_one_tensor_is_its_vector_norm_bit_for_bit(n):
    # the one-tensor fast path (one kernel) must give what the list path gives
    gen = torch.Generator().manual_seed(n)
    for scale in (1e-150, 1.0, 1e150):
        x = torch.randn(n, generator=gen, dtype=torch.float64) * scale
        listed = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([x, x[:0]])))
        assert torch.equal(tl.norm((x,)), listed)
    assert float(tl.norm((torch.tensor(-3.0),))) == 3.0  # a 0-dim tensor


def test_read_floats_gives_each_tensors_own_value():
    # one read for several values: each float is float() of its tensor alone, whatever the
    # mix of dtypes and shapes (0-dim, one-element), NaN and infinities included
    values = [
        torch.tensor(1 / 3, dtype=torch.float32),
        torch.tensor([2 / 3], dtype=torch.float64),
        torch.tensor(0.1, dtype=torch.bfloat16),
        torch.tensor([[float("nan")]], dtype=torch.float16),
        torch.tensor(-float("inf"), dtype=torch.float64),
    ]
    out = tl.read_floats(values)
    assert len(out) == len(values)
    for got, v in zip(out, values, strict=True):
        want = float(v.reshape(()))
        assert got == want or (got != got and want != want)
    same = [torch.tensor(0.1, dtype=torch.float32), torch.tensor(0.2, dtype=torch.float32)]
    assert tl.read_floats(same) == [float(x) for x in same]

"""Complex step through embeddings and attention (issue 12 item 2) vs float64 autograd.

The autograd oracle runs under the math attention kernel: double backward through the
default CPU kernel is not implemented in torch 2.13.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from secondorder import tensorlist as tl
from secondorder.curvature.complex_step import complex_step_directional, complex_step_hvp
from secondorder.curvature.functional import functional_loss
from secondorder.curvature.hvp import gradient, hvp
from secondorder.curvature.vhv import vhv
from secondorder.errors import ComplexStepUnsupportedError

F64 = torch.float64


class TokenTransformer(nn.Module):
    """Embedding -> TransformerEncoder (GELU, batch_first) -> mean pool -> linear."""

    def __init__(self, vocab: int = 11, d_model: int = 64, heads: int = 4, layers: int = 2,
                 classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model, padding_idx=0)
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=32, dropout=0.0,
                                           activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers)
        self.head = nn.Linear(d_model, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(1))


class MaskedTokenTransformer(TokenTransformer):
    """The same with a causal mask and a key padding mask (token 0), masked mean pool."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pad = tokens == 0
        n = tokens.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool).triu(1)  # True: not allowed, as pad
        h = self.encoder(self.embed(tokens), mask=causal, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1))


def _relerr(a, b):
    return float(tl.norm(tl.sub(a, b)) / tl.norm(b))


def _oracle_hvp_vhv(loss_fn, params, vec):
    with sdpa_kernel(SDPBackend.MATH):
        return (hvp(loss_fn, params, vec, backend="autograd"),
                float(vhv(loss_fn, params, vec, backend="autograd")),
                float(tl.dot(gradient(loss_fn, params)[1], vec)))


def _check(loss_fn, params, vec):
    want_hv, want_q, want_gv = _oracle_hvp_vhv(loss_fn, params, vec)
    assert _relerr(complex_step_hvp(loss_fn, params, vec), want_hv) < 1e-10
    got_q = float(vhv(loss_fn, params, vec, backend="complex-step"))
    assert got_q == pytest.approx(want_q, rel=1e-10)
    got_gv = float(complex_step_directional(loss_fn, params, vec))
    assert got_gv == pytest.approx(want_gv, rel=1e-10)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("net", [TokenTransformer, MaskedTokenTransformer],
                         ids=["unmasked", "causal-and-padding-masks"])
def test_transformer_classifier_on_tokens_matches_autograd(net, train):
    torch.manual_seed(0)
    model = net().to(F64).train(train)
    tokens = torch.randint(1, 11, (3, 5))
    tokens[0, -2:] = 0  # padding tokens: their embedding row is a constant
    labels = torch.randint(0, 3, (3,))
    loss_fn, params = functional_loss(model, nn.CrossEntropyLoss(), tokens, labels)
    vec = tuple(torch.randn_like(p) for p in params)
    _check(loss_fn, params, vec)


@pytest.mark.parametrize("masks", ["need-weights-padding-float-mask", "sdpa-causal",
                                   "sdpa-bool-mask", "separate-kv-bias-kv-zero-attn"])
def test_multihead_attention_matches_autograd(masks):
    torch.manual_seed(1)
    kwargs = {"kdim": 5, "vdim": 7} if masks == "separate-kv-bias-kv-zero-attn" else {}
    if masks == "separate-kv-bias-kv-zero-attn":
        kwargs.update(add_bias_kv=True, add_zero_attn=True)
    mha = nn.MultiheadAttention(8, 2, batch_first=True, **kwargs).to(F64)
    q = torch.randn(2, 4, 8, dtype=F64)
    k = torch.randn(2, 6, kwargs.get("kdim", 8), dtype=F64)
    v = torch.randn(2, 6, kwargs.get("vdim", 8), dtype=F64)
    call: dict = {}
    if masks == "need-weights-padding-float-mask":
        padding = torch.tensor([[0.0] * 5 + [float("-inf")], [0.0] * 6], dtype=F64)
        call = {"key_padding_mask": padding,
                "attn_mask": 0.3 * torch.randn(4, 6, dtype=F64)}
    elif masks == "sdpa-causal":
        k, v = torch.randn(2, 4, 8, dtype=F64), torch.randn(2, 4, 8, dtype=F64)
        call = {"need_weights": False, "is_causal": True,
                "attn_mask": nn.Transformer.generate_square_subsequent_mask(4, dtype=F64)}
    elif masks == "sdpa-bool-mask":
        allowed = torch.rand(4, 6) > 0.3
        allowed[:, 0] = True
        call = {"need_weights": False, "attn_mask": ~allowed}
    names = [n for n, _ in mha.named_parameters()]

    def loss_fn(ps):
        out, weights = torch.func.functional_call(mha, dict(zip(names, ps, strict=True)),
                                                  (q, k, v), call)
        loss = (torch.tanh(out) ** 2).sum()
        return loss if weights is None else loss + (weights * weights).sum()

    params = tuple(p.detach() for p in mha.parameters())
    vec = tuple(torch.randn_like(p) for p in params)
    _check(loss_fn, params, vec)


def test_embedding_padding_row_has_no_curvature_and_lookups_match():
    torch.manual_seed(2)
    emb = nn.Embedding(6, 3, padding_idx=2).to(F64)
    tokens = torch.tensor([[1, 2, 2], [5, 0, 2]])

    def loss_fn(ps):
        e = torch.func.functional_call(emb, {"weight": ps[0]}, (tokens,))
        return (e.sum(1) ** 3).sum()

    params = (emb.weight.detach(),)
    vec = (torch.randn_like(params[0]),)
    got = complex_step_hvp(loss_fn, params, vec)
    want = hvp(loss_fn, params, vec)
    assert _relerr(got, want) < 1e-12
    assert torch.count_nonzero(got[0][2]) == 0
    assert float(vhv(loss_fn, params, vec, backend="complex-step")) == pytest.approx(
        float(vhv(loss_fn, params, vec)), rel=1e-12)


def test_exact_gelu_above_the_first_order_step_and_embedding_max_norm_are_refused():
    w = torch.ones(3, dtype=F64)
    with pytest.raises(ComplexStepUnsupportedError, match="exact GELU"):
        complex_step_hvp(lambda ps: nn.functional.gelu(ps[0]).sum(), [w], [w], h=1e-3)
    emb = nn.Embedding(4, 3, max_norm=1.0).to(F64)
    with pytest.raises(ComplexStepUnsupportedError, match="max_norm"):
        complex_step_hvp(
            lambda ps: torch.func.functional_call(emb, {"weight": ps[0]},
                                                  (torch.tensor([1, 2]),)).sum(),
            [emb.weight.detach()], [torch.ones(4, 3, dtype=F64)],
        )

"""The fused loss and norm: same values and gradients as the unfused PyTorch ops they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llamapod.train import fused
from llamapod.train.model import Transformer
from llamapod.shapes import get_preset


def _reference_loss(hidden, weight, targets):
    return F.cross_entropy((hidden @ weight.t()).float(), targets)


def _leaves(*tensors, dtype=torch.float32):
    return [t.detach().to(dtype).requires_grad_() for t in tensors]


@pytest.fixture
def small_chunks(monkeypatch):
    # 37 tokens per chunk over 150 tokens: several full chunks and a ragged last one.
    monkeypatch.setattr(fused, "CPU_CHUNK_LOGITS", 37 * 96)


def _problem(seed=0, tokens=150, dim=24, vocab=96):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(tokens, dim, generator=g), torch.randn(vocab, dim, generator=g) * 0.3,
            torch.randint(0, vocab, (tokens,), generator=g))


def test_linear_cross_entropy_matches_cross_entropy_on_full_logits(small_chunks):
    hidden, weight, targets = _problem()
    h1, w1 = _leaves(hidden, weight)
    h2, w2 = _leaves(hidden, weight)
    expected = _reference_loss(h1, w1, targets)
    (3.0 * expected).backward()  # a scaled loss (gradient accumulation) scales the gradients
    got = fused.linear_cross_entropy(h2, w2, targets)
    (3.0 * got).backward()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h2.grad, h1.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(w2.grad, w1.grad, rtol=1e-5, atol=1e-7)


def test_linear_cross_entropy_without_grad_computes_only_the_loss(small_chunks):
    hidden, weight, targets = _problem(seed=1)
    with torch.no_grad():
        got = fused.linear_cross_entropy(hidden, weight, targets)
    assert not got.requires_grad
    torch.testing.assert_close(got, _reference_loss(hidden, weight, targets), rtol=1e-6, atol=1e-6)


def test_linear_cross_entropy_in_bf16_keeps_fp32_loss_and_input_dtypes(small_chunks):
    hidden, weight, targets = _problem(seed=2)
    h, w = _leaves(hidden, weight, dtype=torch.bfloat16)
    loss = fused.linear_cross_entropy(h, w, targets)
    loss.backward()
    assert loss.dtype == torch.float32
    assert h.grad.dtype == w.grad.dtype == torch.bfloat16
    h32, w32 = _leaves(h, w)
    _reference_loss(h32, w32, targets).backward()
    torch.testing.assert_close(loss, _reference_loss(h32.detach(), w32.detach(), targets), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(w.grad.float(), w32.grad, rtol=5e-2, atol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_the_autograd_formula(dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 7, 32, generator=g)
    weight = torch.rand(32, generator=g) + 0.5
    upstream = torch.randn(4, 7, 32, generator=g)
    x1, w1 = _leaves(x, weight, dtype=dtype)
    x2, w2 = _leaves(x, weight, dtype=dtype)
    x32 = x1.float()
    expected = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5) * w1.float()).to(dtype)
    expected.backward(upstream.to(dtype))
    got = fused.rms_norm(x2, w2, 1e-5)
    got.backward(upstream.to(dtype))
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    assert got.dtype == x2.grad.dtype == w2.grad.dtype == dtype
    torch.testing.assert_close(got, expected, **tol)
    torch.testing.assert_close(x2.grad, x1.grad, **tol)
    torch.testing.assert_close(w2.grad, w1.grad, **tol)


def test_model_loss_equals_cross_entropy_of_its_logits(small_chunks):
    args = get_preset("tiny").replace(vocab_size=96, max_seq_len=32)
    model = Transformer(args)
    model.init_weights(seed=5)
    tokens = torch.randint(0, args.vocab_size, (3, 33), generator=torch.Generator().manual_seed(6))
    # The padding rows (96 -> 128) are not tokens: the loss is over the 96 real ones, as the
    # exported model (which has no padding rows) computes it.
    logits = model(tokens[:, :-1])[..., :args.vocab_size]
    assert model.vocab_padded == 128
    expected = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    loss = model(tokens[:, :-1], targets=tokens[:, 1:])
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)

"""The model, presets, optimizer and schedule: parameter counts, rotary layout, causality."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llamapod.train.model import Transformer, apply_rotary, padded_vocab_size
from llamapod.train.optim import build_optimizer, lr_at
from llamapod.train.presets import PRESETS, count_parameters, flops_per_token, get_preset


def _materialised(args, seed: int = 0) -> Transformer:
    with torch.device("meta"):
        model = Transformer(args)
    model.to_empty(device="cpu")
    model.init_weights(seed=seed)
    return model


def _formula(a) -> int:
    d, hd = a.dim, a.dim // a.n_heads
    return 2 * a.vocab_size * d + a.n_layers * (2 * d * d + 2 * d * a.n_kv_heads * hd + 3 * d * a.ffn_dim + 2 * d) + d


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_matches_the_formula_and_the_built_module(name):
    args = get_preset(name)
    with torch.device("meta"):  # a 70B model costs no memory on the meta device
        model = Transformer(args)
    built = sum(p.numel() for p in model.parameters())
    assert count_parameters(args) == _formula(args) == built  # preset vocabularies are multiples of 64


def test_llama2_7b_has_the_published_parameter_count():
    assert count_parameters(get_preset("llama2-7b")) == 6_738_415_616
    assert count_parameters(get_preset("llama3-8b")) == 8_030_261_248


def test_flops_per_token_follows_the_convention():
    a = get_preset("llama2-7b")
    assert flops_per_token(a, 4096) == 6 * (6_738_415_616 - 32000 * 4096) + 12 * 32 * 4096 * 4096


def test_vocabulary_is_padded_to_a_multiple_of_64():
    assert padded_vocab_size(8000) == 8000 and padded_vocab_size(8001) == 8064 and padded_vocab_size(1) == 64
    model = _materialised(get_preset("tiny").replace(vocab_size=1000))
    assert model.tok_embeddings.weight.shape[0] == 1024 and model.output.weight.shape[0] == 1024


def test_state_dict_names_follow_meta():
    names = set(_materialised(get_preset("tiny").replace(vocab_size=128)).state_dict())
    expected = {"tok_embeddings.weight", "norm.weight", "output.weight"}
    for i in range(2):
        expected |= {f"layers.{i}.attention.{w}.weight" for w in ("wq", "wk", "wv", "wo")}
        expected |= {f"layers.{i}.feed_forward.{w}.weight" for w in ("w1", "w2", "w3")}
        expected |= {f"layers.{i}.attention_norm.weight", f"layers.{i}.ffn_norm.weight"}
    assert names == expected  # rotary tables are buffers, not saved


def test_rotary_rotates_adjacent_pairs_like_metas_complex_form():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 8)
    theta = 10000.0
    freqs = 1.0 / theta ** (torch.arange(0, 8, 2).float() / 8)
    angles = torch.outer(torch.arange(5).float(), freqs)
    ours = apply_rotary(x, torch.cos(angles), torch.sin(angles))
    # Meta's reference: view adjacent pairs as complex numbers and multiply by e^{i·angle}.
    as_complex = torch.view_as_complex(x.reshape(2, 5, 3, 4, 2))
    reference = torch.view_as_real(as_complex * torch.polar(torch.ones_like(angles), angles)[None, :, None, :])
    torch.testing.assert_close(ours, reference.flatten(3), rtol=1e-5, atol=1e-6)


def test_attention_is_causal_and_gqa_matches_repeated_heads():
    args = get_preset("tiny").replace(vocab_size=256, n_kv_heads=2)
    model = _materialised(args).eval()
    tokens = torch.randint(0, 256, (2, 16))
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 256
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    # The same weights as plain multi-head attention with each kv head copied.
    mha = _materialised(args.replace(n_kv_heads=4)).eval()
    state = model.state_dict()
    for i in range(args.n_layers):
        for w in ("wk", "wv"):
            weight = state[f"layers.{i}.attention.{w}.weight"].view(2, 16, 64)
            state[f"layers.{i}.attention.{w}.weight"] = weight.repeat_interleave(2, dim=0).reshape(64, 64)
    mha.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(mha(tokens), a, rtol=1e-4, atol=1e-5)


def test_init_depends_only_on_seed_and_name():
    args = get_preset("tiny").replace(vocab_size=512)
    a, b, c = _materialised(args, 1).state_dict(), _materialised(args, 1).state_dict(), _materialised(args, 2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.0.attention.wq.weight"], c["layers.0.attention.wq.weight"])
    assert not torch.equal(a["layers.0.attention.wq.weight"], a["layers.1.attention.wq.weight"])
    assert torch.equal(a["norm.weight"], torch.ones(64))
    assert a["layers.0.attention.wq.weight"].std().item() == pytest.approx(0.02, rel=0.05)


def test_initial_loss_is_near_a_uniform_guess():
    model = _materialised(get_preset("tiny").replace(vocab_size=4096))
    tokens = torch.randint(0, 4096, (4, 33))
    loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
    assert abs(loss.item() - math.log(4096)) < 1.0


def test_activation_checkpointing_gives_the_same_gradients():
    args = get_preset("tiny").replace(vocab_size=256)
    tokens = torch.randint(0, 256, (2, 17))
    grads = {}
    for mode in ("none", "full", "selective"):
        model = _materialised(args)
        for block in model.layers.values():
            block.checkpointing = mode
        F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()).backward()
        grads[mode] = model.layers["0"].attention.wq.weight.grad
    torch.testing.assert_close(grads["full"], grads["none"])
    torch.testing.assert_close(grads["selective"], grads["none"])


def test_weight_decay_only_on_matrices():
    model = _materialised(get_preset("tiny").replace(vocab_size=128))
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu")
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(no_decay["params"]) == 2 * 2 + 1  # two norms per block, one final norm


def test_schedule_warms_up_then_decays_to_min_lr():
    kw = dict(max_lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=110)
    assert lr_at(0, style="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(9, style="cosine", **kw) == pytest.approx(1.0)
    assert lr_at(60, style="cosine", **kw) == pytest.approx(0.55)
    assert lr_at(110, style="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(60, style="linear", **kw) == pytest.approx(0.55)
    assert lr_at(35, style="linear", **kw) == pytest.approx(1.0 - 0.9 * 0.25)
    assert lr_at(100, style="constant", **kw) == 1.0

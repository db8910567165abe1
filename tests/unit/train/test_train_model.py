"""The model, presets, optimizer and schedule: parameter counts, rotary layout, causality."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llamapod.train.model import Transformer, apply_rotary, padded_vocab_size, rotary_tables
from llamapod.train.optim import build_optimizer, lr_at
from llamapod.shapes import PRESETS, count_parameters, flops_per_token, get_preset


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
    ours = apply_rotary(x, rotary_tables(8, 5, theta))
    # Meta's reference: view adjacent pairs as complex numbers and multiply by e^{i·angle}.
    as_complex = torch.view_as_complex(x.reshape(2, 5, 3, 4, 2))
    reference = torch.view_as_real(as_complex * torch.polar(torch.ones_like(angles), angles)[None, :, None, :])
    torch.testing.assert_close(ours, reference.flatten(3), rtol=1e-5, atol=1e-6)
    # Compiled blocks use the same rotation in real arithmetic.
    from llamapod.train.model import _apply_rotary_real

    torch.testing.assert_close(_apply_rotary_real(x, rotary_tables(8, 5, theta)), ours, rtol=1e-5, atol=1e-6)


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


def test_rotary_table_is_complex_so_mixed_precision_casts_leave_it_exact():
    # FSDP2 casts floating-point forward arguments of a block to bf16; a complex table is
    # not floating point, so positions far into the sequence keep their exact angle.
    table = rotary_tables(128, 4096, 1e4)
    assert table.dtype == torch.complex64 and not torch.is_floating_point(table)
    x = torch.randn(1, 4096, 2, 128, dtype=torch.bfloat16)
    out = apply_rotary(x, table)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), apply_rotary(x.float(), table), rtol=1e-2, atol=1e-2)


def test_initial_weights_do_not_depend_on_the_device():
    # Drawn from the CPU generator whatever the device: a fixed fingerprint of the draws.
    model = _materialised(get_preset("tiny").replace(vocab_size=256), seed=3)
    first = model.layers["0"].attention.wq.weight
    expected = torch.randn(64, 64, generator=torch.Generator().manual_seed(
        int.from_bytes(__import__("hashlib").sha256(b"3:layers.0.attention.wq.weight").digest()[:6], "little")))
    torch.testing.assert_close(first, expected * 0.02)


def _loss_and_grads(model, tokens):
    loss = model(tokens[:, :-1], targets=tokens[:, 1:])
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(mode):
    from llamapod.train.model import clean_name
    from llamapod.train.parallel import apply_activation_checkpointing

    args = get_preset("tiny").replace(vocab_size=256)
    tokens = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(1))
    plain_loss, plain = _loss_and_grads(_materialised(args), tokens)
    wrapped = apply_activation_checkpointing(_materialised(args), mode)
    loss, grads = _loss_and_grads(wrapped, tokens)
    torch.testing.assert_close(loss, plain_loss)
    assert {clean_name(n) for n in grads} == set(plain)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain[clean_name(name)], rtol=1e-5, atol=1e-6)
    # Checkpoints read the same with any mode: the wrapper leaves state-dict names alone.
    assert set(wrapped.state_dict()) == set(_materialised(args).state_dict())


def saved_activation_bytes(model, tokens) -> int:
    """Bytes of tensors created by the forward pass that are still alive when it returns.

    Those are what autograd keeps for backward (activations, checkpointed inputs, the loss's
    gradient buffers); parameters existed before the forward and are not counted.
    """
    import gc
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode

    created: list = []

    class RecordStorages(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in torch.utils._pytree.tree_leaves(out):
                if isinstance(tensor, torch.Tensor):
                    storage = tensor.untyped_storage()
                    created.append((weakref.ref(storage), storage.data_ptr(), storage.nbytes()))
            return out

    with RecordStorages():
        loss = model(tokens[:, :-1], targets=tokens[:, 1:])
    gc.collect()
    alive = {ptr: size for ref, ptr, size in created if ref() is not None}
    del loss
    return sum(alive.values())


def test_activation_checkpointing_really_saves_activation_memory():
    from llamapod.train.parallel import apply_activation_checkpointing

    args = get_preset("tiny").replace(vocab_size=256, n_layers=4, dim=128, n_heads=4, n_kv_heads=4, ffn_dim=512,
                                      max_seq_len=256)
    tokens = torch.randint(0, 256, (4, 257), generator=torch.Generator().manual_seed(2))
    saved = {mode: saved_activation_bytes(apply_activation_checkpointing(_materialised(args), mode), tokens)
             for mode in ("none", "selective", "full")}
    block_input = 4 * 256 * 128 * 4  # one fp32 [batch, seq, dim] tensor
    # Full: about one block input per block is kept, against a dozen activations per block
    # without checkpointing; selective keeps the matmul outputs, in between.
    assert saved["full"] < saved["selective"] < saved["none"], saved
    assert saved["none"] - saved["full"] > 4 * 8 * block_input, saved


def test_weight_decay_only_on_matrices():
    model = _materialised(get_preset("tiny").replace(vocab_size=128))
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu")
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(no_decay["params"]) == 2 * 2 + 1  # two norms per block, one final norm


def test_schedule_warms_up_then_decays_to_min_lr():
    kw = dict(max_lr=1.0, min_lr=0.1, warmup_steps=10, decay_steps=110)
    assert lr_at(0, style="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(9, style="cosine", **kw) == pytest.approx(1.0)
    assert lr_at(60, style="cosine", **kw) == pytest.approx(0.55)
    assert lr_at(110, style="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(60, style="linear", **kw) == pytest.approx(0.55)
    assert lr_at(35, style="linear", **kw) == pytest.approx(1.0 - 0.9 * 0.25)
    assert lr_at(100, style="constant", **kw) == 1.0

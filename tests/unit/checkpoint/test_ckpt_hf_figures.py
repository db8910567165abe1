"""The figures a run reports mean the same in transformers: the loss, and the model's epsilon."""

from __future__ import annotations

import pytest
import torch

from llamapod.errors import CheckpointError
from llamapod.train.hf import load_hf_weights
from llamapod.train.model import ModelArgs, Transformer

transformers = pytest.importorskip("transformers")

# 1000 tokens: the model pads its embedding and output rows to 1024.
ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=1000, ffn_dim=160,
                 rope_theta=10000.0, max_seq_len=32, norm_eps=1e-5)


def _hf_llama(path, norm_eps: float = 1e-5):
    config = transformers.LlamaConfig(
        vocab_size=ARGS.vocab_size, hidden_size=ARGS.dim, intermediate_size=ARGS.ffn_dim,
        num_hidden_layers=ARGS.n_layers, num_attention_heads=ARGS.n_heads, num_key_value_heads=ARGS.n_kv_heads,
        max_position_embeddings=ARGS.max_seq_len, rms_norm_eps=norm_eps, rope_theta=ARGS.rope_theta,
        tie_word_embeddings=False)
    torch.manual_seed(5)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    return model


def test_training_loss_equals_the_loss_transformers_computes_for_the_same_weights(tmp_path):
    reference = _hf_llama(tmp_path / "hf")
    model = Transformer(ARGS)
    model.init_weights(seed=0)
    load_hf_weights(model, tmp_path / "hf")
    # Give the padding rows weights, as training would if they took part in the softmax:
    # the loss must still ignore them.
    with torch.no_grad():
        model.output.weight[ARGS.vocab_size:] = 0.5
    tokens = torch.randint(0, ARGS.vocab_size, (3, 25), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        theirs = reference(tokens, labels=tokens).loss
        ours = model(tokens[:, :-1], targets=tokens[:, 1:])
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-4)


def test_a_hugging_face_model_with_another_norm_epsilon_is_refused(tmp_path):
    _hf_llama(tmp_path / "hf", norm_eps=1e-6)
    model = Transformer(ARGS)
    model.init_weights(seed=0)
    with pytest.raises(CheckpointError) as info:
        load_hf_weights(model, tmp_path / "hf")
    assert "norm_eps=1e-06" in str(info.value) and "norm_eps=1e-05" in str(info.value)

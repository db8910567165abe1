"""Hugging Face interop against the real ``transformers`` LlamaForCausalLM (fp32, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llamapod.errors import CheckpointError
from llamapod.train.checkpoint import CheckpointManager
from llamapod.train.hf import hf_to_meta_rows, load_hf_weights, meta_to_hf_rows
from llamapod.train.model import ModelArgs, Transformer

transformers = pytest.importorskip("transformers")

# vocab 1000 is padded to 1024 rows in our model: the export/import must handle the padding.
ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=1000, ffn_dim=160,
                 rope_theta=10000.0, max_seq_len=32, norm_eps=1e-5)
TOKENS = torch.randint(0, ARGS.vocab_size, (2, 24), generator=torch.Generator().manual_seed(3))


def hf_random_llama(path: Path, args: ModelArgs = ARGS):
    config = transformers.LlamaConfig(
        vocab_size=args.vocab_size, hidden_size=args.dim, intermediate_size=args.ffn_dim,
        num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads, num_key_value_heads=args.n_kv_heads,
        max_position_embeddings=args.max_seq_len, rms_norm_eps=args.norm_eps, rope_theta=args.rope_theta,
        tie_word_embeddings=False)
    torch.manual_seed(11)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    return model


def our_logits(model: Transformer) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(TOKENS)[..., : ARGS.vocab_size]


def test_ckpt_rotary_row_permutation_round_trips():
    weight = torch.arange(8 * 3, dtype=torch.float32).reshape(8, 3)  # 2 heads of head_dim 4
    hf = meta_to_hf_rows(weight, heads=2)
    # Meta rows within a head are (pair0.x, pair0.y, pair1.x, pair1.y); HF puts the x halves first.
    assert hf[:4, 0].tolist() == [0.0, 6.0, 3.0, 9.0]
    assert torch.equal(hf_to_meta_rows(hf, heads=2), weight)


def test_ckpt_import_transformers_llama_gives_same_logits(tmp_path):
    reference = hf_random_llama(tmp_path / "hf")
    model = Transformer(ARGS)
    model.init_weights(seed=0)
    load_hf_weights(model, tmp_path / "hf")
    with torch.no_grad():
        expected = reference(TOKENS).logits
    assert (our_logits(model) - expected).abs().max().item() <= 1e-4
    assert torch.count_nonzero(model.output.weight[ARGS.vocab_size:]) == 0  # padding rows


def test_ckpt_export_loads_in_transformers_with_same_logits(tmp_path, run_cli):
    model = Transformer(ARGS)
    model.init_weights(seed=4)
    optimizer = torch.optim.AdamW(model.parameters())
    meta = {"model_args": ARGS.to_dict(), "tokenizer": "not-loadable", "tokenizer_spec": str(tmp_path / "no-such.json")}
    CheckpointManager(tmp_path / "ck").save(8, model, optimizer, meta)

    code, out, err = run_cli("export", "--checkpoint", str(tmp_path / "ck"), "--hf", str(tmp_path / "hf"),
                             "--max-shard-size", "200KB", "--consolidated", str(tmp_path / "model.pt"))
    assert code == 0, err
    assert out.splitlines() == [str(tmp_path / "hf"), str(tmp_path / "model.pt")]
    assert "exporting without tokenizer files" in err
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded

    exported = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        theirs = exported(TOKENS).logits
    assert (theirs - our_logits(model)).abs().max().item() <= 1e-4

    single = torch.load(tmp_path / "model.pt", weights_only=True)
    assert single["model_args"] == ARGS.to_dict() and single["meta"]["step"] == 8
    assert torch.equal(single["model"]["layers.1.attention.wq.weight"], model.layers["1"].attention.wq.weight)


def test_ckpt_export_without_target_is_an_error(tmp_path, run_cli):
    code, _, err = run_cli("export", "--checkpoint", str(tmp_path))
    assert code == 2
    assert err.splitlines()[0] == "error: nothing to export: pass --hf OUT_DIR and/or --consolidated OUT.pt"


def test_ckpt_export_of_empty_folder_is_an_error(tmp_path, run_cli):
    code, _, err = run_cli("export", "--checkpoint", str(tmp_path), "--hf", str(tmp_path / "out"))
    assert code == 1
    assert err.splitlines()[0] == f"error: {tmp_path} holds no complete checkpoint"


def test_ckpt_import_shape_mismatch_names_both_sides(tmp_path):
    hf_random_llama(tmp_path / "hf")
    model = Transformer(ARGS.replace(n_layers=3, ffn_dim=128))
    model.init_weights()
    with pytest.raises(CheckpointError) as info:
        load_hf_weights(model, tmp_path / "hf")
    assert str(info.value) == (f"Hugging Face model {tmp_path / 'hf'} does not match this run's model: it has "
                               f"n_layers=2, ffn_dim=160; this run builds n_layers=3, ffn_dim=128")


def test_ckpt_import_truncated_safetensors(tmp_path):
    hf_random_llama(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    model = Transformer(ARGS)
    model.init_weights()
    with pytest.raises(CheckpointError, match=r"^weights file .*model.safetensors is corrupted or truncated"):
        load_hf_weights(model, tmp_path / "hf")


def _saved_checkpoint(path: Path, seed: int) -> Transformer:
    model = Transformer(ARGS)
    model.init_weights(seed=seed)
    meta = {"model_args": ARGS.to_dict(), "tokenizer": "not-loadable", "tokenizer_spec": str(path / "no-such.json")}
    CheckpointManager(path).save(seed, model, torch.optim.AdamW(model.parameters()), meta)
    return model


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_ckpt_export_refuses_to_overwrite_and_force_replaces_the_whole_model(tmp_path, run_cli, umask):
    import os

    previous = os.umask(umask)
    try:
        _saved_checkpoint(tmp_path / "old", seed=1)
        newer = _saved_checkpoint(tmp_path / "new", seed=2)
        hf = tmp_path / "hf"
        code, _, err = run_cli("export", "--checkpoint", str(tmp_path / "old"), "--hf", str(hf),
                               "--max-shard-size", "200KB")
        assert code == 0, err
        (hf / "README.md").write_text("notes about this model\n")
        before = _snapshot(hf)

        code, out, err = run_cli("export", "--checkpoint", str(tmp_path / "new"), "--hf", str(hf))
        assert (code, out) == (1, "")
        assert err.splitlines()[-2:] == [
            f"error: export target {hf} already holds a Hugging Face model",
            "  hint: pass --force to replace its weights, index and config (other files are kept), "
            "or choose a new folder"]
        assert _snapshot(hf) == before, "nothing was touched"

        # One file instead of shards: the old shards and their index must not survive.
        code, _, err = run_cli("export", "--checkpoint", str(tmp_path / "new"), "--hf", str(hf), "--force")
        assert code == 0, err
        assert sorted(p.name for p in hf.iterdir()) == ["README.md", "config.json", "generation_config.json",
                                                         "model.safetensors"]
        assert (hf / "README.md").read_text() == "notes about this model\n"
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no staging folder left"
        modes = {p.name: p.stat().st_mode & 0o777 for p in hf.iterdir() if p.name != "README.md"}
        assert set(modes.values()) == {0o666 & ~umask}, modes
        assert hf.stat().st_mode & 0o777 == 0o777 & ~umask
        exported = transformers.LlamaForCausalLM.from_pretrained(hf).eval()
        with torch.no_grad():
            assert (exported(TOKENS).logits - our_logits(newer)).abs().max().item() <= 1e-4
    finally:
        os.umask(previous)


def test_ckpt_export_refuses_a_folder_that_is_not_a_model_even_with_force(tmp_path, run_cli):
    _saved_checkpoint(tmp_path / "ck", seed=1)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    for extra in ([], ["--force"]):
        code, _, err = run_cli("export", "--checkpoint", str(tmp_path / "ck"), "--hf", str(tmp_path / "mine"), *extra)
        assert code == 1
        assert err.splitlines()[-2:] == [
            f"error: export target {tmp_path / 'mine'} is not empty and is not a Hugging Face model folder",
            "  hint: choose a new or empty folder (nothing there is overwritten)"]
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["thesis.tex"]

    code, _, err = run_cli("export", "--checkpoint", str(tmp_path / "ck"), "--consolidated", str(tmp_path / "m.pt"))
    assert code == 0, err
    saved = (tmp_path / "m.pt").read_bytes()
    code, _, err = run_cli("export", "--checkpoint", str(tmp_path / "ck"), "--consolidated", str(tmp_path / "m.pt"))
    assert code == 1 and err.splitlines()[-2] == f"error: export target {tmp_path / 'm.pt'} already exists"
    assert (tmp_path / "m.pt").read_bytes() == saved

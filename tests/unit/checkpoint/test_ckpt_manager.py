"""CheckpointManager in one process: atomic layout, retention, async save, RNG, and bad folders.

Real DCP writes to a real temporary folder; nothing is mocked. Multi-rank saving and
resharding are in tests/integration/checkpoint/.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

from llamapod.errors import CheckpointError, ConfigError
from llamapod.train.checkpoint import CheckpointManager, find_latest, load_model_state_for_inference
from llamapod.train.model import ModelArgs, Transformer

ARGS = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=100, ffn_dim=64, max_seq_len=16)


def build(args: ModelArgs = ARGS, seed: int = 0) -> tuple[Transformer, torch.optim.Optimizer]:
    model = Transformer(args)
    model.init_weights(seed=seed)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def train_steps(model: Transformer, optimizer: torch.optim.Optimizer, steps: int, start: int = 0) -> list[float]:
    losses = []
    for step in range(start, start + steps):
        tokens = torch.randint(0, ARGS.vocab_size, (2, 9), generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def meta_for(args: ModelArgs = ARGS, tokenizer: str = "bpe-test") -> dict:
    return {"model_args": args.to_dict(), "tokenizer": tokenizer, "data": {"position": 12, "epoch": 0}}


def test_ckpt_save_layout_meta_and_exact_resume(tmp_path):
    model, optimizer = build()
    train_steps(model, optimizer, 3)
    manager = CheckpointManager(tmp_path / "ck")
    manager.save(3, model, optimizer, meta_for())
    step_dir = tmp_path / "ck" / "step_00000003"
    assert manager.latest() == step_dir
    assert {".metadata", "meta.json", "COMPLETE", "rng"} <= {p.name for p in step_dir.iterdir()}
    meta = json.loads((step_dir / "meta.json").read_text())
    assert meta["step"] == 3 and meta["world_size"] == 1 and meta["data"] == {"position": 12, "epoch": 0}
    continued = train_steps(model, optimizer, 2, start=3)

    fresh, fresh_opt = build(seed=7)
    loaded = CheckpointManager(tmp_path / "ck").load(tmp_path / "ck", fresh, fresh_opt, tokenizer="bpe-test")
    assert loaded["step"] == 3 and loaded["tokenizer"] == "bpe-test"
    assert train_steps(fresh, fresh_opt, 2, start=3) == continued


def test_ckpt_rng_streams_continue_after_load(tmp_path):
    model, optimizer = build()
    manager = CheckpointManager(tmp_path)
    torch.manual_seed(123)
    random.seed(5)
    manager.save(1, model, optimizer, meta_for())
    expected = (torch.rand(3).tolist(), random.random())
    torch.manual_seed(999)
    random.seed(999)
    manager.load(tmp_path, model, optimizer)
    assert (torch.rand(3).tolist(), random.random()) == expected


def test_ckpt_partial_steps_are_ignored_with_one_warning(tmp_path, warnings_reported):
    model, optimizer = build()
    manager = CheckpointManager(tmp_path)
    manager.save(2, model, optimizer, meta_for())
    (tmp_path / "step_00000004.tmp").mkdir()  # a save killed half-way
    (tmp_path / "step_00000003").mkdir()  # a partial copy: no marker
    warnings_reported.clear()
    assert manager.latest() == tmp_path / "step_00000002"
    assert warnings_reported == [f"ignoring 2 incomplete checkpoint(s) in {tmp_path} (interrupted saves, no COMPLETE "
                                 f"marker): step_00000003, step_00000004.tmp"]


def test_ckpt_empty_missing_and_foreign_folders(tmp_path):
    assert find_latest(tmp_path / "does-not-exist") is None
    assert find_latest(tmp_path) is None
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError) as info:
        find_latest(tmp_path)
    assert str(info.value) == f"{tmp_path} is not a llamapod checkpoint folder: it holds no step_<N> checkpoints (notes.txt)"


def test_ckpt_a_folder_of_runs_suggests_the_newest_runs_checkpoints(tmp_path):
    model, optimizer = build()
    for run in ("run-a", "run-b"):
        CheckpointManager(tmp_path / "runs" / run / "checkpoints").save(1, model, optimizer, meta_for())
    (tmp_path / "runs" / "run-c").mkdir()  # a run that saved nothing yet
    with pytest.raises(CheckpointError) as info:
        find_latest(tmp_path / "runs")
    assert info.value.hint == (f"did you mean {tmp_path / 'runs' / 'run-b' / 'checkpoints'}? "
                               "(a run's checkpoints are in its checkpoints/ folder)")


def test_ckpt_keep_last_retains_newest(tmp_path):
    model, optimizer = build()
    manager = CheckpointManager(tmp_path, keep_last=2)
    (tmp_path / "step_00000001.tmp").mkdir(parents=True)  # left by a killed process
    for step in (1, 2, 3, 4):
        manager.save(step, model, optimizer, meta_for())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000003", "step_00000004"]
    with pytest.raises(ConfigError, match="keep_last must be at least 1"):
        CheckpointManager(tmp_path, keep_last=0)


def test_ckpt_resaving_a_step_replaces_it(tmp_path):
    model, optimizer = build()
    manager = CheckpointManager(tmp_path)
    manager.save(5, model, optimizer, meta_for())
    train_steps(model, optimizer, 1)
    manager.save(5, model, optimizer, meta_for())
    _, state, _ = load_model_state_for_inference(tmp_path)
    assert torch.equal(state["norm.weight"], model.norm.weight.detach())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000005"]


def test_ckpt_async_save_captures_state_at_call_time(tmp_path):
    model, optimizer = build()
    manager = CheckpointManager(tmp_path, async_save=True)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    manager.save(1, model, optimizer, meta_for())
    train_steps(model, optimizer, 2)  # training goes on while the save is written
    manager.wait()
    _, state, meta = load_model_state_for_inference(tmp_path)
    assert meta["step"] == 1
    for name, tensor in before.items():
        assert torch.equal(state[name], tensor), name


def test_ckpt_inference_load_without_distributed(tmp_path):
    model, optimizer = build()
    CheckpointManager(tmp_path).save(4, model, optimizer, meta_for())
    args, state, meta = load_model_state_for_inference(tmp_path / "step_00000004")
    assert args == ARGS and meta["step"] == 4
    reference = model.state_dict()
    assert set(state) == set(reference)
    assert all(torch.equal(state[k], reference[k]) for k in state)


# ---- bad checkpoints: one line each ----------------------------------------------------


@pytest.fixture
def saved(tmp_path) -> Path:
    model, optimizer = build()
    CheckpointManager(tmp_path).save(6, model, optimizer, meta_for())
    return tmp_path / "step_00000006"


def load_error(path: Path, args: ModelArgs = ARGS, tokenizer: str = "bpe-test") -> CheckpointError:
    model, optimizer = build(args)
    with pytest.raises(CheckpointError) as info:
        CheckpointManager(path.parent).load(path, model, optimizer, tokenizer=tokenizer)
    return info.value


def test_ckpt_truncated_shard(saved):
    shard = max(saved.glob("*.distcp"), key=lambda p: p.stat().st_size)
    size = shard.stat().st_size
    os.truncate(shard, size // 2)
    error = load_error(saved)
    assert str(error) == f"checkpoint {saved} is corrupted: shard {shard.name} is truncated ({size // 2} of {size} bytes)"
    assert error.hint == f"delete {saved}; no older complete checkpoint exists, so training would start fresh"


def test_ckpt_missing_metadata(saved):
    (saved / ".metadata").unlink()
    assert str(load_error(saved)) == f"checkpoint {saved} is corrupted: its tensor index .metadata is missing"


def test_ckpt_garbled_metadata(saved):
    (saved / ".metadata").write_bytes(b"\x80\x04not a pickle")
    assert str(load_error(saved)) == (f"checkpoint {saved} is corrupted: its tensor index .metadata cannot be read "
                                      f"(UnpicklingError)")


def test_ckpt_missing_marker_names_older_checkpoint(saved):
    model, optimizer = build()
    CheckpointManager(saved.parent).save(9, model, optimizer, meta_for())
    newest = saved.parent / "step_00000009"
    (newest / "COMPLETE").unlink()
    error = load_error(newest)
    assert str(error) == f"checkpoint {newest} is partial: it has no COMPLETE marker (its save was interrupted)"
    assert error.hint == f"delete {newest} to resume from the previous complete checkpoint step_00000006"


def test_ckpt_model_shape_mismatch_names_both_sides(saved):
    wider = ARGS.replace(dim=64, ffn_dim=128)
    assert str(load_error(saved, wider)) == (
        f"checkpoint {saved} holds a different model shape: checkpoint has dim=32, ffn_dim=64; "
        f"this run builds dim=64, ffn_dim=128")


def test_ckpt_tokenizer_mismatch_names_both_sides(saved):
    assert str(load_error(saved, tokenizer="llama3")) == (
        f"checkpoint {saved} was trained with tokenizer 'bpe-test' but this run uses 'llama3'")


def test_ckpt_unreadable_folder(saved):
    if os.geteuid() == 0:
        pytest.skip("root reads every file regardless of permissions")
    saved.parent.chmod(0)
    try:
        with pytest.raises(CheckpointError, match="permission denied"):
            find_latest(saved.parent)
    finally:
        saved.parent.chmod(0o755)


def test_ckpt_path_that_is_a_file(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"x")
    with pytest.raises(CheckpointError) as info:
        find_latest(target)
    assert str(info.value) == f"checkpoint path {target} is a file, not a folder"


def test_ckpt_folder_of_only_interrupted_saves_starts_fresh_with_a_warning(tmp_path, warnings_reported):
    (tmp_path / "step_00000005.tmp").mkdir()
    assert find_latest(tmp_path) is None
    assert len(warnings_reported) == 1 and "ignoring 1 incomplete checkpoint(s)" in warnings_reported[0]


def test_ckpt_same_tokenizer_loaded_another_way_is_compatible():
    from llamapod.train.checkpoint import same_tokenizer

    assert same_tokenizer("tokenizer.json@0123456789ab", "my-llama-folder@0123456789ab")
    assert not same_tokenizer("tokenizer.json@0123456789ab", "tokenizer.json@ba9876543210")
    assert not same_tokenizer("gpt2", "llama")


def test_ckpt_async_save_settles_the_devices_of_the_state_before_staging(tmp_path, monkeypatch):
    # On a GPU the stager copies on a stream of its own: the training stream is drained first.
    import llamapod.train.checkpoint.manager as manager_module

    order = []
    monkeypatch.setattr(manager_module, "settle_device_writes", lambda devices: order.append(("settle", devices)))
    real_async_save = manager_module.dcp.async_save
    monkeypatch.setattr(manager_module.dcp, "async_save",
                        lambda *a, **k: order.append(("stage", None)) or real_async_save(*a, **k))
    model, optimizer = build()
    manager = CheckpointManager(tmp_path, async_save=True)
    manager.save(1, model, optimizer, meta_for())
    manager.close()
    assert order == [("settle", {torch.device("cpu")}), ("stage", None)]
    assert find_latest(tmp_path).name == "step_00000001"

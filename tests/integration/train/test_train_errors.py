"""Bad input to `llamapod train` / `python -m llamapod worker`: one line, exit != 0, nothing overwritten.

Runs the real CLI and the real worker in this process (a world of one over gloo) to keep
start-up costs out of the test budget.
"""

from __future__ import annotations

import json
import socket

import pytest

# --max_context_width makes these jobs the reference's: name the built-in data offline.
TINY = ["--preset", "tiny", "--max_context_width", "32", "--train_batch_size", "2", "--validation_batches", "1",
        "--val_batch_size", "2", "--logging_freq", "1", "--dataset", "default", "--tokenizer", "default"]


@pytest.fixture
def world_of_one(monkeypatch, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                        "GROUP_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _worker(capsys, *argv: str) -> tuple[int, str, str]:
    from llamapod.cli.worker import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("argv, lines", [
    (["--max_steps", "-5"], ["error: --max_steps: must be >= 1 (got -5)",
                             "  hint: see `llamapod train --help` for what --max_steps accepts"]),
    (["--hidden_width", "96", "--num_heads", "5"], [
        "error: hidden width 96 is not divisible by num_heads 5",
        "  hint: pick --num_heads that divides --hidden_width (head size = hidden_width / num_heads)"]),
    (["--num_heads", "8", "--num_key_value_heads", "3"], [
        "error: num_heads 8 is not divisible by num_key_value_heads 3",
        "  hint: pick --num_key_value_heads that divides --num_heads (each key/value head serves a group of query heads)"]),
    (["--preset", "llama-7b"], ["error: unknown preset 'llama-7b'",
                                "  hint: did you mean 'llama2-7b'? choose one of: tiny, small, llama-1b, llama2-7b, "
                                "llama2-13b, llama2-70b, llama3-8b, llama3-70b, reference-default"]),
    (["--lerning_rate", "3e-4"], ["error: unknown flag --lerning_rate", "  hint: did you mean --learning_rate?"]),
    (["--dry_run"], ["error: unknown flag --dry_run", "  hint: did you mean --dry-run?"]),
])
def test_cli_rejects_bad_flags_in_one_line(run_cli, tmp_path, monkeypatch, argv, lines):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("train", *argv)
    assert code == 2 and out == ""
    assert err.splitlines() == lines
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_cli_reports_missing_and_broken_config(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("train", "--config", "missing.toml")
    assert code == 2
    assert err.splitlines()[0] == "error: config file missing.toml does not exist"
    (tmp_path / "llamapod.toml").write_text("[train]\nmax_steps = 'many'\n")
    code, _, err = run_cli("train", "--config", "llamapod.toml")
    assert code == 2
    assert err.splitlines()[0] == ("error: [train] max_steps in llamapod.toml: must be a valid integer, "
                                   "unable to parse string as an integer (got many)")


def test_worker_rejects_a_mesh_that_does_not_fit_the_world(world_of_one, capsys, monkeypatch):
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    code, _, err = _worker(capsys, *TINY, "--sharding_strategy", "hybrid")
    assert code == 1
    assert err.splitlines() == [
        "error: hybrid sharding needs nodes * gpus_per_node == world_size, but nodes(2) * gpus_per_node(1) "
        "!= world_size(1)",
        "  hint: start the same number of workers on every node, or use --sharding_strategy full"]


def test_checkpoints_of_another_shape_or_run_are_refused_and_kept(world_of_one, capsys):
    code, _, err = _worker(capsys, *TINY, "--max_steps", "2", "--run_dir", "run", "--checkpoint_dir", "ckpt")
    assert code == 0, err
    before = sorted(str(p) for p in (world_of_one / "ckpt").rglob("*"))
    metrics_before = (world_of_one / "run" / "metrics.jsonl").read_text()

    code, _, err = _worker(capsys, *TINY, "--hidden_width", "128", "--max_steps", "4", "--run_dir", "run",
                           "--checkpoint_dir", "ckpt", "--resume_from_checkpoint", "ckpt")
    assert code == 1
    assert err.splitlines() == [
        "error: checkpoint ckpt/step_00000002 holds a different model shape: checkpoint has dim=64; "
        "this run builds dim=128",
        "  hint: use the checkpoint's model flags to resume it, or a new --checkpoint_dir to start fresh"]

    code, _, err = _worker(capsys, *TINY, "--max_steps", "4", "--run_dir", "run2", "--checkpoint_dir", "ckpt")
    assert code == 1
    assert err.splitlines() == [
        "error: checkpoint folder ckpt already holds checkpoints (step_00000002)",
        "  hint: pass --resume_from_checkpoint ckpt to continue that run, or choose another --checkpoint_dir / --run_dir"]
    assert sorted(str(p) for p in (world_of_one / "ckpt").rglob("*")) == before
    assert (world_of_one / "run" / "metrics.jsonl").read_text() == metrics_before
    assert not (world_of_one / "run2" / "metrics.jsonl").exists()


def test_sample_continues_a_prompt_from_a_checkpoint(world_of_one, capsys, run_cli):
    code, _, err = _worker(capsys, *TINY, "--max_steps", "3", "--run_dir", "run")
    assert code == 0, err
    assert json.loads((world_of_one / "run" / "metrics.jsonl").read_text().splitlines()[-1])["event"] == "done"
    code, out, err = run_cli("sample", "--checkpoint", "run/checkpoints", "--prompt", "def main(",
                             "--max-new-tokens", "12", "--temperature", "0")
    assert code == 0, err
    assert out.startswith("def main(") and len(out) > len("def main(\n")
    assert "step 3 of a " in err

    # The KV cache gives the logits of re-running the full model on the growing text.
    import torch

    from llamapod.train.sample import _forward_cached, _KVCache, load_for_inference

    model, tokenizer, _ = load_for_inference("run/checkpoints")
    ids = tokenizer.encode("import os")
    cache = _KVCache(model, 1, "cpu")
    with torch.no_grad():
        cached = _forward_cached(model, torch.tensor([ids]), 0, cache)
        for _ in range(6):
            full = model(torch.tensor([ids]))[0, -1]
            torch.testing.assert_close(cached[0], full, rtol=1e-4, atol=1e-4)
            ids.append(int(full[: tokenizer.vocab_size].argmax()))
            cached = _forward_cached(model, torch.tensor([ids[-1:]]), len(ids) - 1, cache)


def test_sample_reports_a_missing_checkpoint(run_cli, tmp_path):
    code, out, err = run_cli("sample", "--checkpoint", str(tmp_path / "none"), "--prompt", "x")
    assert code == 1 and out == ""
    assert err.splitlines()[-2:] == [f"error: checkpoint {tmp_path / 'none'} does not exist",
                                     "  hint: pass a step_<N> folder or the folder that holds them"]


def test_resuming_a_finished_run_is_success_with_nothing_left_to_train(world_of_one, capsys):
    # A Slurm requeue or HyperPod auto-resume can land after the final checkpoint was written.
    args = [*TINY, "--max_steps", "2", "--run_dir", "run", "--resume_from_checkpoint", "run/checkpoints"]
    code, _, err = _worker(capsys, *args)
    assert code == 0, err
    code, _, err = _worker(capsys, *args)
    assert code == 0, err
    assert "nothing left to train: the checkpoint is already at step 2 of 2" in err

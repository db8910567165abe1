"""The real CLI with broken and hostile inputs of every kind llamapod validates: names that leave
the state folder, option-looking ssh users and hosts, newlines in names and paths, unknown
tables, booleans for numbers, non-finite flags.

Each must end in one error line (a hint and a list of problems may follow), an exit code that
is not 70 (internal error), nothing run, and every file as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

REMOTE = '[remote]\nhost = "127.0.0.1"\nport = 22\n'

# (name, arguments, llamapod.toml or None, exit code)
CASES = [
    ("status-traversal", ["status", "../../x"], None, 2),
    ("down-traversal", ["down", "--yes", "../../x"], None, 2),
    ("status-newline", ["status", "demo\nx"], None, 2),
    ("status-option", ["status", "--region", "us-east-1", "--", "-x"], None, 2),
    ("status-region-newline", ["status", "demo", "--region", "us-east-1\nx"], None, 2),
    ("down-region-option", ["down", "demo", "--region", "-x"], None, 2),
    ("status-config-name", ["status"], '[cluster]\nname = "../../x"\n', 2),
    ("ssh-user-option", ["ssh", "--cluster", "demo", "--", "true"],
     REMOTE + 'user = "-oProxyCommand=touch pwned"\n', 2),
    ("ssh-host-option", ["ssh", "--cluster", "demo", "--", "true"],
     '[remote]\nhost = "-oProxyCommand=touch pwned"\n', 2),
    ("ssh-user-newline", ["ssh", "--cluster", "demo"], REMOTE + 'user = "ubuntu\\nProxyCommand touch pwned"\n', 2),
    ("ssh-port-bool", ["ssh", "--cluster", "demo"], '[remote]\nhost = "127.0.0.1"\nport = true\n', 2),
    ("ssh-profile-percent", ["ssh", "--cluster", "demo"], REMOTE + 'profile = "a%b"\n', 2),
    ("ssh-fsx-newline", ["ssh", "--cluster", "demo"], REMOTE + 'fsx_root = "/fsx\\n"\n', 2),
    ("ssh-remote-typo", ["ssh", "--cluster", "demo"], '[remote]\nhots = "127.0.0.1"\n', 2),
    ("ssh-config-cluster-newline", ["ssh", "--config", "--cluster", "demo\nHost *\n  ProxyCommand touch pwned"],
     REMOTE, 2),
    ("ssh-cluster-user-newline", ["ssh", "--cluster", "demo"], REMOTE + '[cluster]\ncluster_user = "ubuntu\\n"\n', 2),
    ("jobs-cluster-option", ["jobs", "--cluster", "-oProxyCommand=touch pwned"], None, 2),
    ("pull-cluster-traversal", ["pull", "--cluster", "../../x", "run1"], None, 2),
    ("train-cluster-traversal", ["train", "--cluster", "../x", "--max_steps", "1"], None, 2),
    ("plan-unknown-table", ["plan"], '[clustr]\nname = "mine"\n', 2),
    ("plan-name-newline", ["plan"], '[cluster]\nname = "nlx\\n"\n', 2),
    ("plan-user-newline", ["plan"], '[cluster]\ncluster_user = "ubuntu\\n"\n', 2),
    ("plan-count-bool", ["plan"],
     '[cluster.controller]\nname = "c"\ninstance_type = "ml.c5.xlarge"\ncount = true\n', 2),
    ("plan-capacity-inf", ["plan"], "[cluster.fsx]\ncapacity_gib = inf\n", 2),
    ("plan-login-typo", ["plan"], '[cluster.login]\nname = "l"\ninstance_tpye = "ml.m5.4xlarge"\n', 2),
    ("up-name-option", ["up", "--name", "-oProxyCommand=x"], None, 2),
    ("init-name-newline", ["init", "--name", "a\nb"], None, 2),
    ("train-slurm-checkpoint-newline", ["train", "--slurm", "--dry-run", "--checkpoint_dir", "x\ntouch pwned"],
     None, 2),
    ("train-slurm-run-dir-comment", ["train", "--slurm", "--dry-run", "--run_dir", "/tmp/r#SBATCH"], None, 2),
    ("train-slurm-partition-newline", ["train", "--slurm", "--dry-run", "--partition", "dev\n"], None, 2),
    ("train-slurm-nodes-bool", ["train", "--slurm", "--dry-run"], "[slurm]\nnodes = true\n", 2),
    ("train-slurm-unknown-table", ["train", "--slurm", "--dry-run"], "[slrum]\nnodes = 2\n", 2),
    ("logs-job-newline", ["logs", "1\n2"], None, 1),
    ("cancel-job-option", ["cancel", "--", "-1"], None, 1),
    ("sample-temperature-nan", ["sample", "--checkpoint", "ckpt", "--temperature", "nan"], None, 2),
    ("sample-temperature-inf", ["sample", "--checkpoint", "ckpt", "--temperature", "inf"], None, 2),
    ("sample-seed-overflow", ["sample", "--checkpoint", "ckpt", "--seed", str(2**64)], None, 2),
    ("data-shard-inf", ["data", "prepare", "src.txt", "--out", "out", "--shard-mb", "inf"], None, 2),
    # Shapes past any trainable model: refused while the flags are read, before torch allocates.
    ("train-width-2**63", ["train", "--preset", "tiny", "--hidden_width", str(2**63)], None, 2),
    ("train-vocab-2**63", ["train", "--preset", "tiny", "--vocab_size", str(2**63)], None, 2),
    ("train-layers-2**63", ["train", "--preset", "tiny", "--num_layers", str(2**63)], None, 2),
    ("train-context-2**40", ["train", "--preset", "tiny", "--max_context_width", str(2**40)], None, 2),
    ("train-nproc-beyond-machine", ["train", "--nproc", str(10**6), "--preset", "tiny", "--device", "cpu"], None, 2),
    ("train-tensorboard-file", ["train", "--preset", "tiny", "--tensorboard_dir", "src.txt"], None, 2),
    ("train-config-fifo", ["train", "--config", "fifo"], "FIFO", 2),
    ("plan-config-fifo", ["plan", "--config", "fifo"], "FIFO", 2),
    ("data-workers-2**40", ["data", "prepare", "src.txt", "--out", "out", "--workers", str(2**40)], None, 2),
    ("data-inspect-file", ["data", "inspect", "src.txt"], None, 1),
    ("sample-prompt-undecodable", ["sample", "--checkpoint", "ckpt", "--prompt", "caf\udce9"], None, 2),
    ("export-nul-path", ["export", "--checkpoint", "ckpt", "--hf", "out\0x"], None, 2),
    ("operator-policy-region-quote", ["operator-policy", "--account", "123456789012", "--region", 'us-east-1"*'],
     None, 2),
    ("operator-policy-profile-space", ["operator-policy", "--account", "123456789012", "--profile", "a b"], None, 2),
    ("pull-run-newline", ["pull", "--cluster", "demo", "run\n1"], None, 2),
    ("status-home-is-a-file", ["status", "demo"], "HOME-FILE", 2),
    # Paths echoed in an error keep it one line, and cannot restyle or reorder the terminal.
    ("sample-checkpoint-newline-escape", ["sample", "--checkpoint", "ck\npt\x1b[31m\u202e"], None, 1),
    ("inspect-newline", ["data", "inspect", "out\nx"], None, 1),
    # A file where llamapod's cache folder belongs: the environment, not a bug (exit 1, not 70).
    ("train-slurm-nodes-2**63", ["train", "--slurm", "--dry-run", "--preset", "tiny", "--nodes", str(2**63)], None, 2),
    ("data-cache-is-a-file", ["data", "prepare", "src.txt", "--out", "out"], "CACHE-FILE", 1),
]


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    # llamapod's cache (facts read from botocore) may be filled by any command; it holds no user data.
    cache = root / "user" / ".llamapod" / "cache"
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"", p.stat().st_mode)
            for p in sorted(root.rglob("*")) if cache not in (p, *p.parents)}


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A user's machine in a folder: working directory, llamapod state, ~/.ssh, and a ledger
    just outside the state folder that a traversing name would reach."""
    work, home, state = tmp_path / "work", tmp_path / "user", tmp_path / "user" / ".llamapod"
    for folder in (work, home / ".ssh", state / "clusters"):
        folder.mkdir(parents=True)
    (home / ".ssh" / "config").write_text("Host github.com\n    User git\n")
    (state / "clusters" / "demo.json").write_text(json.dumps({"name": "demo", "region": "us-east-1"}))
    (tmp_path / "user" / "x.json").write_text(json.dumps({"name": "x", "region": "us-east-1"}))
    (work / "src.txt").write_text("some text\n")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("LLAMAPOD_HOME", str(state))
    monkeypatch.delenv("LLAMAPOD_CONFIG", raising=False)
    # An endpoint nothing listens on: a case that got as far as AWS would fail fast, and visibly.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    return tmp_path


@pytest.mark.parametrize("name, args, config, code", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_one_error_line_and_changes_nothing(world, run_cli, name, args, config, code):
    if config == "FIFO":
        os.mkfifo(world / "work" / "fifo")  # reading it would block until a writer came
    elif config == "CACHE-FILE":
        (world / "user" / ".llamapod" / "cache").write_text("notes")
    elif config == "HOME-FILE":
        shutil.rmtree(world / "user" / ".llamapod")
        (world / "user" / ".llamapod").write_text("notes")
    elif config is not None:
        (world / "work" / "llamapod.toml").write_text(config)
    before = _snapshot(world)
    exit_code, out, err = run_cli(*args)
    assert exit_code == code != 70, err
    lines = err.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(errors) == 1, err
    # The error is one line: whatever follows it is the hint, then the list of problems.
    assert all(line.startswith(("  hint: ", "  - ")) for line in lines[errors[0] + 1:]), err
    assert "Traceback" not in err and "internal error" not in err
    assert "\x1b" not in err and "\u202e" not in err
    assert _snapshot(world) == before
    assert not list(world.rglob("pwned"))


@pytest.mark.parametrize("args, said", [
    (["train", "--preset", "tiny", "--resume_from_checkpoint", "loop"], "--resume_from_checkpoint loop runs into a symbolic link loop"),
    (["train", "--preset", "tiny", "--checkpoint_dir", "loop/sub"], "--checkpoint_dir loop/sub runs into a symbolic link loop"),
    (["train", "--preset", "tiny", "--run_dir", "dangling"], "--run_dir dangling is a broken symbolic link"),
    (["train", "--preset", "tiny", "--tensorboard_dir", "dangling"], "--tensorboard_dir dangling is a broken symbolic link"),
    (["sample", "--checkpoint", "loop", "--prompt", "x"], "checkpoint loop is a broken or looping symbolic link"),
    (["export", "--checkpoint", "dangling", "--hf", "out"], "checkpoint dangling is a broken or looping symbolic link"),
    (["data", "prepare", "src.txt", "--out", "loop"], "{work}/loop is a broken or looping symbolic link"),
    (["data", "prepare", "src.txt", "--out", "dangling/sub"], "{work}/dangling is a broken or looping symbolic link"),
    (["train", "--slurm", "--dry-run", "--preset", "tiny", "--run_dir", "{work}/loop"],
     "{work}/loop is a broken or looping symbolic link"),
])
def test_folder_flags_through_broken_or_looping_links_are_one_line(world, run_cli, args, said):
    work = world / "work"
    os.symlink("loop-b", work / "loop")
    os.symlink("loop", work / "loop-b")
    os.symlink("no-such-folder", work / "dangling")
    exit_code, _, err = run_cli(*(a.format(work=work) for a in args))
    said = said.format(work=work)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exit_code in (1, 2) and len(errors) == 1 and errors[0].startswith(f"error: {said}"), err
    assert "Traceback" not in err and "internal error" not in err
    assert sorted(p.name for p in work.iterdir()) == ["dangling", "loop", "loop-b", "src.txt"]

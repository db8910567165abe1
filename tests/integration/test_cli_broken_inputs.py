"""The real CLI against broken inputs of every kind a user can produce.

Each row breaks one thing (the AWS setup, the state file, a folder's permissions, a file in
a checkpoint, an export target, the free space, a busy run folder) and runs one command.
For every row: the exit code is neither 0 nor 70 (70 means "a bug in llamapod"), the
output says what is wrong in one `error:` line (and at most one hint), never a
traceback, and every file that existed before is still there, byte for byte.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

TINY = ["--nproc", "1", "--preset", "tiny", "--max_context_width", "32", "--train_batch_size", "2",
        "--validation_batches", "0", "--logging_freq", "1", "--seed", "3"]
STEP = "run/checkpoints/step_00000002"


@dataclass
class Case:
    """``prepare(folder, tools)`` breaks something and returns the command's arguments."""

    prepare: Callable[[Path, "Tools"], list[str]]
    error: str  # the start of the one error line
    env: dict[str, str | None] = field(default_factory=dict)


@dataclass
class Tools:
    read_only_dir: Callable[[str], Path]
    tmpfs: Callable[..., Path]
    held: list


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 2-step run of one worker (run/, with checkpoints and metrics)."""
    from llamapod.cli.main import main

    folder = tmp_path_factory.mktemp("trained")
    previous = os.getcwd()
    os.chdir(folder)
    try:
        assert main(["train", *TINY, "--max_steps", "2", "--run_dir", "run"]) == 0
        assert main(["export", "--checkpoint", "run/checkpoints", "--hf", "hf"]) == 0
    finally:
        os.chdir(previous)
    return folder


def _ledger(content) -> Callable[[Path, Tools], list[str]]:
    def prepare(folder: Path, tools: Tools) -> list[str]:
        path = folder / "home" / "clusters" / "demo.json"
        path.parent.mkdir(parents=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return ["status", "demo"]

    return prepare


def _damage(relative: str, new: bytes | Callable[[bytes], bytes]) -> Callable[[Path, Tools], list[str]]:
    def prepare(folder: Path, tools: Tools) -> list[str]:
        path = folder / relative
        path.write_bytes(new(path.read_bytes()) if callable(new) else new)
        return ["train", *TINY, "--max_steps", "4", "--run_dir", "run", "--resume_from_checkpoint", "run/checkpoints"]

    return prepare


def _meta_with(**changes) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        meta = json.loads(data)
        meta.update(changes)
        return json.dumps(meta).encode()

    return edit


def _aws_config(folder: Path, text: str) -> None:
    (folder / "aws").mkdir(exist_ok=True)
    (folder / "aws" / "config").write_text(text)


def _profile_typo(folder: Path, tools: Tools) -> list[str]:
    _aws_config(folder, "[default]\nregion = us-east-1\n")
    return ["status", "demo", "--profile", "defualt"]


def _half_key(folder: Path, tools: Tools) -> list[str]:
    _aws_config(folder, "[default]\nregion = us-east-1\n")
    return ["doctor"]


def _bad_aws_config(folder: Path, tools: Tools) -> list[str]:
    _aws_config(folder, "[default\nregion = us-east-1\n")
    return ["plan"]


def _read_only_run_dir(folder: Path, tools: Tools) -> list[str]:
    return ["train", *TINY, "--max_steps", "2", "--run_dir", str(tools.read_only_dir("ro") / "run")]


def _read_only_checkpoint_dir(folder: Path, tools: Tools) -> list[str]:
    return ["train", *TINY, "--max_steps", "2", "--run_dir", "run2", "--checkpoint_dir",
            str(tools.read_only_dir("ro") / "ck")]


def _read_only_export(folder: Path, tools: Tools) -> list[str]:
    return ["export", "--checkpoint", "run/checkpoints", "--hf", str(tools.read_only_dir("ro") / "hf")]


def _export_onto_a_model(folder: Path, tools: Tools) -> list[str]:
    return ["export", "--checkpoint", "run/checkpoints", "--hf", "hf"]


def _consolidated_onto_a_file(folder: Path, tools: Tools) -> list[str]:
    (folder / "model.pt").write_bytes(b"someone's model")
    return ["export", "--checkpoint", "run/checkpoints", "--consolidated", "model.pt"]


def _export_onto_a_full_disk(folder: Path, tools: Tools) -> list[str]:
    return ["export", "--checkpoint", "run/checkpoints", "--hf", str(tools.tmpfs("1m", "full") / "hf")]


def _busy_run_folder(folder: Path, tools: Tools) -> list[str]:
    from llamapod.train.runfolder import LOCK_FILE

    handle = open(folder / "run" / LOCK_FILE, "a+")
    fcntl.flock(handle, fcntl.LOCK_EX)
    tools.held.append(handle)
    return ["train", *TINY, "--max_steps", "4", "--run_dir", "run", "--resume_from_checkpoint", "run/checkpoints"]


CASES = {
    "mistyped --profile": Case(_profile_typo, "error: AWS profile 'defualt' (from --profile) is not in "),
    "access key id without its secret": Case(_half_key, "error: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY "
                                                        "is not", env={"AWS_SECRET_ACCESS_KEY": None}),
    "malformed ~/.aws/config": Case(_bad_aws_config, "error: the AWS config file "),
    "state file with a list for resources": Case(
        _ledger({"name": "demo", "region": "us-east-1", "resources": []}),
        "error: the state file {home}/clusters/demo.json is damaged: 'resources' must be an object"),
    "state file with a number for a name": Case(
        _ledger({"name": "demo", "region": "us-east-1", "resources": {"cluster": {"arn": 7}}}),
        "error: the state file {home}/clusters/demo.json is damaged: resources.cluster.arn must be a string"),
    "state file cut short": Case(_ledger('{"name": "demo", "reg'), "error: the state file "),
    "read-only run folder": Case(_read_only_run_dir, "error: cannot write to the run folder "),
    "read-only checkpoint folder": Case(_read_only_checkpoint_dir, "error: cannot write to the checkpoint folder "),
    "read-only export folder": Case(_read_only_export, "error: cannot write the export "),
    "empty rng file": Case(_damage(f"{STEP}/rng/rank_00000.json", b""),
                           f"error: checkpoint {STEP} is corrupted: rng/rank_00000.json is empty"),
    "truncated rng file": Case(_damage(f"{STEP}/rng/rank_00000.json", lambda data: data[: len(data) // 2]),
                               f"error: checkpoint {STEP} is corrupted: rng/rank_00000.json is damaged"),
    "rng file of another format": Case(_damage(f"{STEP}/rng/rank_00000.json", b'{"python": [1, 2]}'),
                                       f"error: checkpoint {STEP} is corrupted: rng/rank_00000.json is damaged"),
    "text where the step belongs": Case(_damage(f"{STEP}/meta.json", _meta_with(step="two")),
                                        f"error: checkpoint {STEP} is corrupted: meta.json has a str for 'step'"),
    "model shape of the wrong type": Case(
        _damage(f"{STEP}/meta.json", _meta_with(model_args={"dim": "64", "n_layers": 2})),
        f"error: checkpoint {STEP} is corrupted: meta.json has model_args of the wrong type: dim"),
    "data position of the wrong type": Case(
        _damage(f"{STEP}/meta.json", lambda data: json.dumps({**json.loads(data), "data": {
            **json.loads(data)["data"], "position": "12"}}).encode()),
        f"error: checkpoint {STEP} is corrupted: meta.json has a data position of the wrong type: position"),
    "a file where the run folder belongs": Case(
        lambda folder, tools: (folder / "taken").write_text("notes") and
        ["train", *TINY, "--max_steps", "2", "--run_dir", "taken"],
        "error: the run folder taken is a file, not a folder"),
    "run folder that fills up mid-run": Case(
        lambda folder, tools: ["train", *TINY, "--max_steps", "60", "--checkpoint_freq", "1000",
                               "--run_dir", str(tools.tmpfs("12k", "tiny-run")), "--checkpoint_dir", "ck"],
        "error: cannot write {tmp}/tiny-run/metrics.jsonl: No space left on device"),
    "truncated tensor index": Case(_damage(f"{STEP}/.metadata", lambda data: data[:40]),
                                   f"error: checkpoint {STEP} is corrupted: its tensor index .metadata cannot be read"),
    "export onto an existing model": Case(_export_onto_a_model, "error: export target hf already holds a Hugging Face "
                                                                "model"),
    "consolidated export onto a file": Case(_consolidated_onto_a_file, "error: export target model.pt already exists"),
    "--force consolidated export onto notes": Case(
        lambda folder, tools: (folder / "notes.txt").write_text("mine") and
        ["export", "--checkpoint", "run/checkpoints", "--consolidated", "notes.txt", "--force"],
        "error: export target notes.txt is not an earlier --consolidated export"),
    "--force consolidated export onto the checkpoint": Case(
        lambda folder, tools: ["export", "--checkpoint", "run/checkpoints", "--consolidated", f"{STEP}/meta.json",
                               "--force"],
        f"error: export target {STEP}/meta.json is not an earlier --consolidated export"),
    "checkpoint meta.json that is not text": Case(_damage(f"{STEP}/meta.json", b"\xff\xfe\x00"),
                                                  f"error: checkpoint {STEP} is corrupted: meta.json is not UTF-8 text"),
    "checkpoint of a newer llamapod": Case(_damage(f"{STEP}/meta.json", _meta_with(format="llamapod-checkpoint/2")),
                                           f"error: checkpoint {STEP} has format 'llamapod-checkpoint/2'"),
    "shard overwritten with noise": Case(
        _damage(f"{STEP}/__0_0.distcp", lambda data: bytes(len(data))),
        f"error: checkpoint {STEP} could not be read: "),
    "one step needs more sequences than the data holds": Case(
        lambda folder, tools: ["train", *TINY, "--max_steps", "1", "--run_dir", "big", "--grad_accum", "100000",
                               "--train_batch_size", "1000"],
        "error: one optimizer step needs 100,000,000 sequences"),
    "a validation batch of 2**40 sequences": Case(
        lambda folder, tools: ["train", *TINY[:-6], "--max_steps", "1", "--run_dir", "big", "--validation_batches",
                               "1", "--val_batch_size", str(2**40)],
        "error: one validation batch needs 1,099,511,627,776 sequences"),
    "export onto a full disk": Case(_export_onto_a_full_disk, "error: cannot write the export "),
    "run folder in use": Case(_busy_run_folder, "error: run folder run is in use by another run"),
}


def _snapshot(folder: Path) -> dict[str, bytes]:
    from llamapod.train.runfolder import LOCK_FILE

    # The run folder's lock file only names its latest holder: it is not a result.
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != LOCK_FILE}


@pytest.mark.parametrize("name", list(CASES))
def test_broken_input_is_one_line_and_nothing_is_lost(name, trained, tmp_path, aws, run_cli, monkeypatch,
                                                      read_only_dir, tmpfs):
    case = CASES[name]
    folder = tmp_path / "work"
    shutil.copytree(trained, folder, symlinks=True)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("LLAMAPOD_HOME", str(folder / "home"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(folder / "aws" / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(folder / "aws" / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for variable, value in case.env.items():
        if value is None:
            monkeypatch.delenv(variable, raising=False)
        else:
            monkeypatch.setenv(variable, value)
    tools = Tools(read_only_dir=read_only_dir, tmpfs=tmpfs, held=[])
    argv = case.prepare(folder, tools)
    before = _snapshot(folder)

    code, out, err = run_cli(*argv)

    errors = [line for line in err.splitlines() if line.startswith("error:")]
    hints = [line for line in err.splitlines() if line.startswith("  hint:")]
    assert code not in (0, 70), err
    assert len(errors) == 1 and len(hints) <= 1, err
    assert errors[0].startswith(case.error.format(home=folder / "home", tmp=tmp_path)), err
    assert "Traceback" not in err and "internal error" not in err
    after = _snapshot(folder)
    assert {path: after.get(path) == data for path, data in before.items()} == {path: True for path in before}, \
        "a file that existed before was changed or removed"
    for handle in tools.held:
        handle.close()

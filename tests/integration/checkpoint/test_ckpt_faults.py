"""SIGKILL a training worker under ``torchrun --max-restarts``: the run still ends bit-identical.

Nothing in the product knows about these tests: the test process watches the run's
metrics.jsonl and checkpoint folder from outside and kills a worker process (found as a
child of the torchrun agent) with SIGKILL at a chosen moment, including while a
``step_*.tmp`` folder exists (in the middle of a save). torchrun restarts the worker group,
which resumes from the newest complete checkpoint. fp32 on CPU with the same world size is
deterministic, so losses and final weights must equal an uninterrupted run exactly.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llamapod.train.checkpoint import load_model_state_for_inference

STEPS = 30
TRAIN_FLAGS = ["--preset", "tiny", "--max_steps", str(STEPS), "--checkpoint_freq", "5", "--validation_batches", "0",
               "--logging_freq", "1", "--train_batch_size", "2", "--device", "cpu", "--bf16", "0", "--seed", "7",
               "--keep_last", "3"]
DEADLINE_S = 120
# torchrun's agent shares its rendezvous TCPStore with the workers by default, and a
# restarted worker group can then read the previous group's addresses and fail to connect
# (pytorch/pytorch#135712). Launchers that rely on restarts must turn the sharing off.
AGENT_ENV = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def torchrun(run_dir: Path, max_restarts: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--max-restarts", str(max_restarts), "--monitor-interval", "0.1", "-m", "llamapod", "worker",
               *TRAIN_FLAGS, "--run_dir", str(run_dir), "--resume_from_checkpoint", str(run_dir / "checkpoints")]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    # Files, not pipes: nobody reads a pipe while the test polls, and a full pipe would
    # stall the workers. A session of its own lets cleanup reach the workers too.
    with open(run_dir.parent / "stdout.txt", "w") as out, open(run_dir.parent / "stderr.txt", "w") as err:
        return subprocess.Popen(command, stdout=out, stderr=err, start_new_session=True, env=AGENT_ENV)


def stderr_of(run_dir: Path) -> str:
    return (run_dir.parent / "stderr.txt").read_text()


def finish(proc: subprocess.Popen, run_dir: Path) -> str:
    try:
        proc.wait(timeout=DEADLINE_S)
    finally:
        stop(proc)
    err = stderr_of(run_dir)
    assert proc.returncode == 0, "\n".join(line for line in err.splitlines() if "error" in line.lower())[-4000:]
    return err


def stop(proc: subprocess.Popen) -> None:
    """Kill what is left of the run this test started (its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def workers(agent_pid: int) -> dict[int, int]:
    """rank -> pid of the training workers the torchrun agent started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != agent_pid:
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        for item in env:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


def logged_steps(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line).get("step", 0) for line in lines if line.strip().endswith("}")]
    return max(steps, default=0)


def tmp_checkpoints(run_dir: Path) -> list[Path]:
    try:
        return [p for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    except FileNotFoundError:
        return []


def wait_for(condition, what: str, proc: subprocess.Popen, run_dir: Path, poll_s: float = 0.01):
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {stderr_of(run_dir)[-2000:]}")
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


def losses_by_step(run_dir: Path) -> dict[int, float]:
    # A restarted run re-logs the steps after its checkpoint; the last line of a step wins.
    result = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record and "step" in record and record.get("event") != "done":
            result[record["step"]] = record["loss"]
    return result


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    finish(torchrun(run_dir, max_restarts=0), run_dir)
    return run_dir


@pytest.mark.parametrize("seed, moment", [(1, "step"), (2, "save"), (3, "save")])
def test_ckpt_sigkill_under_torchrun_restart_ends_identical(reference, tmp_path, seed, moment):
    chooser = random.Random(seed)
    run_dir = tmp_path / "run"
    proc = torchrun(run_dir, max_restarts=2)
    try:
        victim_rank = chooser.choice([0, 1])
        pids = wait_for(lambda: len(workers(proc.pid)) == 2 and workers(proc.pid), "the workers", proc, run_dir)
        if moment == "step":
            kill_after = chooser.randint(3, STEPS - 3)
            wait_for(lambda: logged_steps(run_dir) >= kill_after, f"step {kill_after}", proc, run_dir)
        else:
            # Rank 0 commits checkpoints; killing it while a .tmp exists leaves a partial step.
            victim_rank = 0
            after_step = chooser.choice([5, 10, 15, 20])
            wait_for(lambda: logged_steps(run_dir) >= after_step - 1, f"step {after_step - 1}", proc, run_dir)
            wait_for(lambda: tmp_checkpoints(run_dir), "a checkpoint save to start", proc, run_dir, 0.0005)
        os.kill(pids[victim_rank], signal.SIGKILL)
        partial_left = [p.name for p in tmp_checkpoints(run_dir)]
        err = finish(proc, run_dir)
    finally:
        stop(proc)

    starts = [line for line in err.splitlines() if line.startswith("resumed from ") or line.endswith("starting fresh")]
    assert starts[0].endswith("starting fresh") and len(starts) >= 2, err[-3000:]
    restart = starts[1]
    if moment == "save" and partial_left:
        # The kill left a half-written step behind: the restart named it and skipped it.
        assert f"(interrupted saves, no COMPLETE marker): {partial_left[0]}" in err
    if restart.startswith("resumed from "):
        step_dir = Path(restart.split()[2])
        assert re.fullmatch(r"step_\d{8}", step_dir.name), restart  # never a .tmp (partial) folder
        if partial_left:
            assert int(step_dir.name.split("_")[1]) < int(partial_left[0].split("_")[1].split(".")[0])
    else:
        # Killed before the first checkpoint was complete: nothing to resume, a fresh start.
        assert not partial_left or partial_left[0] == "step_00000005.tmp"

    expected = losses_by_step(reference)
    assert losses_by_step(run_dir) == expected and len(expected) == STEPS
    _, want, _ = load_model_state_for_inference(reference / "checkpoints")
    _, got, meta = load_model_state_for_inference(run_dir / "checkpoints")
    assert meta["step"] == STEPS
    assert all(torch.equal(got[name], want[name]) for name in want)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "step_00000020", "step_00000025", "step_00000030"]

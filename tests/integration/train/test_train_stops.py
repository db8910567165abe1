"""A local `llamapod train` that is stopped, loses a worker, runs out of memory or meets another run.

Each test runs the real command (`python -m llamapod train`: the launcher and torch's
elastic agent starting two worker processes) and acts on it from outside, as a user, a
scheduler or the kernel would: Ctrl-C to the whole process group, SIGTERM to the command,
SIGKILL to one worker, a cgroup memory limit, a second run into the same folder.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# constant LR and no warmup: the losses of steps 1..N do not depend on --max_steps, so a run
# stopped early and resumed with a smaller --max_steps must repeat the straight run exactly.
FLAGS = ["--preset", "tiny", "--max_context_width", "32", "--train_batch_size", "2", "--validation_batches", "0",
         "--logging_freq", "1", "--checkpoint_freq", "4", "--lr_decay_style", "constant", "--warmup", "0",
         "--lr", "3e-3", "--bf16", "0", "--seed", "11"]
DEADLINE_S = 120


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        env.pop(name, None)
    return env


def llamapod(*args: str, cwd: Path, prefix: list[str] = ()) -> subprocess.Popen:
    """`llamapod ARGS` in a session of its own (so a signal can reach its whole process group)."""
    out = open(cwd / f"out-{time.monotonic_ns()}.txt", "w+")
    err = open(cwd / f"err-{time.monotonic_ns()}.txt", "w+")
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "llamapod", *args], cwd=cwd, env=_env(), stdout=out,
                            stderr=err, start_new_session=True)
    proc.out_file, proc.err_file = out, err  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, timeout: float = DEADLINE_S) -> tuple[int, str, str]:
    try:
        proc.wait(timeout=timeout)
    finally:
        _stop(proc)
    proc.out_file.seek(0)  # type: ignore[attr-defined]
    proc.err_file.seek(0)  # type: ignore[attr-defined]
    return proc.returncode, proc.out_file.read(), proc.err_file.read()  # type: ignore[attr-defined]


def _stop(proc: subprocess.Popen) -> None:
    """Kill whatever is left of a run this test started (its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def wait_for(condition, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            code, _, err = finish(proc)
            raise AssertionError(f"the run ended ({code}) before {what}: {err[-2000:]}")
        time.sleep(0.02)
    _stop(proc)
    raise AssertionError(f"timed out waiting for {what}")


def complete_steps(run_dir: Path) -> list[str]:
    folder = run_dir / "checkpoints"
    return sorted(p.name for p in folder.glob("step_*") if (p / "COMPLETE").is_file()) if folder.is_dir() else []


def logged_steps(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(line).get("step", 0) for line in lines if line.endswith("}")), default=0)


def losses(run_dir: Path) -> dict[int, float]:
    # A resumed run logs again the steps after its checkpoint: the last line of a step wins.
    found = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record and "tokens_per_s" in record:
            found[record["step"]] = record["loss"]
    return found


def workers(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the worker processes a `llamapod train` launcher started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0") if ppid == launcher_pid else []
        except (OSError, IndexError, ValueError):
            continue
        for item in env:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[int, float]:
    """Losses of an uninterrupted 12-step run."""
    cwd = tmp_path_factory.mktemp("straight")
    code, _, err = finish(llamapod("train", *FLAGS, "--max_steps", "12", "--run_dir", "run", cwd=cwd))
    assert code == 0, err
    return losses(cwd / "run")


def _resume_hint(err: str) -> str:
    hint = err.splitlines()[-1]
    assert hint.startswith("  hint: resume with: llamapod train "), err
    return hint.removeprefix("  hint: resume with: ")


def test_ctrl_c_prints_the_exact_resume_command_and_the_resume_is_exact(tmp_path, straight):
    proc = llamapod("train", *FLAGS, "--max_steps", "1000", "--run_dir", "run", cwd=tmp_path)
    wait_for(lambda: complete_steps(tmp_path / "run"), "the first checkpoint", proc)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C: every process of the group
    code, _, err = finish(proc)

    assert code == 130, err
    newest = complete_steps(tmp_path / "run")[-1]
    assert err.splitlines()[-2] == ("error: training stopped by Ctrl-C; the newest checkpoint is "
                                    f"run/checkpoints/{newest}")
    assert "Traceback" not in err and "internal error" not in err and "Received 2 death signal" not in err
    command = _resume_hint(err)
    from llamapod.config.train_flags import parse_train_args

    printed = parse_train_args(shlex.split(command)[2:])
    given = parse_train_args([*FLAGS, "--max_steps", "1000", "--run_dir", "run",
                              "--resume_from_checkpoint", "run/checkpoints"])
    # Every flag the run was given, and the folders; settings left unnamed may show the value
    # the run actually used (an offline fallback for the default data, say).
    named = {flag[2:] for flag in FLAGS if flag.startswith("--")} | {"max_steps", "run_dir", "resume_from_checkpoint"}
    assert {n: getattr(printed, n) for n in named} == {n: getattr(given, n) for n in named}

    # The printed command as is, except for a shorter end so the test ends.
    words = shlex.split(command.replace("--max_steps=1000", "--max_steps=12"))
    code, _, err = finish(llamapod(*words[1:], cwd=tmp_path))
    assert code == 0, err
    step = int(newest.split("_")[1])
    assert f"resumed from run/checkpoints/{newest} (step {step})" in err
    resumed = losses(tmp_path / "run")
    assert sorted(resumed) == list(range(1, 13))
    assert {s: resumed[s] for s in range(step + 1, 13)} == {s: straight[s] for s in range(step + 1, 13)}


def test_sigterm_exits_143_with_the_resume_command(tmp_path):
    proc = llamapod("train", *FLAGS, "--max_steps", "1000", "--run_dir", "run", cwd=tmp_path)
    wait_for(lambda: logged_steps(tmp_path / "run") >= 1, "the first step", proc)
    proc.send_signal(signal.SIGTERM)  # `kill PID`: the command alone, not its workers
    code, _, err = finish(proc)
    assert code == 143, err
    assert re.fullmatch(r"error: training stopped by SIGTERM; (the newest checkpoint is run/checkpoints/step_\d+|"
                        r"no checkpoint had been written yet)", err.splitlines()[-2]), err
    assert _resume_hint(err).endswith("--run_dir=run --resume_from_checkpoint=run/checkpoints --max_steps=1000")
    assert "Traceback" not in err and "internal error" not in err


def test_a_killed_worker_is_named_and_not_blamed_on_memory(tmp_path):
    proc = llamapod("train", *FLAGS, "--max_steps", "1000", "--run_dir", "run", cwd=tmp_path)
    wait_for(lambda: logged_steps(tmp_path / "run") >= 2, "two steps", proc)
    victim = wait_for(lambda: workers(proc.pid).get(1), "the workers' pids", proc)
    os.kill(victim, signal.SIGKILL)
    code, _, err = finish(proc)
    assert code == 137, err
    lines = [line for line in err.splitlines() if line.startswith(("error:", "  hint:"))]
    assert lines[0] == (f"error: rank 1 (pid {victim}) was killed with SIGKILL from outside llamapod "
                        "(not by the out-of-memory killer)"), err
    assert lines[1].startswith("  hint: check who stops processes here (a scheduler's limits, `kill -9`); resume with: "
                               "llamapod train ") and " --preset=tiny " in lines[1]
    assert len(lines) == 2, "rank 0, stopped by the launcher, reports nothing of its own"
    assert "out of memory?" not in err and "internal error" not in err


def test_the_kernel_oom_killer_is_named_as_the_cause(tmp_path, memory_cgroup):
    # Two workers of ~0.5 GiB each and a batch whose activations need several GiB more.
    prefix = memory_cgroup(1200 * 2**20)
    proc = llamapod("train", "--preset", "tiny", "--max_context_width", "256", "--train_batch_size", "128",
                    "--validation_batches", "0", "--max_steps", "3", "--run_dir", "run", cwd=tmp_path, prefix=prefix)
    code, _, err = finish(proc)
    lines = [line for line in err.splitlines() if line.startswith(("error:", "  hint:"))]
    assert code == 137, err
    assert re.fullmatch(r"error: rank \d \(pid \d+\) was killed by the kernel's out-of-memory killer \(SIGKILL\)",
                        lines[0]), err
    assert lines[1].startswith("  hint: it needed more memory than this machine allows: try a smaller "
                               "--train_batch_size")


def test_a_run_folder_is_held_by_one_run_and_released_even_by_sigkill(tmp_path):
    from llamapod.errors import TrainingError
    from llamapod.train.runfolder import LOCK_FILE, lock_run

    first = llamapod("train", *FLAGS, "--max_steps", "1000", "--run_dir", "run", cwd=tmp_path)
    wait_for(lambda: logged_steps(tmp_path / "run") >= 1, "the first step", first)
    metrics_before = (tmp_path / "run" / "metrics.jsonl").stat().st_size

    started = time.monotonic()
    code, out, err = finish(llamapod("train", *FLAGS, "--max_steps", "3", "--run_dir", "run", cwd=tmp_path))
    elapsed = time.monotonic() - started
    holder = (tmp_path / "run" / LOCK_FILE).read_text().strip()
    assert (code, out) == (1, "")
    assert err.splitlines() == [f"error: run folder run is in use by another run ({holder})",
                                "  hint: wait for that run to end, or choose another --run_dir"]
    assert holder.startswith(f"pid {workers(first.pid)[0]} on ")
    assert elapsed < 15, "refused before preparing data or starting workers"
    # Another run that would write its checkpoints into the busy run's folder is refused too.
    code, _, err = finish(llamapod("train", *FLAGS, "--max_steps", "3", "--run_dir", "other",
                                   "--checkpoint_dir", "run/checkpoints", cwd=tmp_path))
    assert code == 1 and err.splitlines()[0].startswith(
        "error: checkpoint folder run/checkpoints belongs to the run folder "), err
    assert (tmp_path / "run" / "metrics.jsonl").stat().st_size >= metrics_before

    pids = [first.pid, *workers(first.pid).values()]
    os.killpg(first.pid, signal.SIGKILL)  # no cleanup runs: the kernel drops the lock with the process
    first.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids), "the workers die with their launcher, not train on unseen"
    # The kernel releases the lock with the last reference to the file, which it may drop a
    # moment after the process is gone (deferred file release).
    for _ in range(100):
        try:
            locks = lock_run(tmp_path / "run", tmp_path / "run" / "checkpoints")
            break
        except TrainingError:
            time.sleep(0.05)
    else:
        locks_now = Path("/proc/locks").read_text()
        raise AssertionError(f"the run folder is still locked 5 s after its holder died: {locks_now}")
    for lock in locks:
        lock.release()


def _alive(pid: int) -> bool:
    """Not yet exited (a zombie has exited and closed its files)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False

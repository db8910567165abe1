"""Why local training workers stopped, in one line: which rank failed first, how, and what next.

torch's elastic agent stops every worker once one fails, so all but the first end with
the agent's SIGTERM: the first failure is the one to report. A worker that fails on its
own records its one-line error in the file the agent gives it (TORCHELASTIC_ERROR_FILE,
in the format of torch.distributed.elastic's ErrorHandler, so torchrun shows it too), and
the launcher reads it back. A worker that dies from a signal records nothing; SIGKILL is
blamed on memory only when the kernel says its OOM killer fired.

Torch-free: it only reads what the agent reports (rank -> pid, exit code, error file).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess  # nosec B404: runs dmesg, a fixed program, without a shell or user input
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from llamapod.errors import Interrupted, LlamapodError, WorkerFailed

ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"
# Set by `llamapod train` for the workers it starts: it reports their failures itself.
LOCAL_LAUNCH_ENV = "LLAMAPOD_LOCAL_LAUNCH"
LAUNCHER_PID_ENV = "LLAMAPOD_LAUNCHER_PID"
INTERNAL_ERROR_EXIT = 70  # what a worker exits with for an exception that is a bug
# What a worker ends with when it was asked to stop (Ctrl-C or SIGTERM), handled or not.
_STOP_EXITS = {130: signal.SIGINT, 143: signal.SIGTERM, -signal.SIGINT: signal.SIGINT,
               -signal.SIGTERM: signal.SIGTERM}


def launched_locally() -> bool:
    return os.environ.get(LOCAL_LAUNCH_ENV) == "1"


# ---- the worker's side ---------------------------------------------------------------


def record_failure(message: str, hint: str | None, exit_code: int, *, printed: bool) -> None:
    """Write this worker's one-line failure where its launcher looks (no-op without a launcher).

    ``printed``: the worker showed it itself, so the launcher only passes on the exit code.
    """
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return
    now = time.time()
    data = {"message": {"message": message, "extraInfo": {
        "py_callstack": traceback.format_exc(),
        "timestamp": str(int(now)),
        "llamapod": {"message": message, "hint": hint, "exit_code": exit_code, "time": now, "printed": printed},
    }}}
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data), encoding="utf-8")
    except OSError:
        pass  # the exit code still tells the launcher that this rank failed


# ---- the launcher's side -------------------------------------------------------------


@dataclass(frozen=True)
class WorkerRecord:
    message: str
    hint: str | None
    exit_code: int
    time: float
    printed: bool = False


def read_record(error_file: str | None) -> WorkerRecord | None:
    """The failure a worker recorded in ``error_file``, if it wrote one in llamapod's form."""
    if not error_file or not os.path.isfile(error_file):
        return None
    try:
        data = json.loads(Path(error_file).read_text(encoding="utf-8"))
        ours = data["message"]["extraInfo"]["llamapod"]
        return WorkerRecord(str(ours["message"]), ours.get("hint"), int(ours["exit_code"]), float(ours["time"]),
                            bool(ours.get("printed", False)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class Failure:
    rank: int
    pid: int
    exit_code: int
    error_file: str | None
    record: WorkerRecord | None

    @property
    def signal(self) -> int | None:
        return -self.exit_code if self.exit_code < 0 else None


def failures_from(agent_failures: Mapping[int, Any]) -> list[Failure]:
    """Our view of torch's ``ChildFailedError.failures`` (rank -> ProcessFailure)."""
    found = []
    for rank, failure in sorted(agent_failures.items()):
        error_file = getattr(failure, "error_file", None)
        found.append(Failure(rank, int(getattr(failure, "pid", -1)), int(failure.exitcode), error_file,
                             read_record(error_file)))
    return found


def first_failure(failures: list[Failure]) -> Failure:
    """The failure that caused the others.

    A death by a signal other than the agent's SIGTERM (SIGKILL, SIGSEGV...) comes first:
    the other ranks then fail in their next collective, and some record that error. Then
    the earliest recorded error, then any other non-zero exit, then rank 0.
    """
    violent = [f for f in failures if f.signal is not None and f.exit_code not in _STOP_EXITS]
    if violent:
        return violent[0]
    recorded = sorted((f for f in failures if f.record is not None), key=lambda f: (f.record.time, f.rank))
    if recorded:
        # Ranks that hit the same error (a check every rank makes) report it once, as rank 0 did.
        same = [f for f in recorded if f.record.message == recorded[0].record.message and f.record.printed]
        return (same or recorded)[0]
    exited = [f for f in failures if f.exit_code > 0 and f.exit_code not in _STOP_EXITS]
    return (exited or failures)[0]


def stop_signal(failures: list[Failure]) -> int | None:
    """The signal that stopped every worker, when they were all asked to stop (Ctrl-C, scancel)."""
    signals = {_STOP_EXITS.get(f.exit_code) for f in failures}
    if len(signals) == 1 and None not in signals:
        return int(next(iter(signals)))
    return None


def describe(first: Failure, *, oom_killed: bool, resume: str) -> LlamapodError:
    """One line for the first failure; ``resume`` is the command that continues the run."""
    record = first.record
    if record is not None:
        message = record.message if record.message.startswith(f"rank {first.rank}") else (
            f"rank {first.rank} failed first: {record.message}")
        hint = record.hint
        if record.exit_code == INTERNAL_ERROR_EXIT or not hint:
            hint = f"its traceback is in {first.error_file}" + ("; please report it" if record.exit_code ==
                                                               INTERNAL_ERROR_EXIT else "")
        return WorkerFailed(message, hint, record.exit_code)
    if first.signal is not None:
        return _killed(first, oom_killed=oom_killed, resume=resume)
    return WorkerFailed(f"rank {first.rank} exited with code {first.exit_code} without a message",
                        f"its output is above; then resume with: {resume}", first.exit_code)


def _killed(first: Failure, *, oom_killed: bool, resume: str) -> WorkerFailed:
    name = _signal_name(first.signal)
    code = 128 + first.signal
    if oom_killed:
        return WorkerFailed(f"rank {first.rank} (pid {first.pid}) was killed by the kernel's out-of-memory "
                            f"killer ({name})",
                            "it needed more memory than this machine allows: try a smaller --train_batch_size, "
                            f"--activation_checkpointing full or a smaller --nproc; then resume with: {resume}", code)
    if first.signal == signal.SIGKILL:
        return WorkerFailed(f"rank {first.rank} (pid {first.pid}) was killed with {name} from outside llamapod "
                            "(not by the out-of-memory killer)",
                            f"check who stops processes here (a scheduler's limits, `kill -9`); resume with: {resume}",
                            code)
    return WorkerFailed(f"rank {first.rank} (pid {first.pid}) died from {name}",
                        f"its output is above; resume with: {resume}", code)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def interrupted(signum: int, *, newest_checkpoint: str | None, resume: str) -> Interrupted:
    how = "Ctrl-C" if signum == signal.SIGINT else _signal_name(signum)
    saved = (f"the newest checkpoint is {newest_checkpoint}" if newest_checkpoint
             else "no checkpoint had been written yet")
    return Interrupted(f"training stopped by {how}; {saved}", f"resume with: {resume}", signum)


# ---- evidence of the kernel's OOM killer ------------------------------------------------


class OomWatch:
    """Counts of the kernel's OOM kills, taken before the workers start and compared after.

    Sources, each where readable: this process's memory cgroup (cgroup v2 ``memory.events``,
    v1 ``memory.oom_control``: workers inherit the cgroup), the machine-wide counter in
    ``/proc/vmstat`` (Linux >= 4.13), and the kernel log's "Killed process <pid>" line.
    """

    def __init__(self) -> None:
        self._before = self._counts()

    @staticmethod
    def _counts() -> dict[str, int]:
        counts = {}
        for path in _oom_counter_files():
            value = _oom_kill_count(path)
            if value is not None:
                counts[str(path)] = value
        return counts

    def killed(self, pid: int) -> bool:
        after = self._counts()
        cgroup = {k: v for k, v in after.items() if k != "/proc/vmstat"}
        if any(after[k] > self._before.get(k, after[k]) for k in cgroup):
            return True
        if _kernel_log_names(pid):
            return True
        # The machine-wide counter only when no cgroup counter could be read: on a shared
        # machine someone else's OOM kill would otherwise be blamed on this run.
        if not cgroup and "/proc/vmstat" in after:
            return after["/proc/vmstat"] > self._before.get("/proc/vmstat", after["/proc/vmstat"])
        return False


def _oom_counter_files() -> list[Path]:
    files = [Path("/proc/vmstat")]
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return files
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, group = parts
        group = group.lstrip("/")
        if controllers == "":
            files += [Path("/sys/fs/cgroup") / group / "memory.events",
                      Path("/sys/fs/cgroup/unified") / group / "memory.events"]
        elif "memory" in controllers.split(","):
            files.append(Path("/sys/fs/cgroup/memory") / group / "memory.oom_control")
    return files


def _oom_kill_count(path: Path) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    found = re.search(r"^oom_kill (\d+)$", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def _kernel_log_names(pid: int) -> bool:
    """True when the kernel log says its OOM killer killed ``pid`` (often unreadable without root)."""
    try:
        result = subprocess.run(["dmesg"], capture_output=True, text=True,  # nosec B603, B607: the kernel log reader
                                timeout=5)  # by name from PATH, where util-linux installs it; no arguments, no shell
    except (OSError, subprocess.SubprocessError):
        return False
    if result.returncode != 0:
        return False
    pattern = re.compile(rf"(Killed process {pid} \(|oom-kill:.*\bpid={pid}\b)")
    return any(pattern.search(line) for line in result.stdout.splitlines()[-2000:])

"""System primitives for the node-side lifecycle: commands, retries, files, locks, daemons.

Runs on bare HyperPod nodes with only /usr/bin/python3: standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shlex
import signal
import subprocess  # nosec B404: subprocess runs fixed programs with argument lists, never a shell
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

log = logging.getLogger("llamapod.lifecycle")


class StepError(Exception):
    """A lifecycle step cannot complete; the message is what HyperPod shows as the failure reason."""


class TransientError(Exception):
    """A failure worth retrying (network not up yet, file system still creating, daemon starting)."""


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def summary(self) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        tail = text[-1] if text else "no output"
        return f"`{shlex.join(self.argv)}` exited {self.returncode}: {tail}"


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    check: bool = True,
    input_text: str | None = None,
) -> CommandResult:
    """Run a command with a deadline and log it; with check=True a failure raises StepError."""
    log.debug("run: %s", shlex.join(argv))
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    try:
        proc = subprocess.run(  # nosec B603: the node runs its own fixed commands, argument lists, no shell
            list(argv),
            env=full_env,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if input_text is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise StepError(f"command not found: {argv[0]} ({exc.strerror})") from None
    except subprocess.TimeoutExpired:
        result = CommandResult(tuple(argv), 124, "", f"timed out after {timeout:.0f}s")
    else:
        result = CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
    if check and not result.ok:
        raise StepError(result.summary())
    return result


def retry(
    attempt: Callable[[], object],
    *,
    what: str,
    timeout: float,
    first_delay: float = 1.0,
    max_delay: float = 30.0,
) -> object:
    """Call ``attempt`` until it stops raising TransientError, backing off, within ``timeout`` s.

    Each failure is logged so an empty CloudWatch log never hides why a node is stuck.
    """
    deadline = time.monotonic() + timeout
    delay = first_delay
    tries = 0
    while True:
        tries += 1
        try:
            return attempt()
        except TransientError as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StepError(f"{what}: gave up after {tries} attempts in {timeout:.0f}s; last error: {exc}") from None
            log.info("%s: attempt %d failed (%s); retrying in %.1fs", what, tries, exc, min(delay, remaining))
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, max_delay)


def write_file(path: Path, content: str, *, mode: int = 0o644, uid: int | None = None, gid: int | None = None) -> bool:
    """Atomically replace ``path`` with ``content``; returns True when anything changed.

    Writing a temporary file then renaming means an interrupted run never leaves a half-written
    config that a daemon could read.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # One writer per file: a node's own files have one lifecycle run at a time, and shared files
    # on /fsx are written under a cluster lock. So a temporary sibling is from a killed run.
    for leftover in path.parent.glob(f".{path.name}.*"):
        if len(leftover.name) == len(path.name) + 10:  # "." + name + "." + mkstemp's 8 characters
            leftover.unlink()
    changed = not path.exists() or path.read_text() != content
    if changed:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, mode)
            if uid is not None:
                os.chown(tmp, uid, gid if gid is not None else -1)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    st = path.stat()
    if (st.st_mode & 0o7777) != mode:
        os.chmod(path, mode)
        changed = True
    if uid is not None and (st.st_uid != uid or (gid is not None and st.st_gid != gid)):
        os.chown(path, uid, gid if gid is not None else -1)
        changed = True
    return changed


def replace_managed_block(text: str, block: str, marker: str) -> str:
    """Return ``text`` with the block between llamapod's markers replaced (or appended)."""
    begin, end = f"# BEGIN {marker}", f"# END {marker}"
    lines = text.splitlines()
    if begin in lines and end in lines[lines.index(begin):]:
        start = lines.index(begin)
        stop = lines.index(end, start)
        lines = lines[:start] + lines[stop + 1:]
    body = [begin, *block.rstrip("\n").splitlines(), end]
    while lines and not lines[-1].strip():
        lines.pop()
    if lines:
        lines.append("")
    return "\n".join(lines + body) + "\n"


@contextlib.contextmanager
def file_lock(path: Path, *, timeout: float, what: str) -> Iterator[None]:
    """Hold an exclusive fcntl lock on ``path`` (bounded wait).

    On /fsx this serialises nodes against each other: Lustre honours it because the mount uses
    the ``flock`` option.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    # Lustre mounted without -o flock answers ENOSYS: no node could ever lock it.
                    raise StepError(f"{what}: cannot lock {path}: {exc.strerror}; a lock on /fsx needs "
                                    f"FSx for Lustre mounted with -o flock") from None
                if time.monotonic() >= deadline:
                    raise StepError(f"{what}: lock {path} still held after {timeout:.0f}s") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


def read_json(path: Path, what: str) -> dict:
    import json

    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StepError(f"{what} not found at {path}") from None
    except OSError as exc:
        raise StepError(f"{what} at {path} cannot be read: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StepError(f"{what} at {path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise StepError(f"{what} at {path} must be a JSON object, found {type(data).__name__}")
    return data


# --- daemons -------------------------------------------------------------------------------


def _net_namespace(pid: str | int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _is_zombie(pid: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def find_daemon(executable: str) -> list[int]:
    """PIDs of live processes running ``executable`` in this network namespace.

    Scanning /proc instead of trusting pid files makes the check immune to stale pid files
    after a reboot or a killed run, and the namespace test keeps one node's daemons from
    being mistaken for another's when several "nodes" share a kernel.
    """
    target = os.path.realpath(executable)
    own_ns = _net_namespace("self")
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe")
        except OSError:
            continue
        if exe.replace(" (deleted)", "") == target and _net_namespace(entry.name) == own_ns and not _is_zombie(entry.name):
            pids.append(int(entry.name))
    return sorted(pids)


def stop_daemon(executable: str, *, timeout: float = 30.0) -> None:
    pids = find_daemon(executable)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while find_daemon(executable):
        if time.monotonic() >= deadline:
            for pid in find_daemon(executable):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.1)


@dataclass(frozen=True)
class Service:
    """A daemon llamapod starts: its systemd unit and the command that starts it without systemd.

    ``foreground`` (the daemon's command line without forking) replaces the unit's ExecStart
    through a drop-in, for daemons whose options the packaged unit cannot express; None keeps
    the unit exactly as installed (HyperPod's own units).
    """

    unit: str
    executable: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    foreground: tuple[str, ...] | None = None


class ServiceManager:
    """Starts daemons through systemd on real nodes, or directly where there is no systemd.

    The direct mode is what containers and the test namespaces use: the daemon's own
    fork-to-background does the job of the unit, and /proc tells whether it runs.
    """

    def __init__(self, mode: str, systemctl: str, etc_dir: Path):
        self.mode = mode
        self.systemctl = systemctl
        self.etc_dir = etc_dir

    def drop_in_path(self, service: Service) -> Path:
        return self.etc_dir / "systemd" / "system" / f"{service.unit}.service.d" / "llamapod.conf"

    def write_unit_override(self, service: Service) -> bool:
        """The drop-in that runs ``service.foreground`` under systemd; True when it changed."""
        if service.foreground is None:
            return False
        lines = ["[Service]"]
        lines += [f"Environment={shlex.quote(f'{key}={value}')}" for key, value in service.env]
        lines += ["ExecStart=", f"ExecStart={shlex.join(service.foreground)}"]
        return write_file(self.drop_in_path(service), "\n".join(lines) + "\n")

    def is_running(self, service: Service) -> bool:
        if self.mode == "systemd":
            return run([self.systemctl, "is-active", "--quiet", service.unit], check=False).ok
        return bool(find_daemon(service.executable))

    def start(self, service: Service, *, restart: bool = False, timeout: float = 120.0) -> CommandResult:
        """Start (or restart) ``service``; the result tells whether the start command succeeded."""
        if self.mode == "systemd":
            if self.write_unit_override(service):
                run([self.systemctl, "daemon-reload"], check=False)
                restart = restart or self.is_running(service)
            run([self.systemctl, "enable", service.unit], check=False)
            verb = "restart" if restart else "start"
            return run([self.systemctl, verb, service.unit], check=False, timeout=timeout)
        if restart:
            stop_daemon(service.executable)
        elif find_daemon(service.executable):
            return CommandResult(service.argv, 0, "already running", "")
        return run(service.argv, env=dict(service.env), check=False, timeout=timeout)

    def stop(self, service: Service) -> None:
        if self.mode == "systemd":
            run([self.systemctl, "stop", service.unit], check=False, timeout=180)
        else:
            stop_daemon(service.executable)

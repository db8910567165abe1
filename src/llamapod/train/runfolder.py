"""One run at a time in a run folder: an advisory lock held for as long as the run writes there.

Two runs writing one folder would interleave their metrics.jsonl lines and race on the
checkpoints. ``fcntl.flock`` on a lock file inside the folder is released by the kernel
when the holder exits in any way (SIGKILL included), so a crashed run never leaves a
stale lock behind; it works on local disks, NFS and Lustre mounted with ``flock`` (as
HyperPod's /fsx is). The file also says who holds it, for the message the next run shows.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import socket
import time
from pathlib import Path

from llamapod.errors import TrainingError

log = logging.getLogger(__name__)

LOCK_FILE = ".llamapod-run.lock"
PREVIOUS_ATTEMPT_WAIT_S = 15 * 60.0
# What flock(2) answers where the file system does not support it.
_NO_FLOCK_ERRNOS = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL}
POLL_S = 5.0


class FolderLock:
    """A held lock; ``release`` (or the process ending) lets the next run in."""

    def __init__(self, folder: Path, fd: int):
        self.folder = folder
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def lock_folder(folder: Path, *, what: str = "run folder", flag: str = "--run_dir") -> FolderLock:
    """Take ``folder`` for this run, creating it; one line if it is in use or cannot be written."""
    path = folder / LOCK_FILE
    if folder.exists() and not folder.is_dir():
        raise TrainingError(f"the {what} {folder} is a file, not a folder", f"choose another {flag}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise _unwritable(folder, exc, what, flag) from None
    try:
        _take(fd, folder)
    except OSError as exc:
        if exc.errno in _NO_FLOCK_ERRNOS:
            # Lustre mounted without `flock` (or `localflock` across nodes), some NFS setups:
            # the run goes on unguarded rather than not at all.
            log.warning("%s cannot be locked on this file system (%s): a second run into it would not be stopped",
                        folder, exc.strerror)
            return FolderLock(folder, fd)
        holder = _read_holder(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise TrainingError(f"{what} {folder} is in use by another run ({holder})",
                                f"wait for that run to end, or choose another {flag}") from None
        raise _unwritable(folder, exc, what, flag) from None
    _write_holder(fd)
    return FolderLock(folder, fd)


def _take(fd: int, folder: Path, deadline_s: float = PREVIOUS_ATTEMPT_WAIT_S) -> None:
    """flock without waiting, except for this Slurm job's own previous attempt.

    A requeued or auto-resumed job (HyperPod replaces a failed node and restarts the job)
    can start while the dead node's shared-file-system client still holds the lock; the
    file system releases it once it evicts that client, within minutes.
    """
    deadline = time.monotonic() + deadline_s
    announced = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            waiting = exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) and _held_by_this_job(fd)
            if not waiting or time.monotonic() > deadline:
                raise
            if not announced:
                log.warning("%s is still held by this job's previous attempt (%s); waiting up to %d minutes for "
                            "the file system to release it", folder, _read_holder(fd), deadline_s // 60)
                announced = True
            time.sleep(POLL_S)


def lock_run(run_dir: Path, checkpoint_dir: Path) -> list[FolderLock]:
    """Take the run folder, and the checkpoint folder when it lies elsewhere, for this run.

    A checkpoint folder inside another run's folder is that run's: it is refused while
    that run holds its folder, without a lock file among the checkpoints.
    """
    locks = [lock_folder(run_dir)]
    try:
        _refuse_if_inside_a_held_run(checkpoint_dir, held={run_dir.resolve(), checkpoint_dir.resolve()})
        if not _inside(checkpoint_dir, run_dir):
            locks.append(lock_folder(checkpoint_dir, what="checkpoint folder", flag="--checkpoint_dir"))
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    return locks


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _refuse_if_inside_a_held_run(checkpoint_dir: Path, held: set[Path]) -> None:
    for ancestor in checkpoint_dir.resolve().parents:
        if ancestor in held or not (ancestor / LOCK_FILE).is_file():
            continue
        try:
            probe = lock_folder(ancestor)
        except TrainingError as exc:
            if "in use by another run" not in exc.message:
                continue  # an ancestor this run cannot write to is not a run folder in use
            holder = exc.message.rsplit("(", 1)[-1].rstrip(")")
            raise TrainingError(f"checkpoint folder {checkpoint_dir} belongs to the run folder {ancestor}, "
                                f"which is in use by another run ({holder})",
                                "wait for that run to end, or choose another --checkpoint_dir") from None
        probe.release()


def _unwritable(folder: Path, exc: OSError, what: str, flag: str) -> TrainingError:
    return TrainingError(f"cannot write to the {what} {folder}: {exc.strerror or exc}",
                         f"choose a {flag} you can write to, or fix the folder's permissions")


def _held_by_this_job(fd: int) -> bool:
    job = os.environ.get("SLURM_JOB_ID")
    found = re.search(r"slurm job (\d+)", _read_holder(fd))
    return bool(job and found and found.group(1) == job)


def _write_holder(fd: int) -> None:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    job = os.environ.get("SLURM_JOB_ID")
    text = (f"pid {os.getpid()} on {socket.gethostname()}, since {started}"
            + (f", slurm job {job}" if job else "") + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)
    except OSError:
        pass  # the lock holds without the note; only the next run's message is vaguer


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"

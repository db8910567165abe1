"""One ``up`` or ``down`` at a time per cluster on this machine.

Two runs on one cluster would each find nothing (neither has recorded anything yet) and
create a resource twice, or one would delete what the other is creating. The lock is an
exclusive ``flock`` on a file beside the cluster's state file: the kernel releases it when
the holder exits, however it exits, so a killed run never leaves a stale lock. Across
machines, where no lock reaches, FSx's client request token and the deterministic names
(``cloud/plan.py``) keep creation single.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from llamapod.cloud.ledger import ledger_path
from llamapod.errors import ClusterStateError


def lock_path(name: str) -> Path:
    state = ledger_path(name)
    return state.with_name(state.name.removesuffix(".json") + ".lock")


@contextlib.contextmanager
def cluster_lock(name: str, command: str) -> Iterator[None]:
    """Hold the cluster's lock for ``command`` ("up", "down"); refuse at once if another run holds it."""
    path = lock_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ClusterStateError(f"another {_holder(fd)} is working on cluster {name} right now",
                                    "wait for it to finish (or stop it), then run this again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{command} {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _holder(fd: int) -> str:
    """The holder as the lock file names it ("`llamapod up` (pid 1234)"), for the message."""
    try:
        words = os.pread(fd, 200, 0).decode(errors="replace").split()
    except OSError:
        words = []
    if len(words) == 2 and words[1].isdigit():
        return f"`llamapod {words[0]}` (pid {words[1]})"
    return "`llamapod up` or `llamapod down`"

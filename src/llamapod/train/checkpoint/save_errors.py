"""Why a save failed, in one line: a full disk (with the space a checkpoint needs), no
permission, or a writer thread that failed inside DCP."""

from __future__ import annotations

import errno
import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from llamapod.errors import CheckpointError
from llamapod.train.checkpoint.folder import _free_bytes, human_bytes
from llamapod.train.checkpoint.index import _first_line

log = logging.getLogger(__name__)

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

_DENIED_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)

def state_bytes(state: Any) -> int:
    """Bytes of every tensor in a (nested) state dict, whole: a sharded DTensor counts its global size."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0

def _os_errors(exc: BaseException) -> list[OSError]:
    """The OSErrors behind a failure: its own chain and, for DCP, every rank's."""
    found: list[OSError] = []
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            found.append(current)
        if isinstance(current, CheckpointException):
            pending.extend(failure[0] if isinstance(failure, tuple) else failure
                           for failure in current.failures.values())
        pending.extend([current.__cause__, current.__context__])
    return found

def save_failure(exc: BaseException, step_name: str, directory: Path, needed: int,
                 free_before: int | None) -> CheckpointError:
    """One line for a save that failed: how much space a checkpoint needs when the disk is full.

    ``free_before`` is measured as the save starts: afterwards the partial save fills the disk.
    """
    if isinstance(exc, CheckpointError):
        return exc
    errors = _os_errors(exc)
    free_now = _free_bytes(directory)
    full = (any(e.errno in _FULL_ERRNOS for e in errors)
            or (not errors and free_now is not None and free_now < needed))
    if full:
        free_text = f"{human_bytes(free_before)} were free" if free_before is not None else "free space unknown"
        return CheckpointError(
            f"disk full while saving checkpoint {step_name} in {directory}: a checkpoint of this run needs "
            f"about {human_bytes(needed)}, {free_text}",
            hint="free space there (--keep_last N keeps fewer checkpoints) or point --checkpoint_dir at a larger "
                 "file system; the run resumes from its newest complete checkpoint")
    denied = next((e for e in errors if e.errno in _DENIED_ERRNOS), None)
    if denied is not None:
        return CheckpointError(f"cannot write checkpoint {step_name} in {directory}: {denied.strerror}",
                               hint="choose a --checkpoint_dir you can write to, or fix the folder's permissions")
    reason = f"{errors[0].strerror} ({errors[0].filename})" if errors else _first_line(exc)
    return CheckpointError(f"saving checkpoint {step_name} in {directory} failed: {reason}",
                           hint=f"check free space and permissions of {directory}; the run resumes from its "
                                f"newest complete checkpoint")

_WRITER_THREAD_TARGET = "(_write_files_from_queue)"

_collectors: list[list[BaseException]] = []

_collectors_lock = threading.Lock()

_previous_excepthook = None

def _collect_writer_thread_failure(args) -> None:
    thread = getattr(args, "thread", None)
    name = getattr(thread, "name", "") or ""
    with _collectors_lock:
        active = list(_collectors)
    if not name.endswith(_WRITER_THREAD_TARGET):
        (_previous_excepthook or threading.__excepthook__)(args)
        return
    for collector in active:
        collector.append(args.exc_value)
    if not active:
        # A helper that failed after DCP's own thread had already raised: that failure is
        # the one reported; this one is a consequence (the same full disk, say).
        log.debug("checkpoint writer thread %s failed after the save had failed: %s", name, args.exc_value)

@contextmanager
def _writer_thread_failures():
    """Exceptions of DCP's helper writer threads during the block, instead of printed tracebacks."""
    global _previous_excepthook
    failures: list[BaseException] = []
    with _collectors_lock:
        if threading.excepthook is not _collect_writer_thread_failure:
            _previous_excepthook = threading.excepthook
            threading.excepthook = _collect_writer_thread_failure
        _collectors.append(failures)
    try:
        yield failures
    finally:
        with _collectors_lock:
            _collectors.remove(failures)

class _CheckedWriter(dcp.FileSystemWriter):
    """DCP's file writer, except that a failed helper thread fails the save.

    FileSystemWriter writes with ``thread_count`` threads, and an exception in a helper
    thread is only printed (by threading.excepthook): its files are left out of the write
    results, so the save would go on to commit an index that lacks those tensors. Raised
    here, inside DCP's write step, the failure reaches every rank like any other.
    """

    def write_data(self, plan, planner):
        with _writer_thread_failures() as failures:
            result = super().write_data(plan, planner)
        if failures:
            reasons = [e for failure in failures for e in _os_errors(failure)]
            # Exceptions lose their chain when DCP sends them to other ranks: raise the OS reason itself.
            raise reasons[0] if reasons else failures[0]
        return result

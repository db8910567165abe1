"""Saving and restoring training state with ``torch.distributed.checkpoint`` (DCP): every
rank writes its shards, rank 0 commits the step (see ``folder``), any world size reads it."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from llamapod.errors import CheckpointError, ConfigError
from llamapod.train.checkpoint import folder
from llamapod.train.checkpoint.index import _first_line, _quiet_single_process, check_compatible, open_checkpoint
from llamapod.train.checkpoint.rng import capture_rng, restore_rng
from llamapod.train.checkpoint.save_errors import _CheckedWriter, save_failure, state_bytes
from llamapod.train.checkpoint.staging import settle_device_writes, staging_options, state_devices


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()

def _rank() -> int:
    return dist.get_rank() if _distributed() else 0

def _world_size() -> int:
    return dist.get_world_size() if _distributed() else 1

def _run_on_rank0(action, describe=None) -> None:
    """Run ``action`` on rank 0; every rank raises rank 0's CheckpointError (no rank hangs).

    ``describe`` turns an OSError of the action into the CheckpointError to raise.
    """
    failure: CheckpointError | None = None
    if _rank() == 0:
        try:
            action()
        except CheckpointError as exc:
            failure = exc
        except OSError as exc:
            failure = describe(exc) if describe else CheckpointError(
                f"cannot write checkpoint: {exc.strerror or exc} ({exc.filename})",
                hint="check free space and permissions of the checkpoint folder")
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [None if failure is None else (failure.message, failure.hint)]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None:
            raise CheckpointError(*box[0])
    elif failure is not None:
        raise failure

def _run_on_every_rank(action, describe) -> None:
    """Run ``action`` on each rank; if it fails on any, every rank raises the first failure.

    For per-rank files (RNG streams): a rank that failed alone would leave the others
    waiting in the next collective until a timeout.
    """
    failure: tuple[str, str | None] | None = None
    try:
        action()
    except CheckpointError as exc:
        failure = (exc.message, exc.hint)
    except OSError as exc:
        described = describe(exc)
        failure = (described.message, described.hint)
    failures = [failure]
    if _distributed() and _world_size() > 1:
        failures = [None] * _world_size()
        dist.all_gather_object(failures, failure)
    first = next((f for f in failures if f is not None), None)
    if first is not None:
        raise CheckpointError(*first)


class CheckpointManager:
    """Saves and restores training state; every method except ``latest`` is collective."""

    def __init__(self, directory: str | os.PathLike, *, keep_last: int | None = None,
                 async_save: bool = False) -> None:
        if keep_last is not None and keep_last < 1:
            raise ConfigError(f"keep_last must be at least 1 (got {keep_last})",
                              hint="unset --keep_last to keep every checkpoint")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.async_save = async_save
        self._pending: threading.Thread | None = None
        self._pending_error: BaseException | None = None
        self._async_group = None
        self._stager = None
        self._staging = None  # the future of an async save's CPU copy still in progress
        self._guarded_optimizers: set[int] = set()

    # -- queries --

    def latest(self) -> Path | None:
        return folder.find_latest(self.directory)

    # -- saving --

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
             meta: dict[str, Any]) -> None:
        """Write step ``step``; all ranks call it.

        Synchronous: returns once the step is committed. Async: returns at once; a background
        thread copies the state to CPU memory and writes it, ``optimizer.step()`` waits for
        the copy only, and the step is committed when the write ends (``wait()`` joins it).
        """
        self.wait()
        final = self.directory / folder.step_dir_name(step)
        tmp = final.with_name(final.name + folder.TMP_SUFFIX)
        state = self._state(model, optimizer)
        needed = state_bytes(state)
        free_before = folder._free_bytes(self.directory)

        def describe(exc: BaseException) -> CheckpointError:
            return save_failure(exc, final.name, self.directory, needed, free_before)

        try:
            _run_on_rank0(lambda: self._prepare(tmp, step, meta), describe)
            _run_on_every_rank(lambda: self._write_rng(tmp), describe)
            writer = _CheckedWriter(str(tmp), single_file_per_rank=True, sync_files=True, thread_count=2)
            if self.async_save:
                self._start_async(state, writer, optimizer, tmp, final, describe)
                return
            try:
                with _quiet_single_process():
                    dcp.save(state, storage_writer=writer, no_dist=not _distributed())
            except (Exception, CheckpointException) as exc:
                # DCP gathers every rank's write result, so every rank gets here together.
                raise describe(exc) from None
            _run_on_rank0(lambda: self._commit(tmp, final), describe)
        except CheckpointError:
            if _rank() == 0:
                # A failed save must not leave a partial step filling the disk until the next save.
                shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _start_async(self, state, writer, optimizer, tmp: Path, final: Path, describe) -> None:
        self._guard_optimizer(optimizer)
        devices = state_devices(state)
        stager = self._async_stager(devices)
        settle_device_writes(devices)
        with _quiet_single_process():
            future = dcp.async_save(state, storage_writer=writer, process_group=self._async_process_group(),
                                    no_dist=not _distributed(), async_stager=stager)
        self._staging = getattr(future, "staging_completion", None)
        self._pending = threading.Thread(target=self._finish_async, args=(future, tmp, final, describe),
                                         name=f"checkpoint-commit-{final.name}", daemon=False)
        self._pending.start()

    def wait(self) -> None:
        """Block until a pending async save is written and committed; re-raise its failure."""
        self.wait_for_staging()
        if self._pending is not None:
            self._pending.join()
            self._pending = None
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            if isinstance(error, CheckpointError):
                raise error
            raise CheckpointError(f"saving a checkpoint in the background failed: {_first_line(error)}",
                                  hint=f"check free space and permissions of {self.directory}") from None

    def close(self) -> None:
        """Finish any pending save, then stop the staging thread and the async save's group.

        Call before destroying the process group: a background thread still inside a gloo
        collective when the interpreter exits aborts the process.
        """
        try:
            self.wait()
        finally:
            if self._stager is not None:
                self._stager.close()
                self._stager = None
            if self._async_group is not None and dist.is_initialized():
                dist.destroy_process_group(self._async_group)
            self._async_group = None

    def _async_stager(self, devices):
        # One stager for the whole run: it keeps its CPU buffers between saves, so only the
        # first save pays for allocating (and, on GPU, pinning) them. The copy runs in a
        # background thread; the optimizer guard below keeps it consistent.
        if self._stager is None:
            from torch.distributed.checkpoint.staging import DefaultStager

            self._stager = DefaultStager(staging_options(devices))
        return self._stager

    def _guard_optimizer(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Make ``optimizer.step()`` wait until the state being saved has been copied.

        Forward and backward only read the parameters, so training overlaps the copy; the
        first in-place update would change tensors the copy has not read yet.
        """
        if optimizer is None or id(optimizer) in self._guarded_optimizers:
            return
        optimizer.register_step_pre_hook(lambda *_: self.wait_for_staging())
        self._guarded_optimizers.add(id(optimizer))

    def wait_for_staging(self) -> None:
        """Block until an async save has copied the state it writes (training may then update it)."""
        staging, self._staging = self._staging, None
        if staging is not None:
            # A failed copy also fails the upload; wait() reports it on the training thread.
            staging.exception()

    def _finish_async(self, future, tmp: Path, final: Path, describe) -> None:
        try:
            upload = getattr(future, "upload_completion", future)
            upload.result()
            if _rank() == 0:
                self._commit(tmp, final)
        except (Exception, CheckpointException) as exc:  # surfaced by wait() on the training thread
            self._pending_error = describe(exc)
            if _rank() == 0:
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException as exc:
            self._pending_error = exc

    def _async_process_group(self):
        # The background writer runs collectives while training runs its own; on one
        # process group the two streams of collectives would interleave differently on
        # each rank and deadlock, so async saves get a gloo group of their own.
        if not (dist.is_available() and dist.is_initialized()):
            return None
        if self._async_group is None:
            self._async_group = dist.new_group(backend="gloo")
        return self._async_group

    def _prepare(self, tmp: Path, step: int, meta: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        folder.remove_stale(self.directory)
        tmp.mkdir()
        (tmp / "rng").mkdir()
        folder.write_meta(tmp, step, meta, world_size=_world_size(), torch_version=torch.__version__)

    def _write_rng(self, tmp: Path) -> None:
        folder._write_file_durably(tmp / "rng" / f"rank_{_rank():05d}.json", json.dumps(capture_rng()))

    def _commit(self, tmp: Path, final: Path) -> None:
        folder.commit(self.directory, tmp, final, self.keep_last)

    @staticmethod
    def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
        if optimizer is None:
            model_sd, _ = get_state_dict(model, [])
            return {"model": model_sd}
        model_sd, optim_sd = get_state_dict(model, optimizer)
        return {"model": model_sd, "optimizer": optim_sd}

    # -- loading --

    def load(self, path: str | os.PathLike, model: torch.nn.Module,
             optimizer: torch.optim.Optimizer | None, *, tokenizer: str | None = None) -> dict[str, Any]:
        """Restore ``model`` (and ``optimizer``) from ``path``; any world size. Returns the meta.

        ``path`` is a step folder or a folder of steps (its newest complete one is used).
        """
        self.wait()
        opened = open_checkpoint(folder.resolve_checkpoint(path))
        step_dir, meta = opened.step_dir, opened.meta
        state = self._state(model, optimizer)
        check_compatible(opened, model, state["model"], tokenizer)
        if optimizer is not None and not opened.has_optimizer_state():
            raise CheckpointError(f"checkpoint {step_dir} holds no optimizer state (it was saved for inference)",
                                  hint="resume from a training checkpoint, or use it with --init_from")
        try:
            with _quiet_single_process():
                dcp.load(state, storage_reader=opened.reader(), no_dist=not _distributed())
        except CheckpointError:
            raise
        except (Exception, CheckpointException) as exc:
            raise CheckpointError(
                f"checkpoint {step_dir} could not be read: {_first_line(exc)}",
                hint=folder._older_hint(step_dir),
            ) from None
        if optimizer is None:
            set_state_dict(model, [], model_state_dict=state["model"], optim_state_dict={})
        else:
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        _run_on_every_rank(lambda: self._restore_rank_rng(step_dir, meta),
                           lambda exc: CheckpointError(f"cannot read {step_dir}: {exc.strerror} ({exc.filename})",
                                                       hint=folder._older_hint(step_dir)))
        return meta

    @staticmethod
    def _restore_rank_rng(step_dir: Path, meta: dict[str, Any]) -> None:
        # RNG streams only continue exactly on the same world layout; on another one each
        # rank keeps the streams its seed gave it (the data order is restored separately).
        if meta.get("world_size") != _world_size():
            return
        rng_file = step_dir / "rng" / f"rank_{_rank():05d}.json"
        if not rng_file.is_file():
            # The save wrote one per rank before its marker: a missing one was removed since.
            raise CheckpointError(f"checkpoint {step_dir} is corrupted: {rng_file.relative_to(step_dir)} is missing",
                                  hint=folder._older_hint(step_dir))
        text = rng_file.read_text(encoding="utf-8", errors="replace")
        try:
            restore_rng(json.loads(text))
        except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as exc:
            # Empty, cut short or rewritten: JSON, base64 and setstate each fail differently.
            what = "empty" if not text.strip() else f"damaged ({type(exc).__name__})"
            raise CheckpointError(f"checkpoint {step_dir} is corrupted: {rng_file.relative_to(step_dir)} is {what}",
                                  hint=folder._older_hint(step_dir)) from None

"""Atomic, reshardable training checkpoints on ``torch.distributed.checkpoint`` (DCP).

Layout of a checkpoint folder::

    <dir>/step_00000010/            one complete step
        .metadata                   DCP's index of every tensor shard (written last by DCP)
        __<rank>_0.distcp           each rank's shards of model + optimizer state
        meta.json                   model args, train config, step, tokenizer, data position...
        rng/rank_00000.json         each rank's RNG streams
        COMPLETE                    the marker: written only after every rank finished
    <dir>/step_00000020.tmp/        a save in progress (or one interrupted by a crash)

A save writes everything under ``step_<N>.tmp``; once DCP has gathered every rank's write
results (so ``.metadata`` exists) rank 0 writes the marker and renames the folder to
``step_<N>``. A rename is atomic on POSIX file systems (local disks, Lustre, NFS), so a
reader sees either no step N or a complete one, whatever moment a process is killed at.
Resume picks the highest complete step and ignores the rest.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import random
import re
import shutil
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from llamapod.cli import ui
from llamapod.errors import CheckpointError, ConfigError
from llamapod.train.runfolder import LOCK_FILE as RUN_LOCK_FILE

log = logging.getLogger(__name__)

FORMAT = "llamapod-checkpoint/1"
MARKER = "COMPLETE"
META_FILE = "meta.json"
DCP_METADATA = ".metadata"
TMP_SUFFIX = ".tmp"
TRASH_SUFFIX = ".trash"
_STEP_RE = re.compile(r"^step_(\d+)$")
_ANY_STEP_RE = re.compile(r"^step_(\d+)(\.tmp|\.trash)?$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@contextmanager
def _quiet_single_process():
    # DCP warns on every single-process save/load that it "assumes" one process; that is
    # exactly what llamapod intends when torch.distributed is not initialised.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


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


def _fsync_dir(path: Path) -> None:
    # A rename is only durable once its directory entry is flushed; without this a power
    # loss can resurrect the old name even though the process saw the rename succeed.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file_durably(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".part")
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


# ---- RNG -------------------------------------------------------------------------------


def _capture_rng() -> dict[str, Any]:
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_json(random.getstate()),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode("ascii")
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(_from_json(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_bytes_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_bytes_tensor(state["cuda"]))


def _bytes_tensor(encoded: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(encoded)), dtype=torch.uint8).clone()


def _to_json(value: Any) -> Any:
    # random.getstate() is nested tuples; JSON has only lists, so tag tuples to restore them.
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v) for v in value]}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and "__tuple__" in value:
        return tuple(_from_json(v) for v in value["__tuple__"])
    return value


# ---- inspecting a folder ---------------------------------------------------------------


def _listdir(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except PermissionError:
        raise CheckpointError(
            f"cannot read checkpoint folder {directory}: permission denied",
            hint=f"check the folder's permissions (ls -ld {directory})",
        ) from None
    except NotADirectoryError:
        raise CheckpointError(
            f"checkpoint path {directory} is a file, not a folder",
            hint="pass the folder that holds the step_<N> checkpoints",
        ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint folder {directory}: {exc.strerror or exc}") from None


def is_complete(step_dir: Path) -> bool:
    return bool(_STEP_RE.match(step_dir.name)) and (step_dir / MARKER).is_file()


def complete_steps(directory: Path) -> list[Path]:
    """Complete step folders in ``directory``, oldest first."""
    found = [p for p in _listdir(directory) if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: int(_STEP_RE.match(p.name).group(1)))


def _partial_steps(directory: Path) -> list[Path]:
    partial = []
    for entry in _listdir(directory):
        match = _ANY_STEP_RE.match(entry.name)
        if not match or not entry.is_dir() or match.group(2) == TRASH_SUFFIX:
            continue
        if match.group(2) == TMP_SUFFIX or not (entry / MARKER).is_file():
            partial.append(entry)
    return partial


def find_latest(directory: str | os.PathLike, *, warn: bool = True) -> Path | None:
    """The newest complete step under ``directory`` (or ``directory`` itself if it is one).

    ``None`` means there is nothing to resume from: the folder does not exist, is empty or
    holds only interrupted saves (said in one warning line). A folder holding other things
    than checkpoints raises, so a mistyped path never silently restarts training from scratch.
    """
    directory = Path(directory)
    if not directory.exists():
        return None
    if is_complete(directory):
        return directory
    entries = _listdir(directory)
    steps = complete_steps(directory)
    partial = _partial_steps(directory)
    if warn and partial and _rank() == 0:
        names = ", ".join(p.name for p in partial)
        ui.warn(f"ignoring {len(partial)} incomplete checkpoint(s) in {directory} "
                f"(interrupted saves, no {MARKER} marker): {names}")
    if steps:
        return steps[-1]
    if _ANY_STEP_RE.match(directory.name) and directory.is_dir():
        raise CheckpointError(
            f"checkpoint {directory} is partial: it has no {MARKER} marker (its save was interrupted)",
            hint=_older_hint(directory),
        )
    foreign = [p.name for p in entries if not _ANY_STEP_RE.match(p.name) and p.name != RUN_LOCK_FILE]
    if foreign and not partial:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise CheckpointError(
            f"{directory} is not a llamapod checkpoint folder: it holds no step_<N> checkpoints ({shown})",
            hint="point --resume_from_checkpoint at the run's checkpoint folder, or at an empty/new folder to start fresh",
        )
    return None


def read_meta(step_dir: str | os.PathLike) -> dict[str, Any]:
    step_dir = Path(step_dir)
    meta_path = step_dir / META_FILE
    try:
        text = meta_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {step_dir} is corrupted: {META_FILE} is missing",
            hint=_older_hint(step_dir),
        ) from None
    except PermissionError:
        raise CheckpointError(f"cannot read {meta_path}: permission denied",
                              hint=f"check the file's permissions (ls -l {meta_path})") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"checkpoint {step_dir} is corrupted: {META_FILE} is not valid JSON ({exc.msg} at line {exc.lineno})",
            hint=_older_hint(step_dir),
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{step_dir} was not written by llamapod: {META_FILE} lacks format {FORMAT!r}",
            hint="point at a checkpoint folder written by `llamapod train`",
        )
    problem = _meta_problem(meta)
    if problem:
        raise CheckpointError(f"checkpoint {step_dir} is corrupted: {META_FILE} {problem}", hint=_older_hint(step_dir))
    return meta


# Types of the meta fields that resume and inference read (others are informational).
_META_TYPES: dict[str, tuple[type, ...]] = {"step": (int,), "world_size": (int,), "model_args": (dict,),
                                            "train_config": (dict,), "data": (dict,), "scheduler": (dict,),
                                            "tokenizer": (str,), "world": (dict,)}


def _meta_problem(meta: dict[str, Any]) -> str | None:
    if "step" not in meta:
        return "lacks the step"
    for key, types in _META_TYPES.items():
        value = meta.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            return f"has a {type(value).__name__} for {key!r} where a {types[0].__name__} belongs"
    if meta["step"] < 0:
        return f"has a negative step ({meta['step']})"
    data = meta.get("data")
    if isinstance(data, dict):
        # The data position resumes the sampler: whole, non-negative numbers or nothing.
        wrong = [key for key in ("epoch", "position") if isinstance(data.get(key), bool)
                 or not isinstance(data.get(key), int) or data[key] < 0]
        if wrong:
            return f"has a data position of the wrong type: {', '.join(wrong)}"
    args = meta.get("model_args")
    if isinstance(args, dict):
        wrong = [name for name, value in args.items() if not _fits_model_field(name, value)]
        if wrong:
            return f"has model_args of the wrong type: {', '.join(sorted(wrong))}"
    return None


def _fits_model_field(name: str, value: Any) -> bool:
    import dataclasses

    from llamapod.train.presets import ModelArgs

    kinds = {f.name: (f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")) for f in
             dataclasses.fields(ModelArgs)}
    kind = kinds.get(name)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool) and value > 0
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


def _older_hint(step_dir: Path) -> str:
    parent = step_dir.parent
    try:
        older = [p for p in complete_steps(parent) if p != step_dir]
    except CheckpointError:
        older = []
    if older:
        return f"delete {step_dir} to resume from the previous complete checkpoint {older[-1].name}"
    return f"delete {step_dir}; no older complete checkpoint exists, so training would start fresh"


def read_dcp_metadata(step_dir: Path):
    """DCP's index of the checkpoint, after checking every shard file it names is whole."""
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    if not (step_dir / DCP_METADATA).is_file():
        raise CheckpointError(
            f"checkpoint {step_dir} is corrupted: its tensor index {DCP_METADATA} is missing",
            hint=_older_hint(step_dir),
        )
    try:
        metadata = FileSystemReader(str(step_dir)).read_metadata()
    except PermissionError:
        raise CheckpointError(f"cannot read {step_dir / DCP_METADATA}: permission denied",
                              hint=f"check the folder's permissions (ls -l {step_dir})") from None
    except Exception as exc:  # a truncated or overwritten pickle fails in many ways
        raise CheckpointError(
            f"checkpoint {step_dir} is corrupted: its tensor index {DCP_METADATA} cannot be read ({type(exc).__name__})",
            hint=_older_hint(step_dir),
        ) from None
    _check_shard_files(step_dir, metadata)
    return metadata


def _check_shard_files(step_dir: Path, metadata) -> None:
    # DCP reads each tensor at (offset, length) inside a shard file; a shard cut short by a
    # full disk or a partial copy would otherwise fail deep inside torch.load on one rank.
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        end = info.offset + info.length
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for name, size in sorted(needed.items()):
        path = step_dir / name
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {step_dir} is corrupted: shard {name} is missing",
                                  hint=_older_hint(step_dir)) from None
        if actual < size:
            raise CheckpointError(
                f"checkpoint {step_dir} is corrupted: shard {name} is truncated ({actual} of {size} bytes)",
                hint=_older_hint(step_dir),
            )
        if not os.access(path, os.R_OK):
            raise CheckpointError(f"cannot read shard {path}: permission denied",
                                  hint=f"check the file's permissions (ls -l {path})")


def validate_checkpoint(step_dir: str | os.PathLike) -> dict[str, Any]:
    """Check that ``step_dir`` is a complete, whole llamapod checkpoint; return its meta."""
    step_dir = Path(step_dir)
    if not step_dir.exists():
        raise CheckpointError(f"checkpoint {step_dir} does not exist",
                              hint="pass a step_<N> folder or the folder that holds them")
    if not step_dir.is_dir():
        raise CheckpointError(f"checkpoint path {step_dir} is a file, not a folder",
                              hint="pass a step_<N> folder or the folder that holds them")
    _listdir(step_dir)
    if not (step_dir / MARKER).is_file():
        raise CheckpointError(
            f"checkpoint {step_dir} is partial: it has no {MARKER} marker (its save was interrupted)",
            hint=_older_hint(step_dir),
        )
    meta = read_meta(step_dir)
    read_dcp_metadata(step_dir)
    return meta


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A step folder from either a step folder or a folder of steps (newest complete one)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist",
                              hint="pass a step_<N> folder or the folder that holds them")
    latest = find_latest(path)
    if latest is None:
        raise CheckpointError(f"{path} holds no complete checkpoint",
                              hint="train with --checkpoint_freq so checkpoints get written, then retry")
    return latest


# ---- compatibility ---------------------------------------------------------------------


def _model_args_dict(model: torch.nn.Module) -> dict[str, Any] | None:
    args = getattr(model, "args", None)
    if args is not None and hasattr(args, "to_dict"):
        return dict(args.to_dict())
    return None


def _describe_args(args: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={args.get(k)}" for k in keys)


def same_tokenizer(saved: str, current: str) -> bool:
    """Tokenizer names are ``<label>@<vocabulary fingerprint>``: the label says where it was
    loaded from (a file, its folder, a hub id), the fingerprint what it is, so only the
    fingerprints must match for the token ids to mean the same thing."""
    if saved == current:
        return True
    if "@" in saved and "@" in current:
        return saved.rsplit("@", 1)[1] == current.rsplit("@", 1)[1]
    return False


def check_compatible(step_dir: Path, meta: dict[str, Any], model: torch.nn.Module,
                     model_state: dict[str, Any], tokenizer: str | None) -> None:
    """Raise a CheckpointError naming both sides if the checkpoint cannot load into ``model``."""
    saved_tok = meta.get("tokenizer")
    if tokenizer is not None and saved_tok is not None and not same_tokenizer(saved_tok, tokenizer):
        raise CheckpointError(
            f"checkpoint {step_dir} was trained with tokenizer {saved_tok!r} but this run uses {tokenizer!r}",
            hint=f"pass --tokenizer {saved_tok} to resume it, or use a new --checkpoint_dir to start fresh",
        )
    saved_args = meta.get("model_args")
    run_args = _model_args_dict(model)
    if isinstance(saved_args, dict) and run_args is not None:
        differing = [k for k in sorted(set(saved_args) | set(run_args)) if saved_args.get(k) != run_args.get(k)
                     and k not in _SHAPE_NEUTRAL_ARGS]
        if differing:
            raise CheckpointError(
                f"checkpoint {step_dir} holds a different model shape: checkpoint has "
                f"{_describe_args(saved_args, differing)}; this run builds {_describe_args(run_args, differing)}",
                hint="use the checkpoint's model flags to resume it, or a new --checkpoint_dir to start fresh",
            )
    _check_tensor_shapes(step_dir, model_state)


# Fields that change numerics but not the state's shapes may differ on resume (e.g. a
# longer context for fine-tuning, a different rope base for context extension).
_SHAPE_NEUTRAL_ARGS = {"max_seq_len", "rope_theta", "norm_eps"}


def _check_tensor_shapes(step_dir: Path, model_state: dict[str, Any]) -> None:
    metadata = read_dcp_metadata(step_dir)
    saved = {k[len("model."):]: v for k, v in metadata.state_dict_metadata.items() if k.startswith("model.")}
    for name, tensor in model_state.items():
        if not isinstance(tensor, torch.Tensor):
            continue
        if name not in saved:
            raise CheckpointError(
                f"checkpoint {step_dir} has no tensor {name!r} that this model needs "
                f"(checkpoint tensors: {len(saved)}, model tensors: {len(model_state)})",
                hint="use the checkpoint's model flags to resume it, or a new --checkpoint_dir to start fresh",
            )
        saved_shape = list(getattr(saved[name], "size", []))
        if saved_shape != list(tensor.shape):
            raise CheckpointError(
                f"checkpoint {step_dir} does not fit this model: {name} is {saved_shape} in the checkpoint "
                f"but {list(tensor.shape)} in this run",
                hint="use the checkpoint's model flags to resume it, or a new --checkpoint_dir to start fresh",
            )


# ---- failures while saving -------------------------------------------------------------


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


def human_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


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


def _free_bytes(directory: Path) -> int | None:
    """Free bytes on the file system that holds (or will hold) ``directory``."""
    for candidate in (directory, *directory.absolute().parents):
        try:
            return shutil.disk_usage(candidate).free
        except FileNotFoundError:
            continue
        except OSError:
            return None
    return None


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


# ---- the manager -----------------------------------------------------------------------


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
        return find_latest(self.directory)

    # -- saving --

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
             meta: dict[str, Any]) -> None:
        """Write step ``step``; all ranks call it.

        Synchronous: returns once the step is committed. Async: returns at once; a background
        thread copies the state to CPU memory and writes it, ``optimizer.step()`` waits for
        the copy only, and the step is committed when the write ends (``wait()`` joins it).
        """
        self.wait()
        final = self.directory / step_dir_name(step)
        tmp = final.with_name(final.name + TMP_SUFFIX)
        state = self._state(model, optimizer)
        needed = state_bytes(state)
        free_before = _free_bytes(self.directory)

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
        with _quiet_single_process():
            future = dcp.async_save(state, storage_writer=writer, process_group=self._async_process_group(),
                                    no_dist=not _distributed(), async_stager=self._async_stager())
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

    def _async_stager(self):
        # One stager for the whole run: it keeps its CPU buffers between saves, so only the
        # first save pays for allocating (and, on GPU, pinning) them. The copy runs in a
        # background thread; the optimizer guard below keeps it consistent.
        if self._stager is None:
            from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

            cuda = torch.cuda.is_available()
            self._stager = DefaultStager(StagingOptions(use_pinned_memory=cuda, use_shared_memory=False,
                                                        use_async_staging=True, use_non_blocking_copy=cuda))
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
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._remove_stale()
            tmp.mkdir()
            (tmp / "rng").mkdir()
            full_meta = dict(meta)
            full_meta.update({
                "format": FORMAT,
                "step": step,
                "world_size": _world_size(),
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "torch_version": torch.__version__,
            })
            _write_file_durably(tmp / META_FILE, json.dumps(full_meta, indent=2, sort_keys=True, default=str))
        except TypeError as exc:
            raise CheckpointError(f"checkpoint metadata is not JSON-serialisable: {exc}") from None

    def _write_rng(self, tmp: Path) -> None:
        _write_file_durably(tmp / "rng" / f"rank_{_rank():05d}.json", json.dumps(_capture_rng()))

    def _commit(self, tmp: Path, final: Path) -> None:
        _write_file_durably(tmp / MARKER, json.dumps({"step": int(final.name.split("_")[1])}))
        _fsync_dir(tmp)
        if final.exists():
            # Re-saving a step (a run restarted from an older checkpoint): move the old copy
            # away first so a crash between the two renames leaves a complete step behind.
            self._trash(final)
        os.replace(tmp, final)
        _fsync_dir(self.directory)
        self._apply_retention(final)

    def _apply_retention(self, newest: Path) -> None:
        if self.keep_last is None:
            return
        steps = complete_steps(self.directory)
        for old in steps[: max(0, len(steps) - self.keep_last)]:
            if old != newest:
                self._trash(old)
        self._remove_stale()

    def _trash(self, step_dir: Path) -> None:
        # Renaming first makes the deletion atomic for readers: a crash half-way through
        # rmtree must never leave a folder that still looks like a complete checkpoint.
        trash = step_dir.with_name(step_dir.name + TRASH_SUFFIX)
        if trash.exists():
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(step_dir, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _remove_stale(self) -> None:
        # Only one job writes a checkpoint folder and saves never overlap (save() waits for
        # the previous one), so any .tmp/.trash found here was left by a killed process.
        for entry in _listdir(self.directory):
            match = _ANY_STEP_RE.match(entry.name)
            if match and match.group(2):
                shutil.rmtree(entry, ignore_errors=True)

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
        step_dir = resolve_checkpoint(path)
        meta = validate_checkpoint(step_dir)
        state = self._state(model, optimizer)
        check_compatible(step_dir, meta, model, state["model"], tokenizer)
        if optimizer is not None and not _has_optimizer_state(step_dir):
            raise CheckpointError(f"checkpoint {step_dir} holds no optimizer state (it was saved for inference)",
                                  hint="resume from a training checkpoint, or use it with --init_from")
        try:
            with _quiet_single_process():
                dcp.load(state, storage_reader=dcp.FileSystemReader(str(step_dir)), no_dist=not _distributed())
        except CheckpointError:
            raise
        except (Exception, CheckpointException) as exc:
            raise CheckpointError(
                f"checkpoint {step_dir} could not be read: {_first_line(exc)}",
                hint=_older_hint(step_dir),
            ) from None
        if optimizer is None:
            set_state_dict(model, [], model_state_dict=state["model"], optim_state_dict={})
        else:
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        _run_on_every_rank(lambda: self._restore_rank_rng(step_dir, meta),
                           lambda exc: CheckpointError(f"cannot read {step_dir}: {exc.strerror} ({exc.filename})",
                                                       hint=_older_hint(step_dir)))
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
                                  hint=_older_hint(step_dir))
        text = rng_file.read_text(encoding="utf-8", errors="replace")
        try:
            _restore_rng(json.loads(text))
        except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as exc:
            # Empty, cut short or rewritten: JSON, base64 and setstate each fail differently.
            what = "empty" if not text.strip() else f"damaged ({type(exc).__name__})"
            raise CheckpointError(f"checkpoint {step_dir} is corrupted: {rng_file.relative_to(step_dir)} is {what}",
                                  hint=_older_hint(step_dir)) from None


def _has_optimizer_state(step_dir: Path) -> bool:
    metadata = read_dcp_metadata(step_dir)
    return any(k.startswith("optimizer.") for k in metadata.state_dict_metadata)


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, CheckpointException) and exc.failures:
        # Its text is every rank's traceback: the first rank's exception says what went wrong.
        inner = next(iter(exc.failures.values()))
        exc = inner[0] if isinstance(inner, tuple) else inner
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# ---- single-process reading (sample, export) -------------------------------------------


def load_model_state_for_inference(checkpoint_path: str | os.PathLike):
    """``(ModelArgs, full model state_dict on CPU, meta)`` from a checkpoint, in one process.

    Works without torch.distributed and regardless of how many ranks wrote the checkpoint.
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from llamapod.train.model import ModelArgs

    step_dir = resolve_checkpoint(checkpoint_path)
    meta = validate_checkpoint(step_dir)
    if not isinstance(meta.get("model_args"), dict):
        raise CheckpointError(f"checkpoint {step_dir} is corrupted: {META_FILE} lacks model_args",
                              hint=_older_hint(step_dir))
    args = ModelArgs.from_dict(meta["model_args"])
    metadata = read_dcp_metadata(step_dir)
    state: dict[str, Any] = {}
    for key, item in metadata.state_dict_metadata.items():
        if key.startswith("model.") and isinstance(item, TensorStorageMetadata):
            state[key] = torch.empty(tuple(item.size), dtype=item.properties.dtype)
    try:
        with _quiet_single_process():
            dcp.load(state, checkpoint_id=str(step_dir), no_dist=True)
    except (Exception, CheckpointException) as exc:
        raise CheckpointError(f"checkpoint {step_dir} could not be read: {_first_line(exc)}",
                              hint=_older_hint(step_dir)) from None
    return args, {k[len("model."):]: v for k, v in state.items()}, meta

"""The checkpoint folder protocol, torch-free: step folders, the marker, meta.json, retention.

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

import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from llamapod import report
from llamapod.errors import CheckpointError
from llamapod.train.runfolder import LOCK_FILE as RUN_LOCK_FILE

FORMAT = "llamapod-checkpoint/1"
_FORMAT_FAMILY = "llamapod-checkpoint/"

MARKER = "COMPLETE"

META_FILE = "meta.json"

DCP_METADATA = ".metadata"

TMP_SUFFIX = ".tmp"

TRASH_SUFFIX = ".trash"

_STEP_RE = re.compile(r"^step_(\d+)$")

_ANY_STEP_RE = re.compile(r"^step_(\d+)(\.tmp|\.trash)?$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _is_rank0() -> bool:
    # Every launcher (torchrun, srun, a world of one) sets RANK before the trainer runs.
    return os.environ.get("RANK", "0") == "0"


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
    if warn and partial and _is_rank0():
        names = ", ".join(p.name for p in partial)
        report.warn(f"ignoring {len(partial)} incomplete checkpoint(s) in {directory} "
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
        nested = _newest_nested_checkpoints(directory)
        raise CheckpointError(
            f"{directory} is not a llamapod checkpoint folder: it holds no step_<N> checkpoints ({shown})",
            hint=(f"did you mean {nested}? (a run's checkpoints are in its checkpoints/ folder)" if nested else
                  "point it at a run's checkpoints folder, or (to train from scratch) at an empty or new folder"),
        )
    return None

def _newest_nested_checkpoints(directory: Path) -> Path | None:
    """The newest ``<run>/checkpoints`` (or ``<run>``) under ``directory`` that holds a complete
    step: what a user who pointed at the runs/ folder most likely meant."""
    candidates = []
    for entry in _listdir(directory):
        for folder in (entry / "checkpoints", entry):
            try:
                steps = complete_steps(folder) if folder.is_dir() else []
            except (CheckpointError, OSError):
                steps = []
            if steps:
                candidates.append((steps[-1].stat().st_mtime, folder))
                break
    return max(candidates)[1] if candidates else None


def read_meta(step_dir: str | os.PathLike) -> dict[str, Any]:
    step_dir = Path(step_dir)
    meta_path = step_dir / META_FILE
    if meta_path.exists() and not meta_path.is_file():
        raise CheckpointError(f"checkpoint {step_dir} is corrupted: {META_FILE} is not a regular file",
                              hint=_older_hint(step_dir))
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
    except UnicodeDecodeError:
        raise CheckpointError(f"checkpoint {step_dir} is corrupted: {META_FILE} is not UTF-8 text",
                              hint=_older_hint(step_dir)) from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"checkpoint {step_dir} is corrupted: {META_FILE} is not valid JSON ({exc.msg} at line {exc.lineno})",
            hint=_older_hint(step_dir),
        ) from None
    written = meta.get("format") if isinstance(meta, dict) else None
    if isinstance(written, str) and written.startswith(_FORMAT_FAMILY) and written != FORMAT:
        raise CheckpointError(
            f"checkpoint {step_dir} has format {written!r}, which this llamapod ({FORMAT!r}) cannot read",
            hint="upgrade llamapod (pip install -U llamapod) to read checkpoints written by a newer one")
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
        return _shape_problem(args)
    return None

def _shape_problem(args: dict[str, Any]) -> str | None:
    """A shape no model can be built with (the model is built from it before any tensor is read)."""
    import dataclasses

    from llamapod.errors import ConfigError
    from llamapod.shapes import ModelArgs, check_shape

    known = {f.name for f in dataclasses.fields(ModelArgs)}
    try:
        check_shape(ModelArgs(**{k: v for k, v in args.items() if k in known}))
    except TypeError:
        return None  # fields missing: whoever reads the meta names them
    except ConfigError as exc:
        return f"has model_args no model can be built with: {exc.message}"
    return None

def _fits_model_field(name: str, value: Any) -> bool:
    import dataclasses

    from llamapod.shapes import ModelArgs

    kinds = {f.name: (f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")) for f in
             dataclasses.fields(ModelArgs)}
    kind = kinds.get(name)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool) and value > 0
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
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

def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A step folder from either a step folder or a folder of steps (newest complete one)."""
    path = Path(path)
    if not path.exists() and path.is_symlink():
        raise CheckpointError(f"checkpoint {path} is a broken or looping symbolic link",
                              hint="point the link at a checkpoint folder, or pass the folder itself")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist",
                              hint="pass a step_<N> folder or the folder that holds them")
    latest = find_latest(path)
    if latest is None:
        raise CheckpointError(f"{path} holds no complete checkpoint",
                              hint="train with --checkpoint_freq so checkpoints get written, then retry")
    return latest

def same_tokenizer(saved: str, current: str) -> bool:
    """Tokenizer names are ``<label>@<vocabulary fingerprint>``: the label says where it was
    loaded from (a file, its folder, a hub id), the fingerprint what it is, so only the
    fingerprints must match for the token ids to mean the same thing."""
    if saved == current:
        return True
    if "@" in saved and "@" in current:
        return saved.rsplit("@", 1)[1] == current.rsplit("@", 1)[1]
    return False

def human_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"

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


def write_meta(tmp: Path, step: int, meta: dict[str, Any], *, world_size: int, torch_version: str) -> None:
    """meta.json of a save in progress: what the run recorded, plus what any reader checks."""
    full_meta = dict(meta)
    full_meta.update({"format": FORMAT, "step": step, "world_size": world_size,
                      "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "torch_version": torch_version})
    try:
        text = json.dumps(full_meta, indent=2, sort_keys=True, default=str)
    except TypeError as exc:
        raise CheckpointError(f"checkpoint metadata is not JSON-serialisable: {exc}") from None
    _write_file_durably(tmp / META_FILE, text)


def commit(directory: Path, tmp: Path, final: Path, keep_last: int | None) -> None:
    """Mark ``tmp`` complete and rename it to ``final``; then drop steps beyond ``keep_last``."""
    _write_file_durably(tmp / MARKER, json.dumps({"step": int(final.name.split("_")[1])}))
    _fsync_dir(tmp)
    if final.exists():
        # Re-saving a step (a run restarted from an older checkpoint): move the old copy
        # away first so a crash between the two renames leaves a complete step behind.
        trash(final)
    os.replace(tmp, final)
    _fsync_dir(directory)
    _apply_retention(directory, final, keep_last)


def _apply_retention(directory: Path, newest: Path, keep_last: int | None) -> None:
    if keep_last is None:
        return
    steps = complete_steps(directory)
    for old in steps[: max(0, len(steps) - keep_last)]:
        if old != newest:
            trash(old)
    remove_stale(directory)


def trash(step_dir: Path) -> None:
    # Renaming first makes the deletion atomic for readers: a crash half-way through
    # rmtree must never leave a folder that still looks like a complete checkpoint.
    trash_dir = step_dir.with_name(step_dir.name + TRASH_SUFFIX)
    if trash_dir.exists():
        shutil.rmtree(trash_dir, ignore_errors=True)
    os.replace(step_dir, trash_dir)
    shutil.rmtree(trash_dir, ignore_errors=True)


def remove_stale(directory: Path) -> None:
    # Only one job writes a checkpoint folder and saves never overlap (save() waits for
    # the previous one), so any .tmp/.trash found here was left by a killed process.
    for entry in _listdir(directory):
        match = _ANY_STEP_RE.match(entry.name)
        if match and match.group(2):
            shutil.rmtree(entry, ignore_errors=True)

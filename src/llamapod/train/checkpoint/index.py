"""DCP's index of a checkpoint (``.metadata``), read once per load: is every shard whole, does
the checkpoint fit this model, does it hold optimizer state."""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from llamapod.errors import CheckpointError
from llamapod.train.checkpoint.folder import DCP_METADATA, MARKER, _listdir, _older_hint, read_meta, same_tokenizer

@contextmanager
def _quiet_single_process():
    # DCP warns on every single-process save/load that it "assumes" one process; that is
    # exactly what llamapod intends when torch.distributed is not initialised.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield

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



@dataclass(frozen=True)
class OpenedCheckpoint:
    """A checkpoint checked whole: its meta.json and its DCP index, each read once."""

    step_dir: Path
    meta: dict[str, Any]
    index: Any  # torch.distributed.checkpoint.metadata.Metadata

    def has_optimizer_state(self) -> bool:
        return any(k.startswith("optimizer.") for k in self.index.state_dict_metadata)

    def reader(self) -> dcp.FileSystemReader:
        """A DCP reader that answers with the index already read instead of reading it again."""
        return _ReaderWithIndex(str(self.step_dir), self.index)


class _ReaderWithIndex(dcp.FileSystemReader):
    def __init__(self, path: str, index: Any) -> None:
        super().__init__(path)
        self._index = index

    def read_metadata(self, *args, **kwargs):
        return self._index


def open_checkpoint(step_dir: str | os.PathLike) -> OpenedCheckpoint:
    """Check that ``step_dir`` is a complete, whole llamapod checkpoint."""
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
    return OpenedCheckpoint(step_dir, meta, read_dcp_metadata(step_dir))


def validate_checkpoint(step_dir: str | os.PathLike) -> dict[str, Any]:
    """Check that ``step_dir`` is a complete, whole llamapod checkpoint; return its meta."""
    return open_checkpoint(step_dir).meta


def _model_args_dict(model: torch.nn.Module) -> dict[str, Any] | None:
    args = getattr(model, "args", None)
    if args is not None and hasattr(args, "to_dict"):
        return dict(args.to_dict())
    return None

def _describe_args(args: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={args.get(k)}" for k in keys)

def check_compatible(opened: OpenedCheckpoint, model: torch.nn.Module, model_state: dict[str, Any],
                     tokenizer: str | None) -> None:
    """Raise a CheckpointError naming both sides if the checkpoint cannot load into ``model``."""
    step_dir, meta = opened.step_dir, opened.meta
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
    _check_tensor_shapes(step_dir, opened.index, model_state)

# Fields that change numerics but not the state's shapes may differ on resume (e.g. a
# longer context for fine-tuning, a different rope base for context extension).
_SHAPE_NEUTRAL_ARGS = {"max_seq_len", "rope_theta", "norm_eps"}

def _check_tensor_shapes(step_dir: Path, metadata: Any, model_state: dict[str, Any]) -> None:
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

def _first_line(exc: BaseException) -> str:
    if isinstance(exc, CheckpointException) and exc.failures:
        # Its text is every rank's traceback: the first rank's exception says what went wrong.
        inner = next(iter(exc.failures.values()))
        exc = inner[0] if isinstance(inner, tuple) else inner
    if type(exc).__name__ == "UnpicklingError":  # pickle's, without importing pickle here
        # torch.load's text is advice about weights_only, which is no help with a damaged file.
        return "a tensor shard is damaged (its contents do not unpickle)"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def read_tensors(opened: OpenedCheckpoint, state: dict[str, Any]) -> None:
    """Fill ``state`` (DCP keys -> tensors of the saved shapes) from ``opened`` in this process."""
    try:
        with _quiet_single_process():
            dcp.load(state, storage_reader=opened.reader(), no_dist=True)
    except (Exception, CheckpointException) as exc:
        raise CheckpointError(f"checkpoint {opened.step_dir} could not be read: {_first_line(exc)}",
                              hint=_older_hint(opened.step_dir)) from None

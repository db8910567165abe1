"""Exporting a checkpoint: a Hugging Face Llama folder (``transformers`` loads it) or one
consolidated ``torch.save`` file, one output shard in memory at a time, written beside the
target and moved into place whole."""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator

import torch

from llamapod.errors import CheckpointError
from llamapod.train.hf import (_LAYER_NAMES, _VOCAB_ROWS, DEFAULT_SHARD_BYTES, HF_CONFIG, HF_INDEX, HF_SINGLE,
                               _rotary_heads, hf_config, hf_name, meta_to_hf_rows)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _shard_plan(sizes: dict[str, int], max_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def _ordered_names(n_layers: int) -> Iterator[str]:
    yield "tok_embeddings.weight"
    for i in range(n_layers):
        for suffix in _LAYER_NAMES:
            yield f"layers.{i}.{suffix}"
    yield "norm.weight"
    yield "output.weight"


def export_hf(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, dtype: str = "float32",
              max_shard_bytes: int = DEFAULT_SHARD_BYTES, tokenizer: Any | None = None,
              force: bool = False) -> list[Path]:
    """Write ``out_dir`` as a Hugging Face Llama folder; returns the files written.

    Tensors are read from the DCP checkpoint one output shard at a time, so exporting never
    needs more memory than one shard (2 GiB by default), whatever the model size. The
    folder is written beside the target and renamed into place when complete; an existing
    model folder is replaced only with ``force`` (weights, index and config together).
    """
    from llamapod.train.checkpoint import open_checkpoint, resolve_checkpoint
    from llamapod.train.model import ModelArgs

    if dtype not in _DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}", hint=f"choose one of: {', '.join(_DTYPES)}")
    opened = open_checkpoint(resolve_checkpoint(checkpoint))
    step_dir = opened.step_dir
    args = ModelArgs.from_dict(opened.meta["model_args"])
    metadata = opened.index.state_dict_metadata
    target = Path(out_dir)
    _check_export_target(target, force)
    element = torch.tensor([], dtype=_DTYPES[dtype]).element_size()
    sizes = {}
    for name in _ordered_names(args.n_layers):
        if f"model.{name}" not in metadata:
            raise CheckpointError(f"checkpoint {step_dir} lacks tensor {name}")
        shape = list(metadata[f"model.{name}"].size)
        rows = args.vocab_size if name in _VOCAB_ROWS else shape[0]
        sizes[name] = rows * math.prod(shape[1:]) * element
    plan = _shard_plan(sizes, max_shard_bytes)
    with _staged_export(target) as out:
        written: list[Path] = []
        weight_map: dict[str, str] = {}
        for index, names in enumerate(plan, start=1):
            file_name = HF_SINGLE if len(plan) == 1 else f"model-{index:05d}-of-{len(plan):05d}.safetensors"
            state = {f"model.{n}": torch.empty(tuple(metadata[f"model.{n}"].size),
                                               dtype=metadata[f"model.{n}"].properties.dtype) for n in names}
            _read_tensors(state, opened)
            tensors = {}
            for name in names:
                tensor = _to_hf_tensor(name, state[f"model.{name}"], args)
                tensors[hf_name(name)] = tensor.to(_DTYPES[dtype]).contiguous()
                weight_map[hf_name(name)] = file_name
            _save_safetensors(tensors, out / file_name)
            written.append(out / file_name)
            del state, tensors
        if len(plan) > 1:
            index_doc = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
            (out / HF_INDEX).write_text(json.dumps(index_doc, indent=2, sort_keys=True), encoding="utf-8")
            written.append(out / HF_INDEX)
        bos = getattr(tokenizer, "bos_id", None) if tokenizer is not None else None
        eos = getattr(tokenizer, "eos_id", None) if tokenizer is not None else None
        config = hf_config(args, torch_dtype=dtype, bos_id=bos, eos_id=eos)
        (out / HF_CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
        written.append(out / HF_CONFIG)
        generation = {"bos_token_id": bos, "eos_token_id": eos, "do_sample": True, "temperature": 0.8}
        (out / "generation_config.json").write_text(json.dumps(generation, indent=2), encoding="utf-8")
        written.append(out / "generation_config.json")
        if tokenizer is not None and hasattr(tokenizer, "save_files"):
            written.extend(Path(p) for p in tokenizer.save_files(out))
        names_written = [p.relative_to(out) for p in written]
    return [target / name for name in names_written]


def _read_tensors(state: dict[str, torch.Tensor], opened) -> None:
    from llamapod.train.checkpoint.index import read_tensors

    read_tensors(opened, state)


def _to_hf_tensor(name: str, tensor: torch.Tensor, args) -> torch.Tensor:
    if name in _VOCAB_ROWS:
        return tensor[: args.vocab_size]
    heads = _rotary_heads(name, args.n_heads, args.n_kv_heads)
    if heads is not None:
        return meta_to_hf_rows(tensor, heads)
    return tensor


# Files an export writes (or an older export of another size wrote); anything else found in
# a folder being replaced belongs to the user and is carried over.
_EXPORT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "tokenizer.model")
_WEIGHT_PATTERNS = ("model*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "*.bin.index.json")


def _check_export_target(out: Path, force: bool) -> None:
    """Refuse a target that holds anything, unless ``force`` replaces a Hugging Face model folder."""
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"export target {out} is a file", hint="pass a folder path for --hf")
    try:
        occupied = out.is_dir() and any(out.iterdir())
    except PermissionError:
        raise CheckpointError(f"cannot read export target {out}: permission denied",
                              hint=f"check the folder's permissions (ls -ld {out}), or choose another folder") from None
    if not occupied:
        return
    if not (out / HF_CONFIG).is_file():
        raise CheckpointError(f"export target {out} is not empty and is not a Hugging Face model folder",
                              hint="choose a new or empty folder (nothing there is overwritten)")
    if not force:
        raise CheckpointError(f"export target {out} already holds a Hugging Face model",
                              hint="pass --force to replace its weights, index and config (other files are kept), "
                                   "or choose a new folder")


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def _staged_export(target: Path) -> Iterator[Path]:
    """A hidden sibling folder to write into; renamed to ``target`` once everything is written.

    Readers of ``target`` never see a mix of old and new shards, an index naming shards
    that are not there, or a half-written file. Every file and folder gets the mode a
    plain ``open``/``mkdir`` would give (umask applied), so the export is as readable to
    other users of a shared file system as the rest of the run folder: safetensors and
    tempfile would otherwise leave some of it private (0600/0700).
    """
    import shutil
    import tempfile

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    except OSError as exc:
        raise _export_write_error(target, exc) from None
    try:
        yield staging
        _apply_plain_modes(staging, _current_umask())
        _move_into_place(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise _export_write_error(target, exc, halves=" (--dtype bfloat16 halves the size)") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _apply_plain_modes(root: Path, umask: int) -> None:
    os.chmod(root, 0o777 & ~umask)
    for path in root.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _move_into_place(staging: Path, target: Path) -> None:
    import shutil

    if not target.exists():
        os.rename(staging, target)
        return
    _carry_user_files(target, staging)
    # Two renames: a crash between them leaves the old model in the hidden .replaced folder
    # and the new one in .partial, never a folder that mixes the two.
    replaced = target.with_name(f".{target.name}.replaced-{os.getpid()}")
    os.rename(target, replaced)
    os.rename(staging, target)
    shutil.rmtree(replaced, ignore_errors=True)


def _carry_user_files(old: Path, new: Path) -> None:
    import shutil

    for entry in old.iterdir():
        if (new / entry.name).exists() or entry.name in _EXPORT_FILES:
            continue
        if any(entry.match(pattern) for pattern in _WEIGHT_PATTERNS):
            continue  # a stale shard or index of the model being replaced
        if entry.is_dir():
            shutil.copytree(entry, new / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, new / entry.name, follow_symlinks=False)


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    import errno
    import re

    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata={"format": "pt"})
    except SafetensorError as exc:
        # safetensors reports a failed write as text ("I/O error: ... (os error 28)").
        found = re.search(r"os error (\d+)", str(exc))
        code = int(found.group(1)) if found else errno.EIO
        raise OSError(code, os.strerror(code), str(path)) from None


def _export_write_error(target: Path, exc: OSError, *, halves: str = "") -> CheckpointError:
    import errno

    from llamapod.paths import dead_link

    reason = exc.strerror or str(exc)
    dead = dead_link(target)
    if dead is not None:
        return CheckpointError(f"cannot write the export {target}: {dead} is a broken or looping symbolic link",
                               hint="point the link at an existing folder, remove it, or export elsewhere")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CheckpointError(f"cannot write the export {target}: {reason}",
                               hint=f"free space on the file system of {target.parent}, or export elsewhere{halves}")
    return CheckpointError(f"cannot write the export {target}: {reason}",
                           hint=f"choose a folder you can write to, or fix the permissions of {target.parent}")


def export_consolidated(checkpoint: str | os.PathLike, out_file: str | os.PathLike, *, force: bool = False) -> Path:
    """One ``torch.save`` file: {"model_args", "model" (full state dict, our names), "meta"}."""
    from llamapod.train.checkpoint import load_model_state_for_inference

    out_file = Path(out_file)
    if out_file.is_dir():
        raise CheckpointError(f"export target {out_file} is a folder", hint="pass a file path such as model.pt")
    if out_file.exists() and not force:
        raise CheckpointError(f"export target {out_file} already exists",
                              hint="pass --force to replace it, or choose a new file name")
    if out_file.exists() and not _is_torch_save_file(out_file):
        # --force replaces an earlier export, never another file (a checkpoint's meta.json, notes).
        raise CheckpointError(f"export target {out_file} is not an earlier --consolidated export: --force does not "
                              f"replace it", hint="choose a new file name")
    args, state, meta = load_model_state_for_inference(checkpoint)
    partial = out_file.with_name(f".{out_file.name}.{os.getpid()}.partial")
    try:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as handle:
            torch.save({"model_args": args.to_dict(), "model": state, "meta": meta}, handle)
        os.replace(partial, out_file)
    except (OSError, RuntimeError) as exc:
        reason = _as_os_error(exc, out_file)  # before the partial file frees its space
        with suppress(OSError):
            partial.unlink()
        raise _export_write_error(out_file, reason) from None
    return out_file


def _is_torch_save_file(path: Path) -> bool:
    """A file torch.save wrote: a zip archive holding <name>/data.pkl."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _as_os_error(exc: BaseException, path: Path) -> OSError:
    """torch.save reports a failed write as RuntimeError ("unexpected pos ..."): find the OS reason."""
    import errno
    import shutil

    if isinstance(exc, OSError):
        return exc
    try:
        full = shutil.disk_usage(path.parent).free == 0
    except OSError:
        full = False
    code = errno.ENOSPC if full else errno.EIO
    return OSError(code, os.strerror(code), str(path))

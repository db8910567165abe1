"""Hugging Face Llama folders in and out.

Two naming schemes meet here. Ours (Meta/torchtitan) rotates adjacent pairs (2i, 2i+1) of
each attention head; Hugging Face's ``rotate_half`` rotates element i with element
i + head_dim/2, so its q/k projection rows are stored permuted. Within one head::

    HF row  j·(hd/2) + i   ==   Meta row  2i + j        (i < hd/2, j ∈ {0, 1})

Our embedding and output matrices are padded to a multiple of 64 rows; Hugging Face's
hold exactly the vocabulary, so export drops the padding rows and import zero-fills them.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator

import torch

from llamapod.errors import CheckpointError

HF_CONFIG = "config.json"
HF_INDEX = "model.safetensors.index.json"
HF_SINGLE = "model.safetensors"
DEFAULT_SHARD_BYTES = 2 * 1024**3

_LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TOP_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_VOCAB_ROWS = {"tok_embeddings.weight", "output.weight"}


# ---- names and layouts -----------------------------------------------------------------


def hf_name(name: str) -> str:
    """The Hugging Face name of one of our state-dict names."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "layers" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    raise CheckpointError(f"no Hugging Face Llama name for tensor {name!r}")


def _rotary_heads(name: str, n_heads: int, n_kv_heads: int) -> int | None:
    """How many heads a q/k projection holds (their rows need re-ordering), else None."""
    if name.endswith("attention.wq.weight"):
        return n_heads
    if name.endswith("attention.wk.weight"):
        return n_kv_heads
    return None


def meta_to_hf_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    head_dim = weight.shape[0] // heads
    return weight.reshape(heads, head_dim // 2, 2, -1).transpose(1, 2).reshape(weight.shape)


def hf_to_meta_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    head_dim = weight.shape[0] // heads
    return weight.reshape(heads, 2, head_dim // 2, -1).transpose(1, 2).reshape(weight.shape)


# ---- config ----------------------------------------------------------------------------


def hf_config(args, *, torch_dtype: str, bos_id: int | None, eos_id: int | None) -> dict[str, Any]:
    """config.json for ``LlamaForCausalLM``; rope written both ways so transformers 4 and 5 read it."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": args.vocab_size,
        "hidden_size": args.dim,
        "intermediate_size": args.ffn_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": args.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": torch_dtype,
        "dtype": torch_dtype,
        "use_cache": True,
    }


def read_hf_config(hf_dir: Path) -> dict[str, Any]:
    path = hf_dir / HF_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{hf_dir} is not a Hugging Face model folder: {HF_CONFIG} is missing",
                              hint="point --init_from at a folder written by save_pretrained or `llamapod export --hf`") from None
    except PermissionError:
        raise CheckpointError(f"cannot read {path}: permission denied") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if config.get("model_type") != "llama":
        raise CheckpointError(f"{hf_dir} holds a {config.get('model_type')!r} model, not a Llama",
                              hint="--init_from takes Hugging Face Llama folders (model_type \"llama\")")
    return config


def _rope(config: dict[str, Any]) -> tuple[float, str]:
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    return float(theta), kind


def model_args_from_hf(config: dict[str, Any]):
    """Our ModelArgs for a Hugging Face Llama config."""
    from llamapod.train.model import ModelArgs

    theta, _ = _rope(config)
    return ModelArgs(
        dim=config["hidden_size"],
        n_layers=config["num_hidden_layers"],
        n_heads=config["num_attention_heads"],
        n_kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
        vocab_size=config["vocab_size"],
        ffn_dim=config["intermediate_size"],
        norm_eps=config.get("rms_norm_eps", 1e-5),
        rope_theta=theta,
        max_seq_len=config.get("max_position_embeddings", 2048),
    )


def check_hf_matches(config: dict[str, Any], args, hf_dir: Path) -> None:
    """Raise naming both sides when the HF model cannot load into a model built from ``args``."""
    _, rope_kind = _rope(config)
    if rope_kind != "default":
        raise CheckpointError(f"{hf_dir} uses rope scaling {rope_kind!r}, which llamapod's model does not implement",
                              hint="use a Llama without rope scaling (Llama 2, Llama 3 8B/70B)")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise CheckpointError(f"{hf_dir} has bias terms in attention/MLP; llamapod's Llama has none")
    hf_head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    theirs = model_args_from_hf(config)
    fields = ["dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "ffn_dim", "rope_theta"]
    differing = [f for f in fields if getattr(theirs, f) != getattr(args, f)]
    # A different epsilon changes every RMSNorm output: the same weights, another model.
    if not math.isclose(theirs.norm_eps, args.norm_eps, rel_tol=1e-6):
        differing.append("norm_eps")
    if hf_head_dim != theirs.dim // theirs.n_heads:
        differing.append("head_dim")
    if differing:
        ours = ", ".join(f"{f}={getattr(args, f, None) if f != 'head_dim' else args.head_dim}" for f in differing)
        hf = ", ".join(f"{f}={getattr(theirs, f) if f != 'head_dim' else hf_head_dim}" for f in differing)
        raise CheckpointError(
            f"Hugging Face model {hf_dir} does not match this run's model: it has {hf}; this run builds {ours}",
            hint="set the model flags to the Hugging Face config's sizes (or drop --preset) and retry",
        )


# ---- import: Hugging Face -> our (sharded) model ---------------------------------------


def _weight_files(hf_dir: Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file holding it."""
    index = hf_dir / HF_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError):
            raise CheckpointError(f"{index} is corrupted: no weight_map") from None
        return {name: hf_dir / file for name, file in weight_map.items()}
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{hf_dir} holds no *.safetensors weights",
                              hint="save the model with safe_serialization (the default of save_pretrained)")
    mapping: dict[str, Path] = {}
    for file in files:
        with _open_safetensors(file) as handle:
            for name in handle.keys():
                mapping[name] = file
    return mapping


def _open_safetensors(path: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"weights file {path} is missing") from None
    except Exception as exc:
        raise CheckpointError(f"weights file {path} is corrupted or truncated ({exc})",
                              hint="download or export the model again") from None


def _local_box(param: torch.Tensor) -> tuple[torch.Tensor, list[int], list[int]]:
    """(local tensor, its global offset, its shape) — a plain tensor is its own whole box."""
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
        return param.to_local(), list(offset), list(shape)
    return param, [0] * param.dim(), list(param.shape)


def _read_rows(handle, hf_key: str, start: int, stop: int, cols: slice) -> torch.Tensor:
    tensor_slice = handle.get_slice(hf_key)
    if len(tensor_slice.get_shape()) == 1:
        return tensor_slice[start:stop]
    return tensor_slice[start:stop, cols]


def _read_local_rows(handle, hf_key: str, name: str, start: int, stop: int, cols: slice,
                     heads: int | None, total_rows: int) -> torch.Tensor:
    """Rows [start, stop) of our layout, read from the HF tensor without loading all of it."""
    if heads is None:
        return _read_rows(handle, hf_key, start, stop, cols)
    # Our rows within one head are an interleaving of two halves of the HF head, so read
    # the whole heads that overlap the range (at most one extra head at each end).
    head_dim = total_rows // heads
    first_head, last_head = start // head_dim, (stop - 1) // head_dim
    block = _read_rows(handle, hf_key, first_head * head_dim, (last_head + 1) * head_dim, cols)
    block = hf_to_meta_rows(block, last_head - first_head + 1)
    offset = first_head * head_dim
    return block[start - offset:stop - offset]


@torch.no_grad()
def load_hf_weights(model: torch.nn.Module, hf_dir: str | os.PathLike) -> None:
    """Fill ``model`` (plain, or FSDP2-sharded with materialised shards) from a HF Llama folder.

    Each rank reads only the rows of its own shards from the safetensors files (memory-mapped
    slices), so no rank ever holds the full model.
    """
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise CheckpointError(f"Hugging Face model folder {hf_dir} does not exist",
                              hint="pass a folder with config.json and *.safetensors (e.g. from huggingface-cli download)")
    args = model.args
    config = read_hf_config(hf_dir)
    check_hf_matches(config, args, hf_dir)
    files = _weight_files(hf_dir)
    tied = config.get("tie_word_embeddings", False) and "lm_head.weight" not in files
    handles: dict[Path, Any] = {}
    try:
        for raw_name, param in model.named_parameters():
            name = raw_name.replace("_orig_mod.", "").replace("_checkpoint_wrapped_module.", "")
            key = hf_name(name)
            if key == "lm_head.weight" and tied:
                key = "model.embed_tokens.weight"
            if key not in files:
                raise CheckpointError(f"Hugging Face model {hf_dir} lacks tensor {key}",
                                      hint="the folder is incomplete: download or export it again")
            if files[key] not in handles:
                handles[files[key]] = _open_safetensors(files[key]).__enter__()
            _fill_param(param, name, key, handles[files[key]], args)
    finally:
        for handle in handles.values():
            handle.__exit__(None, None, None)


def _fill_param(param: torch.Tensor, name: str, key: str, handle, args) -> None:
    if param.device.type == "meta":
        raise CheckpointError("the model is still on the meta device; materialise it before loading weights")
    local, offset, shape = _local_box(param)
    if local.numel() == 0:
        return
    start, stop = offset[0], offset[0] + shape[0]
    cols = slice(offset[1], offset[1] + shape[1]) if len(shape) > 1 else slice(None)
    heads = _rotary_heads(name, args.n_heads, args.n_kv_heads)
    expected = list(handle.get_slice(key).get_shape())
    full = list(param.shape)
    if name in _VOCAB_ROWS:
        expected_rows, full_rows = args.vocab_size, full[0]
        if expected != [expected_rows] + full[1:]:
            raise CheckpointError(f"tensor {key} is {expected} in the Hugging Face model but this model needs "
                                  f"{[expected_rows] + full[1:]}")
        local.zero_()  # padding rows: never a real token
        real_stop = min(stop, expected_rows)
        if real_stop > start:
            rows = _read_rows(handle, key, start, real_stop, cols)
            local[: real_stop - start].copy_(rows)
        return
    if expected != full:
        raise CheckpointError(f"tensor {key} is {expected} in the Hugging Face model but this model needs {full}")
    local.copy_(_read_local_rows(handle, key, name, start, stop, cols, heads, full[0]))


# ---- export: our checkpoint -> Hugging Face folder -------------------------------------


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
    from llamapod.train.checkpoint import read_dcp_metadata, resolve_checkpoint, validate_checkpoint
    from llamapod.train.model import ModelArgs

    if dtype not in _DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}", hint=f"choose one of: {', '.join(_DTYPES)}")
    step_dir = resolve_checkpoint(checkpoint)
    meta = validate_checkpoint(step_dir)
    args = ModelArgs.from_dict(meta["model_args"])
    metadata = read_dcp_metadata(step_dir).state_dict_metadata
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
            _read_tensors(state, step_dir)
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


def _read_tensors(state: dict[str, torch.Tensor], step_dir: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    from llamapod.train.checkpoint import _first_line, _older_hint, _quiet_single_process

    try:
        with _quiet_single_process():
            dcp.load(state, checkpoint_id=str(step_dir), no_dist=True)
    except (Exception, CheckpointException) as exc:
        raise CheckpointError(f"checkpoint {step_dir} could not be read: {_first_line(exc)}",
                              hint=_older_hint(step_dir)) from None


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

    reason = exc.strerror or str(exc)
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

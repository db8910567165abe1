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
from pathlib import Path
from typing import Any

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
    if path.exists() and not path.is_file():
        raise CheckpointError(f"{path} is not a regular file", hint="point --init_from at a Hugging Face model folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{hf_dir} is not a Hugging Face model folder: {HF_CONFIG} is missing",
                              hint="point --init_from at a folder written by save_pretrained or `llamapod export --hf`") from None
    except PermissionError:
        raise CheckpointError(f"cannot read {path}: permission denied") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not UTF-8 text") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a model config (it holds no JSON object)",
                              hint="point --init_from at a folder written by save_pretrained or `llamapod export --hf`")
    if config.get("model_type") != "llama":
        raise CheckpointError(f"{hf_dir} holds a {config.get('model_type')!r} model, not a Llama",
                              hint="--init_from takes Hugging Face Llama folders (model_type \"llama\")")
    wrong = [key for key, kind, required in _CONFIG_FIELDS
             if (key in config or required) and not _is_field(config.get(key), kind, required)]
    if wrong:
        raise CheckpointError(f"{path} has missing or wrong values for: {', '.join(wrong)}",
                              hint="sizes must be positive whole numbers, rope_theta and rms_norm_eps positive numbers")
    return config


# (key, type, required): what model_args_from_hf and check_hf_matches read.
_CONFIG_FIELDS = [(key, "int", True) for key in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                   "vocab_size", "intermediate_size")]
_CONFIG_FIELDS += [(key, "int", False) for key in ("num_key_value_heads", "head_dim", "max_position_embeddings")]
_CONFIG_FIELDS += [("rms_norm_eps", "float", False), ("rope_theta", "float", False),
                   ("rope_parameters", "dict", False), ("rope_scaling", "dict", False)]


def _is_field(value: Any, kind: str, required: bool) -> bool:
    if value is None:
        return not required
    if kind == "dict":
        return isinstance(value, dict)
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind == "float" else int):
        return False
    return math.isfinite(value) and value > 0


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
        except (ValueError, KeyError, TypeError):  # JSON, UTF-8, or no object holding a weight_map
            raise CheckpointError(f"{index} is corrupted: no weight_map") from None
        if not isinstance(weight_map, dict) or not all(
                isinstance(file, str) and Path(file).name == file for file in weight_map.values()):
            raise CheckpointError(f"{index} is corrupted: its weight_map must name files of {hf_dir}")
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
        what = "is a file, not a folder" if hf_dir.exists() else "does not exist"
        raise CheckpointError(f"Hugging Face model folder {hf_dir} {what}",
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
        expected_rows = args.vocab_size
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

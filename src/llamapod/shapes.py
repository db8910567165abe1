"""Model sizes: a plain dict of ``ModelArgs`` (torchtitan style), and the parameter formula.

This module is torch-free on purpose: the config layer validates shapes (heads dividing
the hidden size, a known preset) on a login node that may not have torch installed.
``ModelArgs`` is re-exported by ``llamapod.train.model``, where the model lives.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

from llamapod.errors import ConfigError

VOCAB_MULTIPLE = 64  # embedding rows are padded to this so matmuls stay aligned


@dataclass(frozen=True)
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    ffn_dim: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelArgs":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def replace(self, **changes: Any) -> "ModelArgs":
        return dataclasses.replace(self, **changes)


def padded_vocab_size(vocab_size: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """The embedding/output row count: the vocabulary rounded up to a multiple of 64."""
    return -(-vocab_size // multiple) * multiple


PRESETS: dict[str, ModelArgs] = {
    # For tests: a forward+backward takes milliseconds on one CPU core.
    "tiny": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=32000, ffn_dim=192,
                      max_seq_len=64),
    # The main job (`llamapod train` with no flags): learns Python source visibly in
    # minutes on 2 CPU cores.
    "small": ModelArgs(dim=192, n_layers=4, n_heads=6, n_kv_heads=2, vocab_size=32000, ffn_dim=512,
                       max_seq_len=256),
    # ~1B parameters (with a 32k vocabulary) with 128-wide heads: sized for MFU on one GPU.
    "llama-1b": ModelArgs(dim=2048, n_layers=18, n_heads=16, n_kv_heads=8, vocab_size=32000, ffn_dim=8192,
                          max_seq_len=2048),
    "llama2-7b": ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, vocab_size=32000, ffn_dim=11008,
                           rope_theta=1e4, max_seq_len=4096),
    "llama2-13b": ModelArgs(dim=5120, n_layers=40, n_heads=40, n_kv_heads=40, vocab_size=32000, ffn_dim=13824,
                            rope_theta=1e4, max_seq_len=4096),
    "llama2-70b": ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=32000, ffn_dim=28672,
                            rope_theta=1e4, max_seq_len=4096),
    "llama3-8b": ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, ffn_dim=14336,
                           rope_theta=5e5, max_seq_len=8192),
    "llama3-70b": ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=128256, ffn_dim=28672,
                            rope_theta=5e5, max_seq_len=8192),
    # The reference FSDP example's default shape (--hidden_width 768 --num_layers 12
    # --num_heads 12 --intermediate_size 11008 --max_context_width 2048): the base a command
    # line written against the reference starts from when it names only some sizes.
    "reference-default": ModelArgs(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, vocab_size=50432,
                                   ffn_dim=11008, max_seq_len=2048),
}

DEFAULT_PRESET = "small"

# --model_type picks the rotary base of that family when sizes are given by hand.
MODEL_TYPE_ROPE_THETA = {"llama_v2": 1e4, "llama_v3": 5e5}


def get_preset(name: str) -> ModelArgs:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1, cutoff=0.5)
        guess = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown preset '{name}'", f"{guess}choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def count_parameters(args: ModelArgs) -> int:
    """N = 2·V·d + L·(2d² + 2·d·kv·hd + 3·d·ff + 2d) + d (untied embeddings, no biases)."""
    d, hd, kv = args.dim, args.head_dim, args.n_kv_heads
    per_layer = 2 * d * d + 2 * d * kv * hd + 3 * d * args.ffn_dim + 2 * d
    return 2 * args.vocab_size * d + args.n_layers * per_layer + d


def flops_per_token(args: ModelArgs, seq_len: int) -> int:
    """Training FLOPs per token: 6·(N − V·d) + 12·L·d·T (the input embedding is a lookup).

    The attention term counts the full T×T score matrix, as the best public trainers do,
    so MFU figures are comparable with theirs.
    """
    n = count_parameters(args)
    return 6 * (n - args.vocab_size * args.dim) + 12 * args.n_layers * args.dim * seq_len


# Far above any model trained (the largest preset has 70 billion parameters), far below
# where a size stops fitting torch's 64-bit sizes or a layer loop stops ending.
MAX_PARAMETERS = 10**13
MAX_LAYERS = 10_000
MAX_SEQ_LEN = 1 << 24


def check_shape(args: ModelArgs) -> None:
    """Raise ConfigError for a shape the model cannot be built with."""
    if args.n_layers > MAX_LAYERS:
        raise ConfigError(f"num_layers {args.n_layers} is more than {MAX_LAYERS:,} transformer blocks",
                          "pick a --num_layers a model can train with (llama2-70b has 80)")
    if args.max_seq_len > MAX_SEQ_LEN:
        raise ConfigError(f"max_context_width {args.max_seq_len} is more than {MAX_SEQ_LEN:,} tokens",
                          "pick a --max_context_width of at most the preset's (llama3-8b: 8192)")
    if count_parameters(args) > MAX_PARAMETERS:
        raise ConfigError(f"this shape has {count_parameters(args):.3g} parameters, more than any model can be "
                          f"trained with ({MAX_PARAMETERS:.0e})",
                          "check --hidden_width, --intermediate_size, --vocab_size and --num_layers "
                          "(llama2-70b: 8192, 28672, 32000, 80)")
    if args.dim % args.n_heads:
        raise ConfigError(
            f"hidden width {args.dim} is not divisible by num_heads {args.n_heads}",
            "pick --num_heads that divides --hidden_width (head size = hidden_width / num_heads)")
    if args.n_heads % args.n_kv_heads:
        raise ConfigError(
            f"num_heads {args.n_heads} is not divisible by num_key_value_heads {args.n_kv_heads}",
            "pick --num_key_value_heads that divides --num_heads (each key/value head serves a group of query heads)")
    if args.head_dim % 2:
        raise ConfigError(
            f"head size {args.head_dim} (hidden_width {args.dim} / num_heads {args.n_heads}) must be even for rotary embeddings",
            "pick --hidden_width and --num_heads so hidden_width / num_heads is even")

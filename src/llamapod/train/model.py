"""The Llama model: RMSNorm, rotary embeddings (Meta layout), grouped-query attention, SwiGLU.

Written for speed and for sharding:
- attention is one fused ``scaled_dot_product_attention(is_causal=True)`` call;
- the rotary table is computed once into a complex buffer, so a step does no Python-side
  table work and mixed precision cannot round it;
- the model is built on the meta device, sharded, then materialised per rank with
  ``to_empty`` + ``init_weights``; each weight is drawn from a generator seeded by its name
  and row block, so 1, 2 or 64 ranks get bit-identical weights and no rank ever holds
  more than its shard plus one block.

State-dict names follow Meta/torchtitan (``layers.0.attention.wq.weight``); rotary rotates
adjacent pairs (2i, 2i+1) of each head as Meta's checkpoints expect.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from llamapod.train.fused import linear_cross_entropy, rms_norm
from llamapod.shapes import ModelArgs, padded_vocab_size

__all__ = ["ModelArgs", "Transformer", "padded_vocab_size", "rotary_tables"]

INIT_STD = 0.02
# Weights are generated in blocks of rows, each from its own seeded generator: any rank
# can produce exactly its rows of the full-size tensor without generating the others.
INIT_BLOCK_ELEMENTS = 1 << 20


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).type_as(x)
        # On CPU torch's rms_norm is composite; the hand-written backward saves a third.
        return rms_norm(x, self.weight, self.eps)


def rotary_tables(head_dim: int, max_seq_len: int, theta: float, device=None) -> torch.Tensor:
    """e^{i·position·frequency} for every position and pair, complex64 [max_seq_len, head_dim // 2].

    Complex, not a (cos, sin) pair of real tables: FSDP2's mixed precision casts every
    floating-point forward argument of a sharded block to bf16, and a bf16 rotation loses
    the position of tokens far into the sequence (and ``torch.complex`` refuses bf16 parts).
    A complex tensor is not floating point, so the cast leaves it exact.
    """
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_seq_len, device=device, dtype=torch.float32), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of each head; x is [B, T, H, hd], rotation [T, hd // 2].

    Each pair is a complex number multiplied by its position's e^{i·angle}, in fp32 whatever
    x's dtype. Eager, that is one complex kernel forward and backward, several times faster
    than the same rotation in real arithmetic; inductor generates no code for complex
    numbers, so a compiled block spells it out in real numbers, which it fuses.
    """
    if torch.compiler.is_compiling():
        return _apply_rotary_real(x, rotation)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotation[None, :, None, :]).flatten(-2).type_as(x)


def _apply_rotary_real(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    cos_sin = torch.view_as_real(rotation)[None, :, None, :, :]
    cos, sin = cos_sin[..., 0], cos_sin[..., 1]
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    return torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1).flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads
        self.head_dim = args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        q = self.wq(x).view(bsz, seqlen, self.n_heads, self.head_dim)
        k = self.wk(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        q, k = apply_rotary(q, rotation), apply_rotary(k, rotation)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        gqa = self.n_kv_heads != self.n_heads
        if gqa and x.is_cuda:
            # Expanded k/v keep every CUDA attention kernel (flash, cuDNN, efficient) eligible.
            repeats = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(repeats, dim=1)
            v = v.repeat_interleave(repeats, dim=1)
            gqa = False
        # On CPU the flash kernel shares kv heads itself: no copies (measured 25% faster).
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        return self.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)  # gate
        self.w2 = nn.Linear(hidden, dim, bias=False)  # down
        self.w3 = nn.Linear(dim, hidden, bias=False)  # up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.ffn_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rotation)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.vocab_padded = padded_vocab_size(args.vocab_size)
        self.tok_embeddings = nn.Embedding(self.vocab_padded, args.dim)
        # A ModuleDict keyed "0", "1", ... so FSDP2 can wrap each block and names stay stable.
        self.layers = nn.ModuleDict({str(i): TransformerBlock(args) for i in range(args.n_layers)})
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, self.vocab_padded, bias=False)
        self.register_buffer("rotation", rotary_tables(args.head_dim, args.max_seq_len, args.rope_theta),
                             persistent=False)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, vocab_padded]; with ``targets`` [B, T], the mean next-token loss instead.

        The loss path never builds the logits (see ``fused.linear_cross_entropy``).
        """
        rotation = self.rotation[:tokens.shape[1]]
        h = self.tok_embeddings(tokens)
        for layer in self.layers.values():
            h = layer(h, rotation)
        h = self.norm(h)
        if targets is None:
            return self.output(h)
        return linear_cross_entropy(h, self.output.weight, targets, vocab_size=self.args.vocab_size)

    @torch.no_grad()
    def reset_rotary(self, device: torch.device | str | None = None) -> None:
        """Recompute the rotary tables (after ``to_empty`` they hold garbage) on ``device``."""
        device = device or self.rotation.device
        self.rotation = rotary_tables(self.args.head_dim, self.args.max_seq_len, self.args.rope_theta, device=device)

    @torch.no_grad()
    def init_weights(self, seed: int = 0, buffer_device: torch.device | str | None = None,
                     std: float = INIT_STD) -> None:
        """Fill every parameter (full-size or a DTensor shard) and recompute the rotary tables.

        Called after ``to_empty``; the values depend only on (seed, parameter name), never on
        how the model is sharded. ``buffer_device`` differs from the parameters' device only
        with CPU offload (parameters in CPU memory, compute on the GPU).
        """
        self.reset_rotary(buffer_device)
        # Output projections get a depth-scaled std (GPT-2/torchtitan) so residual
        # activations do not grow with the number of layers.
        depth_std = std / math.sqrt(2 * self.args.n_layers)
        for name, param in self.named_parameters():
            name = clean_name(name)
            if name.endswith("norm.weight"):
                _local(param).fill_(1.0)
            elif name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                fill_normal(param, name, seed, depth_std)
            elif name == "tok_embeddings.weight":
                fill_normal(param, name, seed, 1.0)
            elif name == "output.weight":
                fill_normal(param, name, seed, self.args.dim ** -0.5)
            else:
                fill_normal(param, name, seed, std)


WRAPPER_PREFIXES = ("_orig_mod.", "_checkpoint_wrapped_module.")


def clean_name(name: str) -> str:
    """The parameter name without wrapper prefixes (torch.compile's, activation checkpointing's)."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _local(param: torch.Tensor) -> torch.Tensor:
    return param.to_local() if hasattr(param, "to_local") else param


def _row_range(param: torch.Tensor) -> tuple[int, int]:
    """Which rows of the full tensor this rank holds (FSDP2 shards along dim 0)."""
    if not hasattr(param, "device_mesh"):
        return 0, param.shape[0]
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    local_shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return offset[0], offset[0] + local_shape[0]


def fill_normal(param: torch.Tensor, name: str, seed: int, std: float) -> None:
    """N(0, std²) values of the full-size tensor, written only for this rank's rows."""
    local = _local(param)
    start, stop = _row_range(param)
    if stop <= start:
        return
    row_elems = max(1, math.prod(param.shape[1:]))
    rows_per_block = max(1, INIT_BLOCK_ELEMENTS // row_elems)
    name_seed = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:6], "little")
    # Always drawn on the CPU: CUDA's generator gives other numbers for the same seed, and a
    # run must start from the same weights on a laptop, a GPU, or a resume elsewhere.
    generator = torch.Generator(device="cpu")
    first_block, last_block = start // rows_per_block, (stop - 1) // rows_per_block
    for block in range(first_block, last_block + 1):
        block_start = block * rows_per_block
        block_rows = min(rows_per_block, param.shape[0] - block_start)
        generator.manual_seed(name_seed + block)
        values = torch.randn((block_rows, *param.shape[1:]), generator=generator, dtype=torch.float32)
        values.mul_(std)
        lo, hi = max(start, block_start), min(stop, block_start + block_rows)
        local[lo - start:hi - start].copy_(values[lo - block_start:hi - block_start])

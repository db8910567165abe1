"""Text generation from a checkpoint, in one process (no torch.distributed needed).

A KV cache keeps generation linear in the number of new tokens; the padded vocabulary
rows beyond the tokenizer's are never sampled.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from llamapod.errors import CheckpointError
from llamapod.train.model import Transformer, apply_rotary


def load_for_inference(checkpoint: str | Path, device: str = "cpu"):
    """(model in eval mode, tokenizer, meta) from a checkpoint folder or one of its steps."""
    from llamapod.data import load_tokenizer
    from llamapod.train.checkpoint import load_model_state_for_inference

    args, state, meta = load_model_state_for_inference(checkpoint)
    tokenizer = load_tokenizer(meta.get("tokenizer_spec"))
    if meta.get("tokenizer") and tokenizer.name != meta["tokenizer"]:
        raise CheckpointError(
            f"checkpoint was trained with tokenizer {meta['tokenizer']!r} but {tokenizer.name!r} loads today",
            "the tokenizer files changed since training; restore them or re-train")
    with torch.device("meta"):
        model = Transformer(args)
    model.to_empty(device=device)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model.reset_rotary(device)
    return model.eval(), tokenizer, meta


class _KVCache:
    def __init__(self, model: Transformer, batch: int, device):
        a = model.args
        shape = (batch, a.n_kv_heads, a.max_seq_len, a.head_dim)
        self.k = [torch.zeros(shape, device=device) for _ in range(a.n_layers)]
        self.v = [torch.zeros(shape, device=device) for _ in range(a.n_layers)]


def _forward_cached(model: Transformer, tokens: torch.Tensor, start: int, cache: _KVCache) -> torch.Tensor:
    """Logits of the last position, appending this chunk's keys/values to the cache."""
    seqlen = tokens.shape[1]
    rotation = model.rotation[start:start + seqlen]
    h = model.tok_embeddings(tokens)
    for index, layer in enumerate(model.layers.values()):
        attn = layer.attention
        x = layer.attention_norm(h)
        b = x.shape[0]
        q = apply_rotary(attn.wq(x).view(b, seqlen, attn.n_heads, attn.head_dim), rotation).transpose(1, 2)
        k = apply_rotary(attn.wk(x).view(b, seqlen, attn.n_kv_heads, attn.head_dim), rotation).transpose(1, 2)
        v = attn.wv(x).view(b, seqlen, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        cache.k[index][:, :, start:start + seqlen] = k
        cache.v[index][:, :, start:start + seqlen] = v
        keys = cache.k[index][:, :, :start + seqlen]
        values = cache.v[index][:, :, :start + seqlen]
        repeats = attn.n_heads // attn.n_kv_heads
        if repeats > 1:
            keys, values = keys.repeat_interleave(repeats, dim=1), values.repeat_interleave(repeats, dim=1)
        # A prompt chunk attends causally; a single new token sees everything cached.
        out = F.scaled_dot_product_attention(q, keys, values, is_causal=False,
                                             attn_mask=_chunk_mask(seqlen, start, q.device))
        h = h + attn.wo(out.transpose(1, 2).reshape(b, seqlen, -1))
        h = h + layer.feed_forward(layer.ffn_norm(h))
    return model.output(model.norm(h[:, -1]))


def _chunk_mask(seqlen: int, start: int, device) -> torch.Tensor | None:
    if seqlen == 1:
        return None
    rows = torch.arange(seqlen, device=device)[:, None] + start
    cols = torch.arange(start + seqlen, device=device)[None, :]
    return cols <= rows


@torch.no_grad()
def generate(model: Transformer, tokenizer, prompt: str, *, max_new_tokens: int = 200, temperature: float = 0.8,
             top_k: int | None = 50, seed: int = 0) -> str:
    """The prompt's continuation (without the prompt), stopping at EOS or the context length."""
    device = model.rotation.device
    ids = ([tokenizer.bos_id] if tokenizer.bos_id is not None else []) + tokenizer.encode(prompt)
    if not ids:
        ids = [tokenizer.eos_id]
    limit = model.args.max_seq_len
    ids = ids[-(limit - 1):]
    budget = min(max_new_tokens, limit - len(ids))
    generator = torch.Generator(device=device).manual_seed(seed)
    cache = _KVCache(model, 1, device)
    logits = _forward_cached(model, torch.tensor([ids], device=device), 0, cache)
    position, new = len(ids), []
    for _ in range(budget):
        logits = logits[:, : tokenizer.vocab_size].float()  # never sample the padding rows
        if temperature <= 0:
            next_id = int(logits.argmax(-1))
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            next_id = int(torch.multinomial(F.softmax(logits, -1), 1, generator=generator))
        if next_id == tokenizer.eos_id:
            break
        new.append(next_id)
        logits = _forward_cached(model, torch.tensor([[next_id]], device=device), position, cache)
        position += 1
    return tokenizer.decode(new)

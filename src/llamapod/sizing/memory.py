"""Peak GPU memory of a training job, estimated before anything is submitted (no torch needed).

The estimate follows the tensors the trainer really creates, phase by phase, and takes
the largest phase as the peak:

- **state**: fp32 parameters, two fp32 AdamW states and the fp32 gradients, each sharded
  over the ranks that shard (all of them, or one node's GPUs with hybrid sharding); every
  parameter is padded to a multiple of that count along its first dimension, as FSDP2 does;
- **gathered parameters**: the root (embeddings, final norm, output) stays gathered from
  its first use to the end of backward, the last block from forward to its backward, one
  all-gather buffer is kept until the next all-gather, and backward prefetches one block;
- **activations**: what each block saves for backward (all intermediate tensors without
  checkpointing, the block input with full checkpointing, matmul and attention outputs
  with selective checkpointing), plus one block's recomputation and gradient temporaries
  in backward;
- **loss**: the fused loss computes a chunk of logits at a time and writes the gradient of
  the hidden states and of the output weight (fp32, unsharded) during the forward pass;
- **gradient reduction**: each block's gradients are copied into a reduce-scatter buffer
  of the reduce dtype (fp32), which FSDP2 keeps until the next block's reduction;
- **optimizer step**: AdamW's foreach update (CPU workers, or ``--cpu_offload``) makes one
  temporary the size of the shards; on a GPU the trainer's fused AdamW makes none.

On a GPU, add the allocator's slack and cuBLAS workspaces; the CUDA context and NCCL's
buffers are subtracted from the usable memory instead (``llamapod.instances``). Validated
against torch's FSDP2 memory tracker on the real model under fake tensors
(tests/unit/train/test_train_memory_tracker.py). Not modelled: ``torch.compile`` (it fuses
element-wise ops: an upper bound) and the math attention fallback (a T x T score matrix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from llamapod.shapes import ModelArgs, padded_vocab_size

GIB = 1 << 30
FP32 = 4
INDEX = 8  # token ids are int64

# The fused loss computes this many logits per chunk (llamapod.train.fused keeps the
# same numbers; a test checks they agree).
CPU_CHUNK_LOGITS = 1 << 21
GPU_CHUNK_LOGITS = 1 << 27

# The CUDA caching allocator rounds blocks up and keeps freed blocks for reuse: the
# memory it reserves runs a few percent above the bytes tensors hold at the peak.
ALLOCATOR_SLACK = 0.05
# cuBLAS/cuBLASLt workspaces and the NCCL work tensors torch allocates itself.
WORKSPACE_BYTES = 256 << 20

Checkpointing = Literal["none", "full", "selective"]


@dataclass(frozen=True)
class MemoryJob:
    """What decides the memory of one training rank."""

    model: ModelArgs                 # the vocabulary unpadded, as the tokenizer gives it
    seq_len: int
    batch_size: int = 1              # sequences per GPU per micro-step
    grad_accum: int = 1
    nodes: int = 1
    gpus_per_node: int = 1
    sharding: Literal["full", "hybrid"] = "full"
    bf16: bool = True
    activation_checkpointing: Checkpointing = "full"
    offload_activations: bool = False
    cpu_offload: bool = False
    device: Literal["cuda", "cpu"] = "cuda"   # which code path of the model runs (they differ a little)

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def shard_size(self) -> int:
        """How many ranks share one copy of the state: all of them, or one node with hybrid sharding."""
        return self.gpus_per_node if self.sharding == "hybrid" else self.world_size

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len

    def replace(self, **changes) -> "MemoryJob":
        return replace(self, **changes)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU at the step's peak, by what holds them."""

    sharded_params: int
    optimizer_states: int
    gradients: int
    gathered_params: int
    activations: int
    loss: int
    overhead: int
    phase: str                       # when the peak happens: "in the loss", "in backward", ...

    LABELS = (("sharded_params", "sharded parameters"), ("optimizer_states", "optimizer states"),
              ("gradients", "gradients"), ("gathered_params", "gathered parameters"),
              ("activations", "activations"), ("loss", "loss chunk"), ("overhead", "allocator and workspaces"))

    @property
    def tensors(self) -> int:
        """Bytes held by tensors (what torch's memory tracker counts)."""
        return self.total - self.overhead

    @property
    def total(self) -> int:
        return (self.sharded_params + self.optimizer_states + self.gradients + self.gathered_params
                + self.activations + self.loss + self.overhead)

    @property
    def total_gib(self) -> float:
        return self.total / GIB

    def parts(self) -> list[tuple[str, int]]:
        return [(label, getattr(self, name)) for name, label in self.LABELS]


def estimate_memory(job: MemoryJob) -> MemoryEstimate:
    """The peak over the phases of a training step (see the module docstring)."""
    if job.device == "cpu":
        # Nothing to offload to: CPU memory is where everything already is.
        job = job.replace(cpu_offload=False, offload_activations=False)
    shapes = _Shapes(job)
    phases = [*_loss_phases(job, shapes), _embedding_backward(job, shapes), *_root_reductions(job, shapes),
              _optimizer_step(job, shapes)]
    for index in range(job.model.n_layers):
        phases += _block_backward(job, shapes, index)
    peak = max(phases, key=lambda phase: phase.total)
    return replace(peak, overhead=_overhead(job, peak.total))


# ---- shapes -----------------------------------------------------------------------


class _Shapes:
    """Element counts of the parameters, as built and as FSDP2 shards and gathers them."""

    def __init__(self, job: MemoryJob):
        a = job.model
        self.vocab = padded_vocab_size(a.vocab_size)
        d, hd = a.dim, a.head_dim
        q, kv = a.n_heads * hd, a.n_kv_heads * hd
        # (rows, columns) of every parameter; FSDP2 shards along the rows.
        self.block = [(q, d), (kv, d), (kv, d), (d, q), (a.ffn_dim, d), (d, a.ffn_dim), (a.ffn_dim, d), (d, 1), (d, 1)]
        self.root = [(self.vocab, d), (d, 1), (self.vocab, d)]
        self.shards = job.shard_size

    def numel(self, params: list[tuple[int, int]]) -> int:
        return sum(rows * cols for rows, cols in params)

    def local(self, params: list[tuple[int, int]]) -> int:
        """Elements of one rank's shard: each parameter's rows padded to a multiple of the shard count."""
        return sum(math.ceil(rows / self.shards) * cols for rows, cols in params)

    def padded(self, params: list[tuple[int, int]]) -> int:
        """Elements of the reduce-scatter buffer of a group of parameters."""
        return self.local(params) * self.shards

    def all_gather_buffer(self, params: list[tuple[int, int]]) -> int:
        """Elements of an all-gather output (none with one shard: the parameters are used in place)."""
        return self.padded(params) if self.shards > 1 else 0


def _state(job: MemoryJob, shapes: _Shapes, *, with_grads: bool) -> dict[str, int]:
    """fp32 shards of the parameters, the two AdamW states and (when alive) the gradients."""
    if job.cpu_offload:
        return {"sharded_params": 0, "optimizer_states": 0, "gradients": 0}
    local = FP32 * (job.model.n_layers * shapes.local(shapes.block) + shapes.local(shapes.root))
    return {"sharded_params": local, "optimizer_states": 2 * local, "gradients": local if with_grads else 0}


def _param_bytes(job: MemoryJob) -> int:
    return 2 if job.bf16 else FP32


def _rotary_bytes(job: MemoryJob) -> int:
    """The rotary table (complex64, max_seq_len x head_dim/2), a buffer on every rank."""
    return 2 * FP32 * job.model.max_seq_len * (job.model.head_dim // 2)


# ---- activations --------------------------------------------------------------------


class _Block:
    """Bytes of one transformer block's activations, by sub-module, for ``job``'s code path."""

    def __init__(self, job: MemoryJob):
        a, n, act = job.model, job.tokens, _param_bytes(job)
        d, ff, hd = a.dim, a.ffn_dim, a.head_dim
        # The CUDA path expands key/value heads so every fused attention kernel applies.
        kv = (a.n_heads if job.device == "cuda" else a.n_kv_heads) * hd
        self.hidden = act * n * d                              # one [tokens, dim] tensor
        self.norm = FP32 * n * d + FP32 * n + act * n * d      # fp32 input (or normalised), 1/rms, output
        self.attention = (act * n * (d + 2 * kv)               # q, k, v after rotary
                          + FP32 * n * a.n_heads               # softmax log-sum-exp
                          + act * n * d)                       # output (laid out so wo reads it as is)
        self.feed_forward = 4 * act * n * ff                   # gate, silu(gate), up, their product
        self.ffn_width = act * n * ff
        self.qkv_grads = act * n * (d + 2 * kv)
        # fp32 [tokens, dim] temporaries of RMSNorm's backward: the hand-written CPU one
        # holds three at once (upcast gradient, scaled gradient, a product); F.rms_norm's
        # fused CUDA kernel writes the input gradient in fp32 beside the upcast gradient.
        # An fp32 gradient needs no upcast copy.
        temporaries = 2 if job.device == "cuda" else 3
        self.norm_backward = (temporaries - (0 if job.bf16 else 1)) * FP32 * n * d
        # CUDA flash attention's backward accumulates dq in fp32, with an fp32 row statistic.
        self.attention_workspace = FP32 * n * d + FP32 * n * a.n_heads if job.device == "cuda" else 0
        self.ffn_weight_grads = act * 3 * d * ff
        self.attention_weight_grads = act * (2 * d * a.n_heads * hd + 2 * d * a.n_kv_heads * hd)
        self.down_weight_grad = act * d * ff
        self.output_weight_grad = act * d * a.n_heads * hd

    @property
    def saved(self) -> int:
        """Everything the block saves for backward without checkpointing."""
        return 2 * self.norm + self.attention + self.feed_forward

    def backward_moments(self) -> list[int]:
        """Own activations plus gradient temporaries at the widest moment of each sub-module's backward.

        Backward runs feed-forward, its norm, attention, then the attention norm; what each
        step saved is freed after it, and the weight gradients pile up until the block's
        reduction.
        """
        gradients = 2 * self.hidden   # the gradient along the residual stream, and the branch's
        # The product's saved copy is freed once the down projection's backward has run.
        feed_forward = self.saved - self.ffn_width + self.hidden + 3 * self.ffn_width + self.down_weight_grad
        # A norm's output was saved by the matmuls after it, which have run their backward by then.
        ffn_norm = (2 * self.norm - self.hidden + self.attention + gradients + self.ffn_weight_grads
                    + self.norm_backward)
        attention = (self.norm + self.attention + gradients + self.ffn_weight_grads + self.output_weight_grad
                     + self.qkv_grads + self.attention_workspace)
        attention_norm = (self.norm - self.hidden + gradients + self.ffn_weight_grads + self.attention_weight_grads
                          + self.norm_backward)
        return [feed_forward, ffn_norm, attention, attention_norm]


def _block_saved(job: MemoryJob) -> int:
    """Bytes one block keeps from forward to backward under the job's checkpointing."""
    a, n, act = job.model, job.tokens, _param_bytes(job)
    block_input = act * n * a.dim
    if job.activation_checkpointing == "full":
        return block_input
    if job.activation_checkpointing == "selective":
        d, ff = a.dim, a.ffn_dim
        kv = a.n_kv_heads * a.head_dim
        matmuls = act * n * (d + 2 * kv + d + 2 * ff + d)   # wq, wk, wv, wo, w1, w3, w2 outputs
        flash = act * n * d + FP32 * n * a.n_heads           # attention output and log-sum-exp
        return block_input + matmuls + flash
    return _Block(job).saved


def _saved_on_gpu(job: MemoryJob, blocks: int) -> int:
    """Saved activations of ``blocks`` blocks that stay in GPU memory."""
    if job.offload_activations:
        # Saved tensors go to pinned CPU memory; one block's are in flight back for backward.
        return min(blocks, 1) * _block_saved(job)
    return blocks * _block_saved(job)


def _recomputed_input(job: MemoryJob) -> int:
    """What a block holds besides its recomputed activations while it runs its backward.

    The checkpointed input is a tensor of its own, except on the fp32 CUDA path, where the
    norm's saved fp32 input is that same tensor (``x.float()`` returns ``x``). Selective
    checkpointing stops recomputing once every saved tensor is back, so the cached output
    of the block's last matmul (the down projection) is never claimed and stays as well.
    """
    if job.activation_checkpointing == "none":
        return 0
    block_input = 0 if (not job.bf16 and job.device == "cuda") else _param_bytes(job) * job.tokens * job.model.dim
    unclaimed = _param_bytes(job) * job.tokens * job.model.dim if job.activation_checkpointing == "selective" else 0
    return block_input + unclaimed


# ---- the loss -------------------------------------------------------------------------


def _loss_chunks(job: MemoryJob, padded_vocab: int) -> list[int]:
    """Token counts of the fused loss's chunks (sized by the padded rows; the last may be short).

    Only the first two full chunks are listed: the peak is between two neighbours, and every
    further pair of full chunks is the same (a batch of 2**63 sequences must not list them all).
    """
    budget = GPU_CHUNK_LOGITS if job.device == "cuda" else CPU_CHUNK_LOGITS
    chunk = max(1, budget // padded_vocab)
    full, rest = divmod(job.tokens, chunk)
    return [chunk] * min(full, 2) + ([rest] if rest else [])


def _loss_transient(job: MemoryJob, padded_vocab: int) -> int:
    """The largest moment inside the fused loss's forward.

    Logits cover the real vocabulary only (the padding rows are masked out). A chunk's fp32
    logits and log_softmax's output coexist for a moment (the matmul's own output is freed
    as soon as it is cast); from the second chunk on, the previous chunk's probabilities
    and their cast to the parameter dtype are still referenced then. At the end of a chunk,
    a bf16 output-weight gradient of the chunk is formed before it is added to the fp32 one
    (an fp32 gradient is accumulated in place); on a CPU that mixed-dtype add first copies
    it to fp32 (a kernel-internal buffer: fake tensors, hence the tracker, do not see it).
    """
    act, vocab, dim = _param_bytes(job), job.model.vocab_size, job.model.dim
    probabilities = FP32 + (act if act != FP32 else 0)   # per logit: fp32, and the cast
    chunks = _loss_chunks(job, padded_vocab)
    moments = [2 * FP32 * chunks[0] * vocab]
    moments += [(2 * FP32 * now + probabilities * before) * vocab for before, now in zip(chunks, chunks[1:])]
    weight_grad = 0
    if act != FP32:
        weight_grad = (act + (FP32 if job.device == "cpu" else 0)) * vocab * dim
    moments += [probabilities * chunks[0] * vocab + weight_grad]
    return max(moments)


def _loss_kept(job: MemoryJob, padded_vocab: int) -> int:
    """What the fused loss keeps from forward to backward: d(loss)/d(hidden), and d(loss)/d(output
    weight) in fp32 for every row, padding included."""
    return _param_bytes(job) * job.tokens * job.model.dim + FP32 * padded_vocab * job.model.dim


# ---- phases ------------------------------------------------------------------------


def _phase(name: str, **parts: int) -> MemoryEstimate:
    fields = {key: 0 for key, _ in MemoryEstimate.LABELS}
    fields.update(parts)
    return MemoryEstimate(phase=name, **fields)


def _inputs(job: MemoryJob) -> int:
    return INDEX * job.batch_size * (job.seq_len + 1)


def _around_the_loss(job: MemoryJob, shapes: _Shapes) -> dict[str, int]:
    """What is alive from the end of forward to the last block's backward: the state, the root
    and the last block gathered (plus forward's last all-gather buffer), every block's saved
    activations and the final norm's (its fp32 normalised input and 1/rms)."""
    a, p = job.model, _param_bytes(job)
    gathered = p * (shapes.numel(shapes.root) + shapes.numel(shapes.block) + shapes.all_gather_buffer(shapes.block))
    final_norm = FP32 * job.tokens * a.dim + FP32 * job.tokens
    activations = _saved_on_gpu(job, a.n_layers) + final_norm + _inputs(job) + _rotary_bytes(job)
    return {**_state(job, shapes, with_grads=job.grad_accum > 1), "gathered_params": gathered,
            "activations": activations}


def _loss_phases(job: MemoryJob, shapes: _Shapes) -> list[MemoryEstimate]:
    """The fused loss's forward (its chunks), its backward, and the final norm's backward.

    The loss computes its gradients during forward and keeps them; its backward casts the
    output weight's fp32 gradient to the parameter dtype; the final norm's backward then
    runs beside that gradient with fp32 temporaries of its own.
    """
    p, hidden = _param_bytes(job), _param_bytes(job) * job.tokens * job.model.dim
    around = _around_the_loss(job, shapes)
    kept = _loss_kept(job, shapes.vocab)
    output_grad = p * shapes.vocab * job.model.dim if p != FP32 else 0
    forward = _phase("in the loss", **{**around, "activations": around["activations"] + hidden},
                     loss=kept + _loss_transient(job, shapes.vocab))
    backward = _phase("in the loss", **around, loss=kept + output_grad)
    norm = _phase("in backward", **{**around, "activations": around["activations"] + _Block(job).norm_backward},
                  loss=hidden + (output_grad or FP32 * shapes.vocab * job.model.dim))
    return [forward, backward, norm]


def _block_backward(job: MemoryJob, shapes: _Shapes, index: int) -> list[MemoryEstimate]:
    """Backward through block ``index``: at its widest sub-module, and at its reduction.

    Blocks below it still hold their saved activations; blocks above it have reduced their
    gradients to fp32 shards; the root stays gathered, the output weight's gradient waits
    for the root's reduction, and the previous block's all-gather is in flight (prefetch).
    Within the block, the widest moment is one of its sub-modules' backward (recomputed
    first under checkpointing); then its parameters are resharded and its gradients copied
    into an fp32 reduce-scatter buffer, which FSDP2 keeps until the next block's reduction.
    """
    a, p = job.model, _param_bytes(job)
    block = shapes.numel(shapes.block)
    # With one shard there is nothing to gather: the copy happens when the block starts.
    prefetch = shapes.all_gather_buffer(shapes.block) if index > 0 else 0
    below = 0 if job.offload_activations else index * _block_saved(job)
    around = below + _inputs(job) + _rotary_bytes(job)
    state = _state(job, shapes, with_grads=job.grad_accum > 1)
    if not state["gradients"] and not job.cpu_offload:
        state["gradients"] = FP32 * shapes.local(shapes.block) * (a.n_layers - 1 - index)
    state["gradients"] += p * shapes.vocab * a.dim
    root = p * shapes.numel(shapes.root)
    widest = max(_Block(job).backward_moments()) + _recomputed_input(job)
    kept_buffer = FP32 * shapes.padded(shapes.block) if index < a.n_layers - 1 else 0
    inside = _phase("in backward", **{**state, "gradients": state["gradients"] + kept_buffer},
                    gathered_params=root + p * (block + prefetch), activations=around + widest)
    reduction = _phase("in backward", **{**state, "gradients": state["gradients"] + p * block
                                      + FP32 * shapes.padded(shapes.block)},
                       gathered_params=root + p * prefetch, activations=around + _Block(job).hidden)
    return [inside, reduction]


def _gradients_at_end_of_backward(job: MemoryJob, shapes: _Shapes, *, root_reduced: bool) -> dict[str, int]:
    """The state with every block's gradient shard; the root's shard exists once it is reduced,
    or from an earlier micro-batch when gradients accumulate."""
    state = _state(job, shapes, with_grads=True)
    if not job.cpu_offload and not root_reduced and job.grad_accum == 1:
        state["gradients"] -= FP32 * shapes.local(shapes.root)
    return state


def _embedding_backward(job: MemoryJob, shapes: _Shapes) -> MemoryEstimate:
    """The last op of backward: the embedding's dense gradient joins the output weight's, while
    the root is still gathered and the first block's reduce-scatter buffer is still kept."""
    p, vocab_rows = _param_bytes(job), shapes.vocab * job.model.dim
    state = _gradients_at_end_of_backward(job, shapes, root_reduced=False)
    state["gradients"] += 2 * p * vocab_rows + FP32 * shapes.padded(shapes.block)
    return _phase("at the end of backward", **state, gathered_params=p * shapes.numel(shapes.root),
                  activations=p * job.tokens * job.model.dim + _inputs(job) + _rotary_bytes(job))


def _root_reductions(job: MemoryJob, shapes: _Shapes) -> list[MemoryEstimate]:
    """The root's reduction, the last of backward: its parameters are resharded, its gradients
    copied into an fp32 reduce-scatter buffer, then freed (all but the output weight's, which
    the loss's autograd node still references) as the reduced shard is allocated."""
    p = _param_bytes(job)
    buffer = FP32 * shapes.padded(shapes.root)
    before = _gradients_at_end_of_backward(job, shapes, root_reduced=False)
    before["gradients"] += p * shapes.numel(shapes.root) + buffer
    after = _gradients_at_end_of_backward(job, shapes, root_reduced=True)
    after["gradients"] += buffer + p * shapes.vocab * job.model.dim
    if job.grad_accum > 1 and not job.cpu_offload:
        after["gradients"] += FP32 * shapes.local(shapes.root)  # the new shard, before it is added to the old
    return [_phase("at the end of backward", **parts, activations=_inputs(job) + _rotary_bytes(job))
            for parts in (before, after)]


def _optimizer_step(job: MemoryJob, shapes: _Shapes) -> MemoryEstimate:
    """AdamW's foreach update: one temporary the size of the shards (the square-root term);
    the fused update the trainer runs on GPU-resident parameters makes none."""
    state = _state(job, shapes, with_grads=True)
    if job.device != "cuda":
        state["optimizer_states"] += state["sharded_params"]
    return _phase("in the optimizer step", **state, activations=_rotary_bytes(job))


def _overhead(job: MemoryJob, tensors: int) -> int:
    if job.device != "cuda":
        return 0
    return int(ALLOCATOR_SLACK * tensors) + WORKSPACE_BYTES

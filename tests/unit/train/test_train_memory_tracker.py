"""The analytical estimate against torch's own FSDP2 memory tracker.

``track_peak`` runs the real ``Transformer`` wrapped by the real ``parallelize`` on a fake
process group under fake tensors, one warm-up step and one tracked step, for any world
size in this one process. The estimate must agree with the tracked peak within
``TOLERANCE`` for every configuration below. This machine has no GPU, so both follow the
model's CPU code path (see memory_tracker's docstring); the GPU path's differences
(expanded key/value heads, F.rms_norm, a larger loss chunk) are the estimate's
``device="cuda"`` branches, checked where a GPU is available by benchmarks/memory_estimate.py.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from llamapod.sizing.memory import MemoryJob, estimate_memory  # noqa: E402
from llamapod.train.memory_tracker import track_peak  # noqa: E402
from llamapod.shapes import ModelArgs  # noqa: E402

# The estimate may be off the tracker by this fraction, either way.
TOLERANCE = 0.05

MHA = ModelArgs(dim=256, n_layers=3, n_heads=8, n_kv_heads=8, vocab_size=8192, ffn_dim=704, max_seq_len=256)
GQA = MHA.replace(n_kv_heads=2, vocab_size=12000)
WIDE = MHA.replace(ffn_dim=2048, vocab_size=2000, max_seq_len=512)     # peaks in a block's backward
BIG_VOCAB = MHA.replace(vocab_size=32000, max_seq_len=16)              # peaks in the root's reduction

# name -> (the job's settings, the phase its peak falls in): every phase of the estimate is checked.
CONFIGS = {
    "no checkpointing, bf16, 8 GPUs": (dict(model=MHA, gpus_per_node=8, activation_checkpointing="none"),
                                       "in the loss"),
    "full checkpointing, bf16, 8 GPUs": (dict(model=MHA, gpus_per_node=8), "in the loss"),
    "selective checkpointing, bf16, 8 GPUs": (dict(model=MHA, gpus_per_node=8, activation_checkpointing="selective"),
                                              "in the loss"),
    "no checkpointing, fp32, 1 GPU": (dict(model=MHA, bf16=False, activation_checkpointing="none"), "in the loss"),
    "grouped-query attention, 2 micro-batches, 4 x 8 GPUs": (
        dict(model=GQA, nodes=4, gpus_per_node=8, grad_accum=2, activation_checkpointing="none"), "in the loss"),
    "hybrid sharding, 2 x 4 GPUs": (dict(model=MHA, nodes=2, gpus_per_node=4, sharding="hybrid"), "in the loss"),
    "full checkpointing, wide feed-forward, fp32, 4 x 8 GPUs": (
        dict(model=WIDE, seq_len=512, nodes=4, gpus_per_node=8, bf16=False), "in backward"),
    "selective checkpointing, wide feed-forward, 2 micro-batches, 8 GPUs": (
        dict(model=WIDE, seq_len=512, gpus_per_node=8, grad_accum=2, activation_checkpointing="selective"),
        "in backward"),
    "large vocabulary, few tokens, fp32, 2 GPUs": (dict(model=BIG_VOCAB, seq_len=16, batch_size=1, gpus_per_node=2,
                                                        bf16=False, activation_checkpointing="none"),
                                                   "at the end of backward"),
    "small vocabulary, few tokens, 2 micro-batches, 1 GPU": (
        dict(model=MHA.replace(vocab_size=500, max_seq_len=16), seq_len=16, batch_size=1, grad_accum=2),
        "in the optimizer step"),
}

_tracked: dict[str, int] = {}


def _job(name: str) -> MemoryJob:
    values = {"seq_len": 256, "batch_size": 2, "activation_checkpointing": "full", "device": "cpu",
              **CONFIGS[name][0]}
    return MemoryJob(**values)


def _tracked_peak(name: str) -> int:
    if name not in _tracked:
        _tracked[name] = track_peak(_job(name), device="cpu").total
    return _tracked[name]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_estimate_agrees_with_the_fsdp2_memory_tracker(name):
    tracked = _tracked_peak(name)
    estimate = estimate_memory(_job(name))
    assert estimate.tensors == pytest.approx(tracked, rel=TOLERANCE), (
        f"{name}: estimate {estimate.tensors / 2**20:.2f} MiB, tracker {tracked / 2**20:.2f} MiB")
    assert estimate.phase == CONFIGS[name][1]


def test_tracker_sees_checkpointing_save_memory():
    none, selective, full = (_tracked_peak(f"{mode} checkpointing, bf16, 8 GPUs")
                             for mode in ("no", "selective", "full"))
    assert none > selective > full


def test_tracker_counts_the_shards_of_the_real_model():
    peak = track_peak(_job("no checkpointing, fp32, 1 GPU").replace(gpus_per_node=8), device="cpu")
    whole = sum(p.numel() for p in _meta_model(MHA).parameters())
    # fp32 shards of every parameter on one rank of eight (padded rows make it a little more).
    assert whole * 4 / 8 <= peak.by_kind["Sharded Param"] < whole * 4 / 8 * 1.01
    # Two AdamW states per shard, plus a scalar step count per parameter.
    assert peak.by_kind["OptState"] == pytest.approx(2 * peak.by_kind["Sharded Param"], abs=4 * 64)


def _meta_model(args: ModelArgs):
    from llamapod.train.model import Transformer

    with torch.device("meta"):
        return Transformer(args)


def test_estimate_uses_the_fused_loss_chunk_sizes():
    from llamapod.sizing import memory
    from llamapod.train import fused

    assert (memory.CPU_CHUNK_LOGITS, memory.GPU_CHUNK_LOGITS) == (fused.CPU_CHUNK_LOGITS, fused.GPU_CHUNK_LOGITS)


def test_tracker_refuses_to_run_beside_another_process_group(tmp_path):
    import torch.distributed as dist

    from llamapod.errors import TrainingError

    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path / 'rendezvous'}")
    try:
        with pytest.raises(TrainingError, match="already initialised"):
            track_peak(_job("hybrid sharding, 2 x 4 GPUs"), device="cpu")
    finally:
        dist.destroy_process_group()

"""The peak memory of one training step as torch's FSDP2 memory tracker counts it, without a GPU.

The real model (``Transformer``) is wrapped by the real ``parallelize`` on a fake process
group (``FakeStore`` + backend "fake": every collective returns at once, any world size
fits in one process) and run under ``FakeTensorMode`` (tensors have shapes, dtypes and
devices but no storage), inside ``FSDPMemTracker``, which adds up the bytes every live
tensor would hold. torchtitan's ``scripts/estimate/estimation.py`` estimates memory the
same way. This is what ``llamapod.sizing.memory``'s analytical estimate is validated against.

What works where (torch 2.13):
- With CUDA, the tracker runs on fake ``cuda`` tensors, so the GPU code paths of the model
  (``F.rms_norm``, expanded key/value heads, the GPU loss chunk) are the ones counted.
- On a CPU-only build it runs on fake ``cpu`` tensors and counts the CPU code paths. Fake
  ``cuda`` tensors can be created there, but Python indexing of one (``t[:, :-1]``) fails
  with "PyTorch is not linked with support for cuda devices" (the indexing code takes a
  CUDA device guard), and FSDP2 itself asks ``torch.cuda`` for the current device and
  for streams; so a CPU-only build cannot trace the GPU path.

One warm-up step runs before the tracked one: the optimizer creates its state in the
first step, and DTensor computes (and caches) the output shapes of each operator the first
time it sees it, on full-size fake tensors that the tracker would otherwise count as memory.
The tracked step is therefore a steady-state step, whose peak is the job's.

Not counted: CUDA context, NCCL buffers and the caching allocator's slack (the estimate
adds those), and anything ``torch.compile`` would change.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from llamapod.errors import TrainingError
from llamapod.sizing.memory import MemoryJob

# The gradient-norm limit used in the tracked step; any positive value clips the same way.
_CLIP = 1.0


@dataclass(frozen=True)
class TrackedPeak:
    total: int                 # bytes live on the compute device at the step's peak
    by_kind: dict[str, int]    # the tracker's categories at that moment (params, activations, ...)
    device: str


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def track_peak(job: MemoryJob, device: str | None = None) -> TrackedPeak:
    """Run a warm-up step and a tracked step of ``job`` under fake tensors; the tracked step's peak.

    ``device`` defaults to the job's code path when this machine can run it (see the module
    docstring). Runs in this process with a process group of its own, so none may exist yet.
    """
    device = device or job.device
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("the FSDP2 memory tracker needs CUDA to trace the GPU code path",
                            "track the CPU code path instead (device 'cpu'), or run on a machine with a GPU")
    if dist.is_initialized():
        raise TrainingError("a process group is already initialised in this process",
                            "track memory in a process of its own (the tracker needs a fake process group)")
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", rank=0, world_size=job.world_size, store=FakeStore())
    try:
        return _tracked_step(job, torch.device(device))
    finally:
        dist.destroy_process_group()


def _tracked_step(job: MemoryJob, device: torch.device) -> TrackedPeak:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

    from llamapod.train.optim import build_optimizer

    mesh = _mesh(job, device)
    with FakeTensorMode():
        model = sharded_model(job, mesh, device)
        optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), device_type=device.type)
        tokens = torch.randint(0, job.model.vocab_size, (job.batch_size, job.seq_len + 1), device=device)
        train_step(model, optimizer, tokens, job)
        tracker = FSDPMemTracker(model, optimizer)
        tracker.track_inputs((tokens,))
        with tracker:
            train_step(model, optimizer, tokens, job, tracker)
        snapshot = tracker.get_tracker_snapshot("peak")
    on_device = next((kinds for dev, kinds in snapshot.items() if dev.type == device.type), {})
    by_kind = {_kind_name(kind): int(size) for kind, size in on_device.items() if kind != "Total" and size}
    return TrackedPeak(int(on_device.get("Total", 0)), by_kind, device.type)


def _mesh(job: MemoryJob, device: torch.device):
    from llamapod.train.parallel import DistEnv, build_mesh

    env = DistEnv(rank=0, world_size=job.world_size, local_rank=0, local_world_size=job.gpus_per_node,
                  nodes=job.nodes, device=device)
    return build_mesh(env, job.sharding)


def sharded_model(job: MemoryJob, mesh, device: torch.device) -> torch.nn.Module:
    """The real model, sharded by the real ``parallelize`` as the trainer does; storage allocated, values not set."""
    from llamapod.train.model import Transformer
    from llamapod.train.parallel import parallelize

    with torch.device("meta"):
        model = Transformer(job.model)
    parallelize(model, mesh, param_dtype=torch.bfloat16 if job.bf16 else torch.float32,
                activation_checkpointing=job.activation_checkpointing, compile_blocks=False,
                cpu_offload=job.cpu_offload)
    # As the trainer does: offloaded shards live in CPU memory. Values do not matter for
    # memory: allocating every shard and buffer is enough.
    model.to_empty(device="cpu" if job.cpu_offload else device)
    return model


def train_step(model, optimizer, tokens: torch.Tensor, job: MemoryJob, tracker=None) -> None:
    """The trainer's optimizer step: micro-batches that reduce-scatter their gradients, clip, AdamW.

    With hybrid sharding only the last micro-batch all-reduces across replicas; the others
    keep their (sharded) gradients local, so memory is the same either way.
    """
    for micro in range(job.grad_accum):
        last = micro == job.grad_accum - 1
        if tracker is not None and micro:
            # The tracker refuses a second forward of the root unless its per-module
            # statistics are cleared; the peak it has seen so far is kept.
            tracker.reset_mod_stats()
        if job.sharding == "hybrid":
            model.set_requires_all_reduce(last)
        with _saved_activations(job):
            loss = model(tokens[:, :-1], targets=tokens[:, 1:]) / job.grad_accum
        loss.backward()
    # The trainer's clip_gradients also gathers the norm across ranks (a DTensor's full_tensor).
    grads = [p for p in model.parameters() if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(grads, _CLIP, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _saved_activations(job: MemoryJob):
    """Where the trainer keeps tensors saved for backward: CPU memory with --offload_activations."""
    if not job.offload_activations:
        return contextlib.nullcontext()
    from llamapod.train.parallel import offload_activations

    return offload_activations(torch.device(job.device))


def _kind_name(kind) -> str:
    return getattr(kind, "value", str(kind))

"""Process groups, device meshes and FSDP2 wrapping (kept apart from the model, torchtitan style).

One code path for every place the trainer runs: a plain ``python`` process (world of one),
``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK... in the environment) and ``srun`` without
torchrun (the same values derived from SLURM_*).
"""

from __future__ import annotations

import os
import sys
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from llamapod.errors import TrainingError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    nodes: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _slurm_first_host() -> str:
    """The first node of the job: the rendezvous host when srun starts workers directly."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or "127.0.0.1"
    import subprocess  # nosec B404: subprocess runs fixed programs with argument lists, never a shell

    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,  # nosec B603, B607: Slurm's scontrol with a fixed argument list, no shell; scontrol is found on PATH, where Slurm installs it
                             timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return nodelist.split(",")[0]


def fill_launch_env() -> None:
    """Make torch.distributed's env:// rendezvous work without torchrun.

    Under ``srun python -m llamapod worker`` each task has SLURM_PROCID etc. but none of
    torchrun's variables; under plain ``python`` there is a world of one.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    if "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
        os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
        tasks_per_node = os.environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
        nnodes = int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or 1)
        local_world = int(tasks_per_node) if tasks_per_node.isdigit() else int(os.environ["SLURM_NTASKS"]) // nnodes
        os.environ["LOCAL_WORLD_SIZE"] = str(local_world)
        os.environ["GROUP_WORLD_SIZE"] = str(nnodes)
        os.environ.setdefault("MASTER_ADDR", _slurm_first_host())
        # Every task must agree on the port without talking: derive it from the job id.
        job = int(os.environ.get("SLURM_JOB_ID", "0") or 0)
        os.environ.setdefault("MASTER_PORT", str(20000 + job % 20000))
        return
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                       "GROUP_WORLD_SIZE": "1"})
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def read_env(device_choice: str = "auto") -> DistEnv:
    """The world layout from the environment (call fill_launch_env first)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = _env_int("LOCAL_RANK") or 0
    local_world = _env_int("LOCAL_WORLD_SIZE") or world
    nodes = _env_int("GROUP_WORLD_SIZE") or max(1, world // max(1, local_world))
    use_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda was given but no CUDA GPU is visible",
                                "drop --device (auto picks the CPU) or check nvidia-smi / CUDA_VISIBLE_DEVICES")
        device = torch.device("cuda", cuda_device_index(local_rank, local_world, torch.cuda.device_count()))
    else:
        device = torch.device("cpu")
    return DistEnv(rank, world, local_rank, local_world, nodes, device)


def cuda_device_index(local_rank: int, local_world: int, visible: int) -> int:
    """The GPU of this worker among the ``visible`` ones (CUDA_VISIBLE_DEVICES applied).

    torchrun, or srun giving each task every GPU of its node: GPU ``local_rank``. srun
    binding one GPU to each task (``--gpus-per-task=1``): each task sees one GPU, index 0.
    Anything in between would put two workers on one GPU, which NCCL refuses at its first
    collective with "Duplicate GPU detected": said here, in words, instead.
    """
    if visible < 1:
        raise TrainingError("no CUDA GPU is visible to this worker",
                            "check nvidia-smi and CUDA_VISIBLE_DEVICES, or train with --device cpu")
    if 1 < visible < local_world:
        raise TrainingError(
            f"{local_world} workers on this node but only {visible} GPUs visible to each: two workers "
            f"would share a GPU",
            "start one worker per GPU (--nproc / --ntasks-per-node equal to the GPUs per node)")
    return local_rank % visible


def mesh_shape(strategy: str, world_size: int, nodes: int, gpus_per_node: int) -> tuple[int, ...]:
    """(shard,) for full sharding; (replicate, shard) = (nodes, gpus_per_node) for hybrid."""
    if strategy == "full":
        return (world_size,)
    if nodes * gpus_per_node != world_size:
        raise TrainingError(
            f"hybrid sharding needs nodes * gpus_per_node == world_size, but "
            f"nodes({nodes}) * gpus_per_node({gpus_per_node}) != world_size({world_size})",
            "start the same number of workers on every node, or use --sharding_strategy full")
    return (nodes, gpus_per_node)


def init_distributed(env: DistEnv) -> None:
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
        # gloo alongside nccl: CPU tensors (checkpoint metadata, async saves) need it too.
        backend = "cuda:nccl,cpu:gloo"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30),
                            device_id=env.device if env.device.type == "cuda" else None)


def build_mesh(env: DistEnv, strategy: str):
    from torch.distributed.device_mesh import init_device_mesh

    shape = mesh_shape(strategy, env.world_size, env.nodes, env.local_world_size)
    names = ("dp_shard",) if len(shape) == 1 else ("dp_replicate", "dp_shard")
    return init_device_mesh(env.device.type, shape, mesh_dim_names=names)


def configure_cpu_threads(env: DistEnv) -> None:
    """Split the cores between the workers on this machine instead of oversubscribing them.

    GPU workers too: their CPU work (the weights' initial values, drawn on the CPU; the
    optimizer step with ``--cpu_offload``) would otherwise run on the one thread the
    launchers leave them (torchrun and ``llamapod train`` set OMP_NUM_THREADS=1).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // max(1, env.local_world_size)))


def parallelize(model: nn.Module, mesh, *, param_dtype: torch.dtype, activation_checkpointing: str,
                compile_blocks: bool, cpu_offload: bool) -> nn.Module:
    """Checkpoint, compile, then shard each transformer block; then shard the root.

    The order matters (torchtitan's): checkpointing wraps the plain block, compilation sees
    the checkpointed forward, and FSDP2 shards what will actually run.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    apply_activation_checkpointing(model, activation_checkpointing)
    # Gradients are reduced in fp32 even when parameters are gathered in bf16: a bf16 sum
    # over many ranks loses the small updates that matter late in training.
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    options = {"mesh": mesh, "mp_policy": mp}
    if cpu_offload:
        options["offload_policy"] = cpu_offload_policy(mesh.device_type)
    blocks = list(model.layers.values())
    for index, block in enumerate(blocks):
        if compile_blocks:
            block.compile()
        # The last block's parameters are needed again first in backward: keep them gathered.
        fully_shard(block, reshard_after_forward=index < len(blocks) - 1, **options)
    fully_shard(model, reshard_after_forward=False, **options)
    return model


def cpu_offload_policy(device_type: str):
    """FSDP2's CPU offload: pinned host memory when computing on a GPU (its copies overlap).

    Decided by the training device, not by whether a GPU exists: a CPU run on a GPU host
    must not pin memory (each worker would open a CUDA context on GPU 0 for it).
    """
    from torch.distributed.fsdp import CPUOffloadPolicy

    return CPUOffloadPolicy(pin_memory=device_type == "cuda")


ACTIVATION_CHECKPOINTING_MODES = ("none", "full", "selective")


def apply_activation_checkpointing(model: nn.Module, mode: str) -> nn.Module:
    """Wrap every transformer block of ``model.layers`` in torch's checkpoint wrapper.

    ``full`` keeps only each block's input and recomputes the block in backward;
    ``selective`` also keeps matmul and attention outputs and recomputes only the cheap
    element-wise ops. The wrapper's state-dict hooks drop its name prefix, so checkpoints
    read the same with any mode.
    """
    if mode not in ACTIVATION_CHECKPOINTING_MODES:
        raise TrainingError(f"unknown activation checkpointing mode {mode!r}",
                            f"use one of: {', '.join(ACTIVATION_CHECKPOINTING_MODES)}")
    if mode == "none":
        return model
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    options = {"checkpoint_impl": CheckpointImpl.NO_REENTRANT, "preserve_rng_state": False}
    if mode == "selective":
        options["context_fn"] = _selective_checkpoint_context
    for name, block in list(model.layers.items()):
        model.layers[name] = checkpoint_wrapper(block, **options)
    return model


# Ops whose outputs selective checkpointing keeps: the expensive ones to recompute.
_KEEP_IN_SELECTIVE = ("mm", "addmm", "bmm", "_scaled_dot_product_flash_attention",
                      "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
                      "_scaled_dot_product_flash_attention_for_cpu")


def _selective_checkpoint_context():
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    keep = {getattr(torch.ops.aten, name).default for name in _KEEP_IN_SELECTIVE if hasattr(torch.ops.aten, name)}

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in keep else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def offload_activations(device: torch.device):
    """Context in which tensors saved for backward live in CPU memory (pinned on a GPU host).

    With activation checkpointing that is each block's input; without it, every saved
    activation. The reference's ``--offload_activations``: trades PCIe copies for GPU memory.
    """
    return torch.autograd.graph.save_on_cpu(pin_memory=device.type == "cuda")


def exit_without_teardown(code: int) -> None:
    """End a worker process now, after flushing output, skipping the interpreter's teardown.

    After ``destroy_process_group`` a C++ static destructor can still find a gloo thread
    joinable and abort a run that had finished ("terminate called without an active
    exception", about 1 exit in 20 on a 2-core machine); torchrun then reports the worker
    as failed. Nothing of ours needs the teardown: metrics, checkpoints and logs are
    closed by then.
    """
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)

"""``llamapod train`` on this machine: one process, or torchrun-style standalone workers.

Workers are started by torch's own elastic agent (what ``torchrun --standalone`` uses),
not a home-made launcher: the same rendezvous, environment variables and failure handling
as on a Slurm cluster, so what works here works there.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid

from llamapod.cli import ui
from llamapod.config.train import TrainSpec, resolve_model_args
from llamapod.errors import TrainingError


def default_nproc() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 2


def worker_command(spec: TrainSpec) -> list[str]:
    return [sys.executable, "-m", "llamapod.train", *spec.to_cli_args()]


def prepare(spec: TrainSpec) -> TrainSpec:
    """Everything that can fail or take long once, before any worker starts.

    The tokenizer and the token shards are built here in one process (workers then find
    them cached), the model shape is checked against the vocabulary, and the run folder
    gets its name, so every worker agrees on it.
    """
    from llamapod.data import load_tokenizer
    from llamapod.train.loop import build_datasets, default_run_dir, with_reachable_defaults

    spec, notices = with_reachable_defaults(spec)
    for notice in notices:
        ui.warn(notice)
    with ui.status("preparing tokenizer and data (cached after the first run)"):
        tokenizer = load_tokenizer(spec.tokenizer)
        args = resolve_model_args(spec, tokenizer.vocab_size)
        build_datasets(spec, tokenizer, seq_len=args.max_seq_len, rank=0, world_size=1)
    if spec.run_dir is None:
        spec = spec.model_copy(update={"run_dir": default_run_dir()})
    return spec


def train_locally(spec: TrainSpec, nproc: int | None = None) -> int:
    """Train on this machine with ``nproc`` workers (default: every GPU, or 2 on a CPU)."""
    nproc = nproc or default_nproc()
    spec = prepare(spec)
    if nproc == 1:
        from llamapod.train.loop import train_worker

        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_WORLD_SIZE"):
            os.environ.pop(name, None)
        train_worker(spec)
        return 0
    return _launch_workers(spec, nproc)


def _launch_workers(spec: TrainSpec, nproc: int) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The agent logs every worker failure with a traceback; the worker itself has already
    # printed the one-line reason, so the agent's chatter is noise for a user.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2,
        start_method="spawn",
    )
    command = worker_command(spec)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # workers set their own share of the cores
    try:
        elastic_launch(config, command[0])(*command[1:])
    except ChildFailedError as exc:
        codes = {rank: failure.exitcode for rank, failure in exc.failures.items()}
        code = codes.get(0, next(iter(codes.values()), 1))
        if code in (-9, -15, 137, 143):
            raise TrainingError(f"a training worker was killed (exit code {code})",
                                "out of memory? try a smaller --train_batch_size or --activation_checkpointing full")
        return code if code > 0 else 1
    except KeyboardInterrupt:
        ui.error("interrupted", "resume with --resume_from_checkpoint <the run's checkpoints folder>")
        return 130
    return 0

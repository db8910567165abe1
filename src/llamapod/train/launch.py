"""``llamapod train`` on this machine: one process, or torchrun-style standalone workers.

Workers are started by torch's own elastic agent (what ``torchrun --standalone`` uses),
not a home-made launcher: the same rendezvous, environment variables and failure handling
as on a Slurm cluster, so what works here works there.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from llamapod import report
from llamapod.config.train import TrainSpec, resolve_model_args
from llamapod.errors import ConfigError, Interrupted


def default_nproc(device_choice: str = "auto") -> int:
    """One worker per GPU when training on GPUs; two CPU workers otherwise (``--device cpu``
    on a GPU machine included: one CPU worker per GPU there would say nothing of the CPU)."""
    import torch

    if device_choice != "cpu" and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 2


def worker_command(spec: TrainSpec) -> list[str]:
    return [sys.executable, "-m", "llamapod", "worker", *spec.to_cli_args()]


def prepare(spec: TrainSpec, workers: int = 1) -> TrainSpec:
    """Everything that can fail or take long once, before any worker starts.

    The tokenizer and the token shards are built here in one process (workers then find
    them cached), the model shape is checked against the vocabulary, and the run folder
    gets its name, so every worker agrees on it.
    """
    from llamapod.data import load_tokenizer
    from llamapod.train.loop import build_datasets, default_run_dir, with_reachable_defaults

    spec, notices = with_reachable_defaults(spec)
    for notice in notices:
        report.warn(notice)
    with report.waiting("preparing tokenizer and data (cached after the first run)"):
        tokenizer = load_tokenizer(spec.tokenizer)
        args = resolve_model_args(spec, tokenizer.vocab_size)
        _require_host_memory(spec, args, workers)
        train, val = build_datasets(spec, tokenizer, seq_len=args.max_seq_len, rank=0, world_size=1)
    _require_batches_fit(spec, workers, train, val)
    if spec.run_dir is None:
        spec = spec.model_copy(update={"run_dir": default_run_dir()})
    return spec


def _require_host_memory(spec: TrainSpec, args, workers: int) -> None:
    """On a CPU, refuse a job whose estimated peak is more than this machine's memory.

    It would only be killed by the kernel (or swap for hours) after its data was prepared.
    """
    import torch

    from llamapod.errors import TrainingError
    from llamapod.sizing.memory import GIB, MemoryJob, estimate_memory

    if spec.device == "cuda" or (spec.device == "auto" and torch.cuda.is_available()):
        return  # the GPU path reports an out-of-memory itself, with what to change
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    job = MemoryJob(model=args, seq_len=args.max_seq_len, batch_size=spec.train_batch_size, nodes=1,
                    gpus_per_node=workers, bf16=bool(spec.bf16), activation_checkpointing=spec.activation_checkpointing,
                    device="cpu")
    need = estimate_memory(job).total * workers
    if need > total:
        raise TrainingError(
            f"the job needs an estimated {need / GIB:,.1f} GiB of memory on {workers} CPU worker(s), more than this "
            f"machine's {total / GIB:,.1f} GiB: it would run out of memory",
            "pick a smaller --preset (or --hidden_width, --num_layers, --train_batch_size, --max_context_width), "
            "or train on GPUs with --slurm or --cluster")


def _require_batches_fit(spec: TrainSpec, workers: int, train, val) -> None:
    """One optimizer step (or one validation batch) must not need more sequences than its split holds.

    The data order wraps around, so a larger batch would silently train on repeats of the
    same sequences within one step (and a huge one allocates it all first).
    """
    step = spec.train_batch_size * spec.grad_accum * workers
    if step > train.num_sequences:
        raise ConfigError(
            f"one optimizer step needs {step:,} sequences (--train_batch_size {spec.train_batch_size} x --grad_accum "
            f"{spec.grad_accum} x {workers} worker(s)), more than the {train.num_sequences:,} of the training data",
            "lower --train_batch_size or --grad_accum, or use more data")
    if val is not None and spec.val_batch_size * workers > val.num_sequences:
        raise ConfigError(
            f"one validation batch needs {spec.val_batch_size * workers:,} sequences (--val_batch_size "
            f"{spec.val_batch_size} x {workers} worker(s)), more than the {val.num_sequences:,} held out for validation",
            "lower --val_batch_size, or pass --validation_batches 0")


def train_locally(spec: TrainSpec, nproc: int | None = None) -> tuple[int, dict | None]:
    """Train on this machine with ``nproc`` workers (default: every GPU, or 2 on a CPU).

    Returns (exit code, the run's result when it trained in this process; None when worker
    processes trained and their rank 0 told the user). Ctrl-C and SIGTERM end it with an
    Interrupted error that says how to resume.
    """
    with _stop_signals_raised():
        try:
            _check_folders_free(spec)
            workers = nproc or default_nproc(spec.device)
            _require_workers(spec, nproc)
            spec = prepare(spec, workers)
            if workers == 1:
                return 0, _train_in_this_process(spec, nproc)
            return _launch_workers(spec, workers, nproc), None
        except (KeyboardInterrupt, _Stopped) as exc:
            signum = exc.signum if isinstance(exc, _Stopped) else signal.SIGINT
            raise _interrupted(spec, signum, nproc) from None


def _require_workers(spec: TrainSpec, nproc: int | None) -> None:
    """An explicit --nproc this machine can run: one worker per GPU, or at most one per core.

    Every local worker sees every GPU, so two on one GPU would fail NCCL's first collective
    ("Duplicate GPU detected"); thousands of CPU processes that each import torch would take
    the machine down long before training.
    """
    import torch

    if nproc is None:
        return
    if spec.device != "cpu" and torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise ConfigError(f"--nproc {nproc} is more workers than this machine's {gpus} GPU(s)",
                              f"pass --nproc {gpus} or less (one worker per GPU), or --device cpu")
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if nproc > max(cores, 2):
        raise ConfigError(f"--nproc {nproc} is more CPU workers than this machine's {cores} core(s)",
                          f"pass --nproc {max(cores, 2)} or less")


def _check_folders_free(spec: TrainSpec) -> None:
    """Fail before the data is prepared and workers start when another run holds the folders.

    Only a probe: rank 0 of the workers takes the lock for the run's whole length.
    """
    from llamapod.train.runfolder import lock_run

    for flag, value in (("--run_dir", spec.run_dir), ("--checkpoint_dir", spec.checkpoint_dir),
                        ("--resume_from_checkpoint", spec.resume_from_checkpoint),
                        ("--tensorboard_dir", spec.tensorboard_dir)):
        _require_reachable(flag, value)
    board = Path(spec.tensorboard_dir) if spec.tensorboard_dir else None
    if board is not None and board.exists() and not board.is_dir():
        raise ConfigError(f"--tensorboard_dir {board} is a file, not a folder",
                          "pass a folder (new or one TensorBoard already writes to)")
    if spec.run_dir is None:
        return  # a new, time-stamped folder
    for lock in lock_run(Path(spec.run_dir), Path(spec.effective_checkpoint_dir(spec.run_dir))):
        lock.release()


def _require_reachable(flag: str, value: str | None) -> None:
    """A folder flag whose path runs into a broken or looping symbolic link: said now, in words,
    not as an OS error from the first worker that creates or resolves it."""
    if not value:
        return
    try:
        os.stat(value)
    except FileNotFoundError:
        if os.path.islink(value):
            raise ConfigError(f"{flag} {value} is a broken symbolic link (its target does not exist)",
                              "point the link at a folder, or remove the link") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"{flag} {value} runs into a symbolic link loop",
                              "fix or remove the looping link (ls -l shows where each points)") from None


def _train_in_this_process(spec: TrainSpec, nproc: int | None) -> dict:
    from llamapod.train.loop import train_worker

    # A world of one on a fresh port: a rendezvous port left in the environment by an
    # earlier run in this process may still be bound by that run's store until it is freed.
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT"):
        os.environ.pop(name, None)
    with _worker_environment(nproc):
        return train_worker(spec)


class _Stopped(BaseException):
    """SIGTERM arrived (a scheduler or `kill`): unwinds like KeyboardInterrupt does for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame) -> None:
    raise _Stopped(signum)


@contextmanager
def _stop_signals_raised() -> Iterator[None]:
    # Python's default for SIGTERM is to die at once, without a word or cleanup.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _worker_environment(nproc: int | None, *, spawned: bool = False) -> Iterator[None]:
    """Variables the workers read: they are started by us (we report their failures), with ``nproc``."""
    from llamapod.train.failures import LAUNCHER_PID_ENV, LOCAL_LAUNCH_ENV
    from llamapod.train.resume import NPROC_ENV

    values = {LOCAL_LAUNCH_ENV: "1", LAUNCHER_PID_ENV: str(os.getpid()), NPROC_ENV: str(nproc) if nproc else None}
    if spawned:
        values["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")  # workers set their own share
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _quiet_elastic_agent() -> None:
    # The agent logs every worker failure with a traceback, and a warning on Ctrl-C; the
    # launcher reports both in one line. Its module loggers set their own levels.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)


def _launch_workers(spec: TrainSpec, nproc: int, explicit_nproc: int | None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from llamapod.train import failures

    _quiet_elastic_agent()
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2,
        start_method="spawn",
    )
    command = worker_command(spec)
    oom = failures.OomWatch()
    try:
        with _worker_environment(explicit_nproc, spawned=True):
            elastic_launch(config, command[0])(*command[1:])
    except SignalException as exc:
        raise _interrupted(spec, int(exc.sigval), explicit_nproc) from None
    except ChildFailedError as exc:
        return _worker_failure(spec, failures.failures_from(exc.failures), oom, explicit_nproc)
    return 0


def _worker_failure(spec: TrainSpec, found: list, oom, explicit_nproc: int | None) -> int:
    """Raise why the workers stopped, or return rank 0's exit code when it said why itself."""
    from llamapod.train import failures

    stopped_by = failures.stop_signal(found)
    if stopped_by is not None:
        raise _interrupted(spec, stopped_by, explicit_nproc)
    first = failures.first_failure(found)
    if first.record is not None and first.record.printed:
        # The worker said why itself (rank 0 does, under every launcher): only its exit code is left.
        return first.record.exit_code
    killed_by_oom = first.signal == signal.SIGKILL and oom.killed(first.pid)
    raise failures.describe(first, oom_killed=killed_by_oom, resume=_resume(spec, explicit_nproc))


def _resume(spec: TrainSpec, nproc: int | None) -> str:
    from llamapod.train.resume import resume_command

    return resume_command(spec, nproc=nproc)


def _interrupted(spec: TrainSpec, signum: int, nproc: int | None) -> Interrupted:
    from llamapod.train.failures import interrupted

    if spec.run_dir is None:
        how = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        return Interrupted(f"training stopped by {how} before it started",
                           "run the same command again", signum)
    return interrupted(signum, newest_checkpoint=_newest_checkpoint(spec), resume=_resume(spec, nproc))


def _newest_checkpoint(spec: TrainSpec) -> str | None:
    from llamapod.errors import CheckpointError
    from llamapod.train.checkpoint import find_latest

    try:
        latest = find_latest(spec.effective_checkpoint_dir(spec.run_dir), warn=False)
    except (CheckpointError, OSError):
        return None
    return str(latest) if latest else None

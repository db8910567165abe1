"""``python -m llamapod worker [--config FILE] [flags]``: one training worker.

Runs unchanged under ``torchrun`` (reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...),
under ``srun`` without torchrun (derives them from SLURM_*), and as a plain process
(a world of one). Errors are one line from rank 0 and an exit code, never a traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path


def _split_config(argv: list[str]) -> tuple[Path | None, list[str]]:
    rest, config = [], None
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--config" and i + 1 < len(argv):  # nosec B105: a command-line option, not a password
            config, i = Path(argv[i + 1]), i + 2
            continue
        if token.startswith("--config="):
            config = Path(token.split("=", 1)[1])
        else:
            rest.append(token)
        i += 1
    return config, rest


def main(argv: list[str] | None = None) -> int:
    from llamapod.cli import ui
    from llamapod.errors import LlamapodError
    from llamapod.train.failures import launched_locally, record_failure

    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))
    is_main = rank == "0"
    ui.install_reporter()
    if launched_locally():
        _exit_with_the_launcher()
    spec = None
    try:
        from llamapod.config.train_flags import read_train_args
        from llamapod.train.loop import train_worker

        config, flags = _split_config(sys.argv[1:] if argv is None else argv)
        parsed = read_train_args(flags, config_path=config)
        if is_main:
            for notice in parsed.notices:
                ui.warn(notice)
        result = train_worker(parsed.spec)
        if is_main:
            from llamapod.cli.run_summary import print_run_result

            print_run_result(result)
        return 0
    except LlamapodError as exc:
        record_failure(exc.message, exc.hint, exc.exit_code, printed=is_main)
        if is_main:
            ui.error(exc.message, exc.hint)
        return exc.exit_code
    except KeyboardInterrupt:
        if is_main and not launched_locally():
            folder = spec.effective_checkpoint_dir(spec.run_dir) if spec is not None and spec.run_dir else None
            ui.error("interrupted", f"resume with --resume_from_checkpoint {folder or '<checkpoint folder>'}")
        return 130
    except BaseException as exc:  # DCP raises some failures as BaseException
        if isinstance(exc, (SystemExit, GeneratorExit)) or ui.debug_enabled():
            raise
        message, hint, code = _unexpected(exc, rank)
        # Under `llamapod train` the launcher names the first failure; a rank that only lost
        # its peers must not be the one reported.
        speaks = not launched_locally()
        record_failure(message, hint, code, printed=speaks)
        if speaks:
            ui.error(message, hint)
        return code


def _exit_with_the_launcher() -> None:
    """Die when the `llamapod train` that started this worker dies, however it dies.

    torch's agent starts each worker in a session of its own, so a SIGKILL of the launcher
    (or of its process group) would leave the workers training on, unseen, holding the run
    folder. Linux's parent-death signal ends them with it.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    from llamapod.train.failures import LAUNCHER_PID_ENV

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    launcher = os.environ.get(LAUNCHER_PID_ENV, "")
    if launcher.isdigit() and os.getppid() != int(launcher):  # it died before the request was in place
        os._exit(1)


def _unexpected(exc: BaseException, rank: str) -> tuple[str, str, int]:
    """(message, hint, exit code) for an exception no llamapod code turned into an error."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    torch = sys.modules.get("torch")
    cuda_oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if cuda_oom is not None and isinstance(exc, cuda_oom):
        return (f"rank {rank} ran out of GPU memory: {first}",
                "try a smaller --train_batch_size, --activation_checkpointing full, or more GPUs (FSDP shards the "
                "state over them)", 1)
    if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
        # The run folder filled up or became unwritable mid-run: this machine's state, not a bug.
        where = f": {exc.filename}" if exc.filename else ""
        return (f"rank {rank}: {exc.strerror}{where}",
                "free space or fix the permissions there (or choose another --run_dir), then resume the run", 1)
    if _lost_a_peer(exc, torch):
        return (f"rank {rank} lost its connection to another rank ({first[:160]})",
                "another rank failed or was stopped first: its error is the one to read", 1)
    return (f"rank {rank}: internal error: {type(exc).__name__}: {first}",
            "set LLAMAPOD_DEBUG=1 for the traceback, and report it", 70)


_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EISDIR,
                       errno.ENOTDIR}

# What gloo and NCCL say when the process at the other end of a connection is gone.
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "NCCL communicator was aborted",
              "remote process exited", "Socket Timeout")


def _lost_a_peer(exc: BaseException, torch) -> bool:
    dist_error = getattr(getattr(torch, "distributed", None), "DistNetworkError", None) if torch else None
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in _PEER_GONE)


def run(argv: list[str]) -> None:
    """Run one worker and end the process as a torchrun worker ends (no interpreter teardown)."""
    from llamapod.train.parallel import exit_without_teardown

    exit_without_teardown(main(argv))

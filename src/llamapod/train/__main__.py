"""``python -m llamapod.train [--config FILE] [flags]``: one training worker.

Runs unchanged under ``torchrun`` (reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...),
under ``srun`` without torchrun (derives them from SLURM_*), and as a plain process
(a world of one). Errors are one line from rank 0 and an exit code, never a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _split_config(argv: list[str]) -> tuple[Path | None, list[str]]:
    rest, config = [], None
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--config" and i + 1 < len(argv):
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

    is_main = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"
    ui.route_library_logs()
    try:
        from llamapod.config.train import parse_train_args
        from llamapod.train.loop import train_worker

        config, flags = _split_config(sys.argv[1:] if argv is None else argv)
        spec = parse_train_args(flags, config_path=config)
        train_worker(spec)
        return 0
    except LlamapodError as exc:
        if is_main:
            ui.error(exc.message, exc.hint)
        return exc.exit_code
    except KeyboardInterrupt:
        if is_main:
            ui.error("interrupted", "resume with --resume_from_checkpoint <checkpoint folder>")
        return 130
    except Exception as exc:
        if ui.debug_enabled():
            raise
        rank = os.environ.get("RANK", "0")
        ui.error(f"rank {rank}: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                 "set LLAMAPOD_DEBUG=1 for the traceback, and report it")
        return 70


if __name__ == "__main__":
    from llamapod.train.parallel import exit_without_teardown

    exit_without_teardown(main())

"""The command a run prints to continue itself: after an interruption, or to train longer.

It carries every flag of the run that differs from the defaults (the model shape above
all: without it the checkpoint would not fit), the run and resume folders, and the new
step count, quoted for a POSIX shell so it can be pasted as printed.
"""

from __future__ import annotations

import os
import shlex

from llamapod.config.train import TrainSpec

# `llamapod train --nproc N`, when given, is passed to the workers so that what they print
# starts the same number of workers (RNG streams only continue on the same world layout).
NPROC_ENV = "LLAMAPOD_LOCAL_NPROC"
_PLACED_LAST = ("run_dir", "resume_from_checkpoint", "max_steps")


def resume_command(spec: TrainSpec, *, max_steps: int | None = None, nproc: int | None = None) -> str:
    """``llamapod train ...`` that resumes ``spec``'s run from its own checkpoint folder."""
    if spec.run_dir is None:
        raise ValueError("a run without a run folder cannot be resumed by folder")
    checkpoints = spec.effective_checkpoint_dir(spec.run_dir)
    resumed = spec.model_copy(update={"resume_from_checkpoint": checkpoints,
                                      "max_steps": max_steps if max_steps is not None else spec.max_steps})
    flags = [flag for flag in resumed.to_cli_args() if _flag_name(flag) not in _PLACED_LAST]
    nproc = nproc if nproc is not None else _nproc_from_launcher()
    words = ["llamapod", "train", *(["--nproc", str(nproc)] if nproc else []), *flags,
             f"--run_dir={spec.run_dir}", f"--resume_from_checkpoint={checkpoints}",
             f"--max_steps={resumed.max_steps}"]
    return shlex.join(words)


def _flag_name(flag: str) -> str:
    return flag[2:].split("=", 1)[0]


def _nproc_from_launcher() -> int | None:
    value = os.environ.get(NPROC_ENV, "")
    return int(value) if value.isdigit() else None

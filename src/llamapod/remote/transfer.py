"""Moving a run's files between the laptop and the cluster's shared file system."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from llamapod.cli import ui
from llamapod.errors import RemoteError
from llamapod.remote.environment import RemoteLayout
from llamapod.remote.shell import Shell

RUN_FILES = ("metrics.jsonl", "metrics.png")
HF_EXPORT_DIR = "hf"


def remote_run_dir(fsx_root: str, run: str) -> PurePosixPath:
    """A run name (``exp1``) lives under <fsx>/llamapod/runs; an absolute path is taken as is."""
    path = PurePosixPath(run)
    return path if path.is_absolute() else RemoteLayout(fsx_root).run_dir(run)


def list_runs(shell: Shell, fsx_root: str) -> list[str]:
    runs = RemoteLayout(fsx_root).runs
    result = shell.run(["sh", "-c", 'cd "$1" 2>/dev/null && ls -1t', "list-runs", str(runs)])
    return [line for line in result.stdout.splitlines() if line.strip()]


def pull_run(shell: Shell, fsx_root: str, run: str, destination: Path, *, model: bool = False) -> list[Path]:
    """Copy the run's metrics and plot (and its exported HF model) into ``destination``."""
    source = remote_run_dir(fsx_root, run)
    if not shell.exists(str(source)):
        known = list_runs(shell, fsx_root)
        choices = ", ".join(known[:10]) if known else "none yet"
        raise RemoteError(f"no run '{run}' on {shell.where} (looked in {source})",
                          f"runs there, newest first: {choices}")
    copied = []
    for name in RUN_FILES:
        remote = source / name
        if not shell.exists(str(remote)):
            if name == "metrics.jsonl":
                raise RemoteError(f"run '{run}' has no metrics.jsonl yet on {shell.where}",
                                  "the job may still be starting: check it with `llamapod jobs --cluster NAME`")
            ui.warn(f"run '{run}' has no {name} yet (it is written when training ends)")
            continue
        shell.get(str(remote), destination / name)
        copied.append(destination / name)
    if model:
        export = source / HF_EXPORT_DIR
        if not shell.exists(str(export)):
            raise RemoteError(f"run '{run}' has no exported model at {export}",
                              f"export it on the cluster first: llamapod ssh -- llamapod export "
                              f"{source / 'checkpoints'} --out {export}")
        ui.step(f"copying the model from {export}")
        shell.get(str(export), destination / HF_EXPORT_DIR)
        copied.append(destination / HF_EXPORT_DIR)
    return copied

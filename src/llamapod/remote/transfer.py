"""Moving a run's files between the laptop and the cluster's shared file system."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from llamapod import report
from llamapod.errors import RemoteError
from llamapod.remote.layout import RemoteLayout
from llamapod.remote.shell import Shell

RUN_FILES = ("metrics.jsonl", "metrics.png")
HF_EXPORT_DIR = "hf"
# A run folder records the environment it runs in (written by `llamapod train --cluster`).
ENV_RECORD = ".llamapod-env"


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
            report.warn(f"run '{run}' has no {name} yet (it is written when training ends)")
            continue
        shell.get(str(remote), destination / name)
        copied.append(destination / name)
    if model:
        export = source / HF_EXPORT_DIR
        if not shell.exists(str(export)):
            export_on_cluster(shell, source, export)
        report.step(f"copying the model from {export}")
        shell.get(str(export), destination / HF_EXPORT_DIR)
        copied.append(destination / HF_EXPORT_DIR)
    return copied


def export_on_cluster(shell: Shell, run_dir: PurePosixPath, export: PurePosixPath) -> None:
    """Export the run's newest checkpoint to a Hugging Face folder, on a compute node when Slurm is there.

    It runs with the run's own environment (recorded at launch), so the exporting
    llamapod is the one that wrote the checkpoint. The head node is often small, so the
    export goes through ``srun`` onto a node of the default partition.
    """
    checkpoints = run_dir / "checkpoints"
    if not shell.exists(str(checkpoints)):
        raise RemoteError(f"run {run_dir.name} has no checkpoints yet on {shell.where} (looked in {checkpoints})",
                          "let the job reach its first --checkpoint_freq step, then pull again")
    env_file = run_dir / ENV_RECORD
    if not shell.exists(str(env_file)):
        raise RemoteError(f"run {run_dir.name} was not started by `llamapod train --cluster`, so its environment "
                          "is unknown", f"export it on the cluster: llamapod export --checkpoint {checkpoints} "
                          f"--hf {export}")
    python = str(PurePosixPath(shell.read_text(str(env_file)).strip()) / "bin" / "python")
    command = [python, "-m", "llamapod", "export", "--checkpoint", str(checkpoints), "--hf", str(export)]
    if shell.which("srun"):
        command = ["srun", "--nodes=1", "--ntasks=1", f"--job-name=export-{run_dir.name}", *command]
    report.step(f"exporting the newest checkpoint of {run_dir.name} to {export} on the cluster")
    result = shell.run(command, timeout=6 * 3600)
    if not result.ok:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        detail = (errors or lines or [f"exit code {result.returncode}"])[-1].removeprefix("error: ")
        raise RemoteError(f"exporting {checkpoints} on {shell.where} failed: {detail}",
                          f"run it by hand to see everything: llamapod ssh -- {' '.join(command)}")


MANIFEST_SUFFIX = ".llamapod-manifest"


def local_manifest(local: Path) -> str:
    """A fingerprint of a file or folder: every file's relative path, size and modification time."""
    import hashlib

    digest = hashlib.sha256()
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    for path in files:
        stat = path.stat()
        name = path.name if path == local else path.relative_to(local).as_posix()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def sync_path(shell: Shell, local: Path, remote: str) -> bool:
    """Upload ``local`` to ``remote`` unless the same content was uploaded there before.

    The fingerprint is written beside the copy only after the copy finished, so an
    interrupted upload is redone, and an unchanged dataset is not sent again on every run.
    Returns whether anything was copied.
    """
    manifest = f"{remote}{MANIFEST_SUFFIX}"
    fingerprint = local_manifest(local)
    if shell.exists(manifest) and shell.read_text(manifest).strip() == fingerprint and shell.exists(remote):
        return False
    shell.run(["rm", "-rf", remote], check=True)
    shell.put(local, remote)
    shell.write_text(manifest, fingerprint + "\n")
    return True

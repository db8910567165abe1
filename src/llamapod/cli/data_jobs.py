"""``llamapod data prepare --slurm`` (from a login node) and ``--cluster NAME`` (from a laptop):
the same preparation as a Slurm job with one task per node."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional

from llamapod.cli import ui


def _absolute_if_local(value: str | None) -> str | None:
    """Local paths and globs made absolute (the job's tasks start in the run folder);
    anything else (a hub id) kept as it is."""
    import glob

    if not value:
        return value
    path = Path(value).expanduser()
    if path.exists():
        return str(path.resolve())
    return os.path.abspath(path) if glob.has_magic(value) else value


def submit_prepare_job(source: str, out: Path, *, tokenizer_spec: str | None, options: dict[str, Any],
                       workers: int | None, shard_mb: float | None, overwrite: bool, cluster: str | None,
                       config_path: Optional[Path], slurm_overrides: dict[str, Any], dry_run: bool,
                       detach: bool) -> None:
    from llamapod.config.files import default_config_path
    from llamapod.slurm.prepare_render import PrepareRequest

    config_path = config_path or default_config_path()
    if cluster:
        request = PrepareRequest(source=source, out=str(out), tokenizer=tokenizer_spec, options=options,
                                 workers=workers, shard_mb=shard_mb, overwrite=overwrite)
        prepare_on_cluster(request, cluster=cluster, config_path=config_path, slurm_overrides=slurm_overrides,
                           dry_run=dry_run, detach=detach)
        return
    request = PrepareRequest(source=_absolute_if_local(source) or source, out=str(out.expanduser().resolve()),
                             tokenizer=_absolute_if_local(tokenizer_spec), options=options, workers=workers,
                             shard_mb=shard_mb, overwrite=overwrite)
    prepare_with_slurm(request, config_path=config_path, slurm_overrides=slurm_overrides, dry_run=dry_run)


def prepare_with_slurm(request, *, config_path: Optional[Path], slurm_overrides: dict[str, Any], dry_run: bool,
                       shell=None) -> str | None:
    """Write the job's sbatch script (``dry_run``) or write and submit it; prints the path or job id."""
    from llamapod.cli.slurm_cmds import resolve_job
    from llamapod.config.files import load_table
    from llamapod.errors import SlurmError
    from llamapod.remote.shell import LocalShell
    from llamapod.slurm.jobs import SlurmJobs
    from llamapod.slurm.prepare_render import default_job_name, prepare_job_paths, render_prepare_sbatch
    from llamapod.slurm.spec import load_slurm_job

    shell = shell or LocalShell()
    overrides = dict(slurm_overrides)
    if "job_name" not in load_table(config_path, "slurm") and "job_name" not in overrides:
        overrides["job_name"] = default_job_name(request.out)
    job = resolve_job(load_slurm_job(config_path, overrides), shell)
    script = render_prepare_sbatch(request, job)
    paths = prepare_job_paths(job)
    jobs = SlurmJobs(shell)
    if not dry_run:
        if shell.which("sbatch") is None:
            raise SlurmError(f"Slurm is not installed on {shell.where}: `sbatch` is not on PATH",
                             "submit from the cluster's login or head node, use --cluster NAME from a laptop, "
                             "or add --dry-run to only write the script")
        jobs.preflight(job.nodes, job.partition)
        # Two jobs of one run folder would be two runs on one output: wasted work, never wrong
        # bytes, but a re-run of this command while its job is queued is surely a mistake.
        running = jobs.active_job_in(paths.run_dir)
        if running is not None:
            raise SlurmError(f"job {running.job_id} ({running.name}) is already {running.state} for {request.out}",
                             f"follow it with `llamapod logs {running.job_id} -f`, or stop it with "
                             f"`llamapod cancel {running.job_id}`")
    summary = f"{job.nodes} node{'s' if job.nodes != 1 else ''}, all cores of each"
    if dry_run:
        shell.write_text(paths.script, script, mode=0o755)
        ui.success(f"wrote the sbatch script for {summary}")
        ui.out(paths.script)
        ui.info(f"submit it with `sbatch {paths.script}`, or run the same command without --dry-run")
        return None
    job_id = jobs.write_and_submit(paths.script, script)
    ui.success(f"submitted job {job_id} ({job.job_name}: {summary}) preparing {request.out}; script {paths.script}")
    ui.out(job_id)
    ui.info(f"follow it with `llamapod logs {job_id} -f` (progress: tokens done and time left); "
            f"list jobs with `llamapod jobs`; a re-run after `llamapod cancel {job_id}` keeps finished shards")
    return job_id


def prepare_on_cluster(request, *, cluster: str, config_path: Optional[Path], slurm_overrides: dict[str, Any],
                       dry_run: bool, detach: bool) -> None:
    from llamapod.workflows.cluster_prepare import ClusterPrepare

    run = ClusterPrepare.create(request, cluster=cluster, config_path=config_path, slurm_overrides=slurm_overrides)
    if dry_run:
        ui.out(run.render_preview())
        ui.info(f"dry run: nothing was uploaded or submitted to {cluster}")
        return
    job_id = run.launch(ui.info)
    ui.success(f"submitted job {job_id} on {cluster}: {run.job.nodes} node(s) preparing {run.request.out}")
    if detach:
        ui.info(f"follow it:  llamapod logs --cluster {cluster} {job_id} -f")
        ui.out(job_id)
        return
    follow_prepare_job(run.shell, job_id, cluster, run.request.out)


def follow_prepare_job(shell, job_id: str, cluster: str, out: str) -> None:
    """Stream the job's output until it ends; one error line with the next step if it failed."""
    from llamapod.slurm.jobs import SlurmJobs, ended_on_cluster

    started = time.monotonic()
    job = SlurmJobs(shell).follow_to_end(job_id, cluster)
    if job is None:
        return
    if job.failed:
        raise ended_on_cluster(job, cluster, "re-run the same command: finished shards are kept")
    ui.success(f"job {job_id} finished on {cluster} in {time.monotonic() - started:.0f} s: dataset in {out} "
               f"(`llamapod train --cluster {cluster} --dataset {out}`)")

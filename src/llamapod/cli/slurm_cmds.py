"""``llamapod train --slurm``, ``llamapod jobs``, ``llamapod logs``, ``llamapod cancel``.

Everything Slurm-side goes through ``llamapod.slurm.jobs.SlurmJobs`` on a Shell: this
machine by default, the cluster's head node over SSH with ``--cluster NAME``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import click

from llamapod.cli import ui

if TYPE_CHECKING:
    from llamapod.config.train import TrainSpec
    from llamapod.remote.shell import Shell
    from llamapod.slurm.jobs import JobInfo, SlurmJobs
    from llamapod.slurm.spec import SlurmJob

# HyperPod marks its nodes with this folder; only there does srun know --auto-resume.
HYPERPOD_MARKER = "/opt/sagemaker_cluster"
FAILED_JOBS_DETAILED = 3
ERROR_TAIL_LINES = 8


# ---- llamapod train --slurm -------------------------------------------------------


def resolve_job(job: "SlurmJob", shell: "Shell") -> "SlurmJob":
    """Fill what the config leaves open from the machine the job is submitted on."""
    from llamapod.remote.shell import LocalShell

    updates: dict[str, Any] = {}
    if job.hyperpod is None:
        updates["hyperpod"] = shell.exists(HYPERPOD_MARKER)
    if isinstance(shell, LocalShell):
        if job.workdir is None:
            updates["workdir"] = os.getcwd()
        if job.python is None:
            # The interpreter that runs llamapod here has torch and llamapod; on a head
            # node with a shared file system the compute nodes see the same one.
            updates["python"] = sys.executable
    return job.model_copy(update=updates) if updates else job


def report_memory(spec: "TrainSpec", job: "SlurmJob", *, force: bool) -> None:
    """Print the job's estimated peak memory per GPU; refuse a job that would not fit, unless ``force``.

    Called before anything is written or submitted. Jobs on CPU nodes have nothing to check.
    """
    from llamapod.config.train import resolve_model_args
    from llamapod.sizing.fit import assess_memory, describe_fit, describe_parts, require_fit

    if not job.uses_gpus:
        return
    fit = assess_memory(spec, resolve_model_args(spec), instance_type=job.instance_type, nodes=job.nodes,
                        gpus_per_node=job.workers_per_node)
    if fit is None:
        return
    if not force:
        require_fit(fit)
    ui.info(describe_fit(fit))
    ui.info(f"  {describe_parts(fit.estimate)}")
    if not fit.fits:
        ui.warn(f"the job is estimated not to fit ({fit.estimate.total_gib:.1f} > {fit.usable_gib:.1f} GiB per "
                f"{fit.accelerator}); going ahead because of --force")


def train_with_slurm(spec: "TrainSpec", *, config_path: Optional[Path], dry_run: bool,
                     slurm_overrides: dict[str, Any], shell: "Shell | None" = None, force: bool = False) -> int:
    """Write the job's sbatch script (``dry_run``) or write and submit it; prints the path or job id.

    Checked first, in this order, before anything is written: that Slurm is here (to
    submit), that the job fits in its GPUs' memory (refused otherwise, unless ``force``),
    that the cluster has the nodes and partition, and that the run folder has no live job.
    """
    from llamapod.remote.shell import LocalShell
    from llamapod.slurm.jobs import SlurmJobs
    from llamapod.slurm.render import job_paths, render_sbatch
    from llamapod.slurm.spec import load_slurm_job

    shell = shell or LocalShell()
    job = resolve_job(load_slurm_job(config_path, slurm_overrides), shell)
    script = render_sbatch(spec, job)
    paths = job_paths(spec, job)
    jobs = SlurmJobs(shell)
    if not dry_run:
        _require_sbatch(shell)
    report_memory(spec, job, force=force)
    if not dry_run:
        _require_free_slot(jobs, job, paths.run_dir)
    summary = (f"{job.nodes} node{'s' if job.nodes != 1 else ''} x {job.workers_per_node} workers"
               f"{f' ({job.instance_type})' if job.instance_type else ''}")
    if dry_run:
        shell.write_text(paths.script, script, mode=0o755)
        ui.success(f"wrote the sbatch script for {summary}")
        ui.out(paths.script)
        ui.info(f"submit it with `sbatch {paths.script}`, or run the same command without --dry-run")
        return 0
    if _has_checkpoints(shell, paths.checkpoint_dir):
        ui.info(f"{paths.checkpoint_dir} holds checkpoints: the job resumes from the newest "
                "(set another job_name in [slurm] to start a new run)")
    job_id = jobs.write_and_submit(paths.script, script)
    ui.success(f"submitted job {job_id} ({job.job_name}: {summary}); script {paths.script}")
    ui.out(job_id)
    ui.info(f"follow it with `llamapod logs {job_id} -f`; list jobs with `llamapod jobs`; "
            f"stop it with `llamapod cancel {job_id}`")
    return 0


def _require_sbatch(shell: "Shell") -> None:
    from llamapod.errors import SlurmError

    if shell.which("sbatch") is None:
        raise SlurmError(f"Slurm is not installed on {shell.where}: `sbatch` is not on PATH",
                         "submit from the cluster's login or head node, use --cluster NAME from a laptop, "
                         "or add --dry-run to only write the script")


def _require_free_slot(jobs: "SlurmJobs", job: "SlurmJob", run_dir: str) -> None:
    """The nodes and partition exist, and no job of this run is queued or running."""
    from llamapod.errors import SlurmError

    jobs.preflight(job.nodes, job.partition)
    # Two jobs in one run folder would write the same checkpoints: a re-run of this
    # command while its job is queued or running must not submit a second one.
    running = jobs.active_job_in(run_dir)
    if running is not None:
        raise SlurmError(f"job {running.job_id} ({running.name}) is already {running.state} in {run_dir}",
                         f"follow it with `llamapod logs {running.job_id} -f`, stop it with "
                         f"`llamapod cancel {running.job_id}`, or set another job_name in [slurm]")


def _has_checkpoints(shell: "Shell", checkpoint_dir: str) -> bool:
    if not shell.exists(checkpoint_dir):
        return False
    listing = shell.run(["ls", "-1", checkpoint_dir], timeout=30)
    return any(name.startswith("step_") for name in listing.stdout.split())


# ---- jobs / logs / cancel -----------------------------------------------------------


def _slurm(cluster: Optional[str]) -> "SlurmJobs":
    from llamapod.slurm.jobs import SlurmJobs

    if cluster:
        from llamapod.workflows.connect import shell_for_cluster

        return SlurmJobs(shell_for_cluster(cluster))
    from llamapod.remote.shell import LocalShell

    return SlurmJobs(LocalShell())


def _cluster_flag(cluster: Optional[str]) -> str:
    return f" --cluster {cluster}" if cluster else ""


def _where(job: "JobInfo") -> str:
    if job.state == "PENDING":
        return f"({job.reason})"
    if job.failed and job.reason not in ("", "None"):
        return f"{job.node_list} ({job.reason})".strip()
    return job.node_list


def describe(job: "JobInfo") -> str:
    """One line: what the job is doing, or how it ended."""
    name = f"job {job.job_id} ({job.name})"
    if job.state == "PENDING":
        return f"{name} is PENDING: {job.reason}" + (f" (restarted {job.restarts}x)" if job.restarts else "")
    if not job.ended:
        return f"{name} is {job.state} for {job.elapsed} on {job.node_list}"
    text = f"{name} {job.state} after {job.elapsed}"
    if job.failed:
        text += f" (exit code {job.exit_code}; Slurm's reason: {job.reason})"
    return text


@click.command()
@click.option("--cluster", help="the HyperPod cluster to ask (default: Slurm on this machine)")
@click.option("--all", "all_users", is_flag=True, help="every user's jobs, not only yours")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def jobs(cluster: Optional[str], all_users: bool, as_json: bool) -> None:
    """List Slurm jobs: state, elapsed time, nodes and the last metrics line."""
    slurm = _slurm(cluster)
    listed = slurm.list(all_users=all_users)
    metrics = {job.job_id: slurm.last_metrics(job) for job in listed}
    if as_json:
        ui.out_json([{**dataclasses.asdict(job), "last_metrics": metrics[job.job_id]} for job in listed])
        return
    if not listed:
        ui.info("no jobs (without accounting, Slurm forgets ended jobs after a few minutes)")
        return
    ui.table(["JOB", "NAME", "STATE", "ELAPSED", "NODES", "WHERE", "LAST METRICS"],
             [(j.job_id, j.name, j.state, j.elapsed, j.nodes, _where(j), metrics[j.job_id] or "") for j in listed])
    failed = [job for job in listed if job.failed][-FAILED_JOBS_DETAILED:]
    for job in failed:
        _show_failure(slurm, job, cluster)


def _show_failure(slurm: "SlurmJobs", job: "JobInfo", cluster: Optional[str]) -> None:
    ui.warn(describe(job))
    tail = slurm.error_tail(job, ERROR_TAIL_LINES).rstrip("\n")
    if tail:
        ui.info(f"  last lines of {job.stderr or job.stdout}:")
        for line in tail.splitlines():
            ui.info(f"    {line}")
    ui.info(f"  whole log: `llamapod logs{_cluster_flag(cluster)} {job.job_id}`")


@click.command()
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines until the job ends")
@click.option("-n", "--lines", type=click.IntRange(min=1), help="only the last N lines of each log file")
@click.option("--cluster", help="the HyperPod cluster the job runs on (default: this machine)")
def logs(job_id: str, follow: bool, lines: Optional[int], cluster: Optional[str]) -> None:
    """Show a job's output (stdout, then stderr) and its last metrics line."""
    slurm = _slurm(cluster)
    if follow:
        for line in slurm.follow(job_id):
            ui.out(line)
        job = slurm.info(job_id)
    else:
        job = slurm.info(job_id)
        text = slurm.log_text(job_id, tail=lines, job=job)
        if text:
            ui.out(text.rstrip("\n"))
    metrics = slurm.last_metrics(job)
    if metrics:
        ui.info(f"last metrics: {metrics}")
    if job.failed:
        from llamapod.errors import SlurmError

        before = ("the lines above end with the job's error" if job.node_list
                  else f"it never started (pending: {job.reason}), so it wrote no log")
        raise SlurmError(describe(job), f"{before}; resubmit with "
                                        f"`llamapod train --slurm` (it resumes from the last checkpoint)")
    ui.info(describe(job))


@click.command()
@click.argument("job_id")
@click.option("--cluster", help="the HyperPod cluster the job runs on (default: this machine)")
def cancel(job_id: str, cluster: Optional[str]) -> None:
    """Cancel a Slurm job (its checkpoints stay, so it can be resubmitted and resume)."""
    slurm = _slurm(cluster)
    job = slurm.cancel(job_id)
    if job.ended:
        ui.info(f"job {job.job_id} ({job.name}) had already ended ({job.state}); nothing to cancel")
        return
    ui.success(f"cancelled job {job.job_id} ({job.name}), which was {job.state}")

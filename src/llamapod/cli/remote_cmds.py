"""``llamapod ssh``, ``llamapod pull`` and ``llamapod train --cluster NAME``.

Everything here reaches the cluster through ``llamapod.workflows.connect`` (ssh, over
SSM for HyperPod); the cluster side runs the same llamapod, installed from this
checkout's wheel into an environment on /fsx.
"""

from __future__ import annotations

import subprocess  # nosec B404: subprocess runs fixed programs with argument lists, never a shell
import sys
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import click

from llamapod.cli import ui

if TYPE_CHECKING:
    from llamapod.config.train import TrainSpec
    from llamapod.workflows.connect import ClusterAccess


def _cluster_name(cluster: str | None, config_path: Path | None) -> str:
    if cluster:
        return cluster
    from llamapod.config.files import load_table

    name = load_table(config_path, "cluster").get("name")
    if not name:
        raise click.UsageError("which cluster? pass --cluster NAME (or set [cluster] name in llamapod.toml)")
    return str(name)


def _config_path(path: Path | None) -> Path | None:
    from llamapod.config.files import default_config_path

    return path or default_config_path()


class _SshCommand(click.Command):
    """Everything after ``--`` is the remote command, kept verbatim (click would drop the ``--``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            split = args.index("--")
            ctx.meta["remote_command"] = args[split + 1:]
            args = args[:split]
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "[-- COMMAND...]"]


@click.command(cls=_SshCommand)
@click.argument("node", required=False)
@click.option("--cluster", "-c", help="cluster name (default: [cluster] name in llamapod.toml)")
@click.option("--config", "write_config", is_flag=True,
              help="add Host entries for the cluster and its nodes to ~/.ssh/config, then exit")
@click.option("--ssh-config", "ssh_config", type=click.Path(dir_okay=False, path_type=Path),
              help="ssh config file to write with --config (default: ~/.ssh/config)")
@click.option("--file", "-f", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="llamapod.toml to read (default: ./llamapod.toml)")
@click.option("--tty", "-t", "force_tty", is_flag=True, help="give the command a terminal (for htop, nvtop, vim)")
@click.pass_context
def ssh(ctx: click.Context, node: str | None, cluster: str | None, write_config: bool, ssh_config: Path | None,
        config_path: Path | None, force_tty: bool) -> None:
    """Open a shell (or run `-- COMMAND`) on a cluster node as the cluster user.

    NODE is an instance group (its first running node), an instance id, or a node's
    hostname (ip-10-1-2-3); default: the controller. The first connection installs your
    public key on the cluster through SSM.
    """
    from llamapod.workflows.connect import connect, resolve_cluster

    config_path = _config_path(config_path)
    access = resolve_cluster(_cluster_name(cluster, config_path), config_path,
                             with_ips=write_config or node is not None)
    if write_config:
        _write_ssh_config(access, ssh_config or Path.home() / ".ssh" / "config")
        return
    shell = connect(access, node)
    command = ctx.meta.get("remote_command") or []
    remote = shell.login_command(command)
    argv = shell.ssh_argv(remote, tty=force_tty or (remote is None and sys.stdin.isatty()))
    ui.debug(" ".join(argv))
    code = subprocess.call(argv)  # nosec B603: argv is built by llamapod (ssh with validated target), no shell
    if code:
        raise click.exceptions.Exit(code)


def _write_ssh_config(access: "ClusterAccess", path: Path) -> None:
    from llamapod.cloud.access import write_ssh_config
    from llamapod.workflows.connect import connect, ssh_config_entries

    # Connecting once installs the key (through SSM) so plain ssh works right away.
    connect(access, None)
    entries = ssh_config_entries(access)
    changed = write_ssh_config(path, access.name, entries)
    verb = "updated" if changed else "already up to date:"
    ui.success(f"{verb} {path} ({len(entries)} host entr{'y' if len(entries) == 1 else 'ies'} for {access.name})")
    ui.out("\n".join(f"ssh {entry.aliases[0]}" for entry in entries))


@click.command()
@click.argument("run")
@click.option("--cluster", "-c", help="cluster name (default: [cluster] name in llamapod.toml)")
@click.option("--model", is_flag=True,
              help="also copy the Hugging Face model (<run>/hf; exported on the cluster first if missing)")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path),
              help="local folder (default: ./runs/RUN)")
@click.option("--file", "-f", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="llamapod.toml to read (default: ./llamapod.toml)")
def pull(run: str, cluster: str | None, model: bool, dest: Path | None, config_path: Path | None) -> None:
    """Copy a run's metrics.jsonl, metrics.png (and --model) from the cluster."""
    from llamapod.workflows.connect import connect, resolve_cluster
    from llamapod.remote.transfer import pull_run

    from llamapod.validate import path_problem, require

    # Checked before the cluster is reached: the run name becomes a path on the cluster.
    require(path_problem(run), run, "RUN",
            "pass a run name (exp1) or the run's absolute path on the cluster")
    config_path = _config_path(config_path)
    access = resolve_cluster(_cluster_name(cluster, config_path), config_path)
    shell = connect(access)
    destination = dest or Path("runs") / PurePosixPath(run).name
    copied = pull_run(shell, access.fsx_root, run, destination, model=model)
    for path in copied:
        ui.out(str(path))
    ui.success(f"copied {len(copied)} item{'s' if len(copied) != 1 else ''} of run {run} to {destination}")


def train_on_cluster(spec: "TrainSpec", *, cluster: str, config_path: Path | None, detach: bool,
                     slurm_overrides: dict[str, Any], dry_run: bool, force: bool = False) -> int:
    """Prepare the environment on /fsx, sync inputs, submit the sbatch on the head node, follow it.

    The job's memory on the cluster's GPUs is estimated before anything is uploaded: one
    that would not fit is refused, unless ``force``.
    """
    from llamapod.cli.slurm_cmds import report_memory
    from llamapod.workflows.cluster_train import ClusterRun, follow_job

    run = ClusterRun.create(spec, cluster=cluster, config_path=config_path, slurm_overrides=slurm_overrides)
    report_memory(spec, run.job, force=force)
    if dry_run:
        ui.out(run.render_preview())
        ui.info(f"dry run: nothing was uploaded or submitted to {cluster}")
        return 0
    job_id = run.launch()
    pull_hint = f"llamapod pull --cluster {cluster} {run.name}"
    if detach:
        ui.info(f"follow it:  llamapod logs --cluster {cluster} {job_id} -f")
        ui.info(f"results:    {pull_hint}")
        ui.out(job_id)
        return 0
    started = time.monotonic()
    code = follow_job(run, job_id)
    if code == 0:
        ui.success(f"job {job_id} finished on {cluster} in {time.monotonic() - started:.0f} s; "
                   f"get its metrics and plot with `{pull_hint}`")
    return code

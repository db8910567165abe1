"""``llamapod train``: one command, three places to run.

Launcher options (where to run) are parsed here; everything else is a training flag
(``--max_context_width 2048 --lr 3e-4 ...``, the seed's command line as written) and is
parsed, together with the ``[train]`` table of the config, by ``llamapod.config.train``.
The same TrainSpec then goes to the local launcher, to Slurm, or to a remote cluster.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from llamapod.cli import ui

LAUNCH_HELP = """\
Usage: llamapod train [LAUNCH OPTIONS] [TRAINING FLAGS]

  Train a Llama model. With no flags: a small model on a built-in corpus, on this
  machine, in a few minutes.

Launch options:
  --config PATH        llamapod.toml to read [train] (and [slurm]) from
                       (default: ./llamapod.toml when present)
  --nproc N            local worker processes (default: GPUs, or 2 on CPU)
  --slurm              submit to Slurm with sbatch (from a login/head node)
  --dry-run            with --slurm: write the sbatch script, do not submit
  --nodes N            with --slurm: number of nodes
  --partition NAME     with --slurm: partition
  --time LIMIT         with --slurm: time limit (e.g. 4:00:00)
  --account NAME       with --slurm: account
  --instance-type T    with --slurm: instance type of the nodes (sets GPUs per node
                       and network settings), e.g. ml.g5.48xlarge
  --cluster NAME       run on the HyperPod cluster NAME (from this laptop)
  --detach             with --cluster: return once the job is submitted
  --force              with --slurm or --cluster: submit a job even when its estimated
                       peak GPU memory is more than its GPUs hold
  -h, --help           show this message
"""

SLURM_KEYS = ("nodes", "partition", "time", "account", "instance_type")


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--nproc", type=click.IntRange(min=1))
@click.option("--slurm", is_flag=True)
@click.option("--dry-run", is_flag=True)
@click.option("--nodes", type=click.IntRange(min=1))
@click.option("--partition")
@click.option("--time")
@click.option("--account")
@click.option("--instance-type")
@click.option("--cluster")
@click.option("--detach", is_flag=True)
@click.option("--force", is_flag=True)
@click.option("-h", "--help", "show_help", is_flag=True)
@click.pass_context
def train(ctx: click.Context, config_path, nproc, slurm, dry_run, cluster, detach, force, show_help,
          **slurm_opts) -> None:
    """Train a Llama model: locally, with --slurm, or on --cluster NAME."""
    if show_help:
        from llamapod.config.train_flags import flags_help

        ui.out(LAUNCH_HELP)
        ui.out(flags_help())
        return
    from llamapod.config.files import default_config_path
    from llamapod.config.train_flags import read_train_args

    config_path = config_path or default_config_path()
    parsed = read_train_args(list(ctx.args), config_path=config_path)
    for notice in parsed.notices:
        ui.warn(notice)
    spec = parsed.spec
    slurm_overrides = {k: v for k, v in slurm_opts.items() if v is not None}

    if cluster:
        from llamapod.cli.remote_cmds import train_on_cluster

        code = train_on_cluster(spec, cluster=cluster, config_path=config_path, detach=detach,
                                slurm_overrides=slurm_overrides, dry_run=dry_run, force=force)
    elif slurm or dry_run:
        from llamapod.cli.slurm_cmds import train_with_slurm

        code = train_with_slurm(spec, config_path=config_path, dry_run=dry_run, slurm_overrides=slurm_overrides,
                                force=force)
    else:
        if force:
            raise click.UsageError("--force only applies with --slurm or --cluster")
        if slurm_overrides:
            raise click.UsageError(f"--{next(iter(slurm_overrides)).replace('_', '-')} only applies with --slurm or --cluster")
        from llamapod.cli.run_summary import print_run_result
        from llamapod.train.launch import train_locally

        code, result = train_locally(spec, nproc=nproc)
        if result is not None:
            print_run_result(result)
    if code:
        sys.exit(code)

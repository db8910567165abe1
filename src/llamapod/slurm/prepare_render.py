"""The sbatch script of ``llamapod data prepare --slurm``: one task per node, each running
the same ``llamapod data prepare`` with the job's run id, so the nodes share the work
through the output directory on the shared file system.

Only text comes out of here; submitting is ``llamapod.slurm.jobs``. The #SBATCH lines come
from the training job's renderer (same validation, same log files); every value that
reaches bash is quoted with ``shlex``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from llamapod.errors import ConfigError
from llamapod.slurm.render import _INDENT, _sbatch_lines, _setup_lines
from llamapod import validate
from llamapod.slurm.spec import SlurmJob

# Each attempt of the job (a requeue after a node failure, HyperPod's auto-resume) is a run
# of its own: it re-verifies what earlier attempts finished and redoes the rest.
RUN_ID = '"slurm-${SLURM_JOB_ID}-${SLURM_RESTART_COUNT:-0}"'

# `llamapod data prepare` flags for the source options, in the order they are written.
_OPTION_FLAGS = (("text_field", "--text-field"), ("txt_document", "--txt-document"),
                 ("dataset_config_name", "--dataset-config-name"), ("dataset_split", "--dataset-split"),
                 ("max_tokens", "--max-tokens"))


@dataclass(frozen=True)
class PrepareRequest:
    """What to prepare, as the job's tasks will be told (paths as the nodes see them)."""

    source: str
    out: str
    tokenizer: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    workers: int | None = None
    shard_mb: float | None = None
    overwrite: bool = False

    def cli_groups(self) -> list[list[str]]:
        """The `llamapod data prepare` arguments, a flag with its value per group."""
        groups = [[self.source], ["--out", self.out]]
        if self.tokenizer:
            groups.append(["--tokenizer", self.tokenizer])
        for key, flag in _OPTION_FLAGS:
            if self.options.get(key) is not None:
                groups.append([flag, str(self.options[key])])
        if self.options.get("streaming"):
            groups.append(["--streaming"])
        groups += [["--data-files", name] for name in self.options.get("data_files") or []]
        if self.workers:
            groups.append(["--workers", str(self.workers)])
        if self.shard_mb:
            groups.append(["--shard-mb", str(self.shard_mb)])
        if self.overwrite:
            groups.append(["--overwrite"])
        return groups


def default_job_name(out: str) -> str:
    """``prepare-<name of --out>``, reduced to what a Slurm job name may hold."""
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in PurePosixPath(out).name).strip("-.")
    return f"prepare-{name}"[:64] if name else "prepare"


@dataclass(frozen=True)
class PrepareJobPaths:
    run_dir: str     # the script and Slurm's log files
    script: str


def prepare_job_paths(job: SlurmJob) -> PrepareJobPaths:
    run_dir = job.run_dir
    problem = validate.sbatch_path_problem(run_dir)
    if problem:
        # Slurm reads the #SBATCH --output/--error lines itself, without bash's quoting.
        raise ConfigError(f"output_dir {run_dir!r} cannot hold a Slurm job's files: it {problem}",
                          "choose an output_dir without them")
    return PrepareJobPaths(run_dir, str(PurePosixPath(run_dir) / "job.sbatch"))


def _launch_command(request: PrepareRequest, job: SlurmJob) -> list[str]:
    python = job.python or "python3"
    head = " ".join(shlex.quote(part) for part in ["srun", python, "-m", "llamapod", "data", "prepare"])
    groups = [head] + [" ".join(shlex.quote(arg) for arg in group) for group in request.cli_groups()]
    groups.append(f"--run-id {RUN_ID}")
    return [groups[0] + " \\"] + [f"{_INDENT}{g} \\" for g in groups[1:-1]] + [f"{_INDENT}{groups[-1]}"]


def render_prepare_sbatch(request: PrepareRequest, job: SlurmJob) -> str:
    """The sbatch script that prepares ``request`` over ``job.nodes`` nodes."""
    paths = prepare_job_paths(job)
    out = [
        "#!/bin/bash",
        "# Tokenizing job written by `llamapod data prepare --slurm`. Edit it freely, then",
        f"# submit it with `sbatch {paths.script}`; follow it with `llamapod logs JOB -f`.",
        f"# Every node tokenizes its share of the corpus into {request.out} with all its cores;",
        "# shards finished by an earlier attempt are kept, so a requeued job continues.",
        *_sbatch_lines(job, paths.run_dir),
        "",
    ]
    if job.env_setup:
        out += ["set -eo pipefail", "", "# Software environment", *_setup_lines(job.env_setup), "set -u"]
    else:
        out.append("set -euo pipefail")
    if job.env:
        out += ["", "# Environment from [slurm] env"]
        out += [f"export {name}={shlex.quote(value)}" for name, value in sorted(job.env.items())]
    out += [
        "",
        'echo "llamapod: job $SLURM_JOB_ID on $SLURM_JOB_NUM_NODES node(s) $SLURM_JOB_NODELIST,'
        ' attempt $((${SLURM_RESTART_COUNT:-0} + 1))"',
        *_launch_command(request, job),
    ]
    return "\n".join(out) + "\n"

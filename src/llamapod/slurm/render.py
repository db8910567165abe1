"""Turn a TrainSpec and a SlurmJob into an sbatch script a person can read and edit.

Only text comes out of here; submitting is ``llamapod.slurm.jobs``. Every value that
reaches bash is quoted with ``shlex``; the torchrun command is one plain command with
line continuations and no comments inside it (the reference script's bash arrays with
``\\ # comment`` continuations silently drop every flag after the first comment).
"""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, NamedTuple

from llamapod import validate
from llamapod.errors import ConfigError
from llamapod.slurm.spec import SlurmJob

if TYPE_CHECKING:
    from llamapod.config.train import TrainSpec

# Accelerators whose instance types support GPUDirect RDMA over EFA (p4d/p4de/p5*);
# g5/g6/g6e have EFA but no device RDMA, where the setting makes libfabric fail.
_DEVICE_RDMA = {"A100", "H100", "H200"}

_INDENT = "    "


class JobPaths(NamedTuple):
    run_dir: str         # metrics, plot, the script and Slurm's log files
    checkpoint_dir: str
    script: str          # where `llamapod train --slurm` writes the sbatch script


def job_paths(spec: "TrainSpec", job: SlurmJob) -> JobPaths:
    """Where the job keeps its files: the spec's folders when it names them, else under the job's run dir."""
    run_dir = job.absolute(spec.run_dir) if spec.run_dir else job.run_dir
    problem = validate.sbatch_path_problem(run_dir)
    if problem:
        # Slurm reads the #SBATCH --output/--error lines itself, without bash's quoting.
        raise ConfigError(f"run_dir {validate.shown(run_dir)} {problem}",
                          "choose a run_dir without spaces, quotes, backslashes, '#', '%' or control characters")
    checkpoint_dir = job.absolute(spec.checkpoint_dir) if spec.checkpoint_dir else str(PurePosixPath(run_dir) / "checkpoints")
    # It is named in the script's header comment and created with mkdir: one line, not option-like.
    validate.require_path(checkpoint_dir, "checkpoint_dir",
                          "choose a checkpoint_dir on one line, not starting with '-'")
    return JobPaths(run_dir, checkpoint_dir, str(PurePosixPath(run_dir) / "job.sbatch"))


def job_train_args(spec: "TrainSpec", job: SlurmJob) -> list[str]:
    """The trainer's flags for the job: resume from the job's own checkpoint folder by default.

    Requeue and HyperPod auto-resume re-run the same script, so the script itself must
    point at the checkpoints; an empty folder means a fresh start.
    """
    run_dir, checkpoint_dir, _ = job_paths(spec, job)
    resume = job.absolute(spec.resume_from_checkpoint) if spec.resume_from_checkpoint else checkpoint_dir
    job_spec = spec.model_copy(update={"run_dir": run_dir, "checkpoint_dir": checkpoint_dir,
                                       "resume_from_checkpoint": resume})
    return job_spec.to_cli_args()


def network_env(job: SlurmJob) -> list[tuple[str, str]]:
    """NCCL/EFA variables for the job's nodes, in the order they are written."""
    info = job.instance
    if not job.uses_gpus:
        return []
    env = [
        ("NCCL_DEBUG", "WARN"),
        # A rank that hits a communication error aborts instead of hanging until the time
        # limit, so requeue / auto-resume can restart the job.
        ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
        # Bootstrap on the instance's own interface, never loopback or container bridges.
        ("NCCL_SOCKET_IFNAME", "^docker,lo,veth"),
    ]
    if info.has_efa:
        env += [("FI_PROVIDER", "efa"), ("FI_EFA_FORK_SAFE", "1")]
        if info.accelerator in _DEVICE_RDMA:
            env.append(("FI_EFA_USE_DEVICE_RDMA", "1"))
    return env


def _hardware_comment(job: SlurmJob) -> str:
    info = job.instance
    if job.instance_type and info.gpus:
        efa = f"{info.efa_interfaces} EFA interface{'s' if info.efa_interfaces != 1 else ''}" if info.has_efa else "no EFA"
        return f"# Network settings for {job.instance_type} ({info.gpus} x {info.accelerator} per node, {efa})"
    if job.uses_gpus:
        return f"# Network settings for {job.workers_per_node} GPUs per node, no EFA"
    return f"# CPU nodes: {job.workers_per_node} workers per node on gloo, no NCCL/EFA settings"


def _check_sbatch_values(job: SlurmJob) -> None:
    """Every value of an #SBATCH line, checked where it is written.

    The model validates them when it is built, but values filled in later from the
    submitting machine (its working directory, say) arrive through ``model_copy``, which
    skips validators; sbatch reads these lines itself, where a space or '#' ends the value
    and a newline would end the header (sbatch then ignores every #SBATCH line after it).
    """
    checks = [("job_name", job.job_name, validate.slurm_name_problem),
              ("partition", job.partition, validate.slurm_list_problem),
              ("account", job.account, validate.slurm_list_problem),
              ("time", job.time, validate.text_problem),
              ("workdir", job.workdir, validate.sbatch_path_problem)]
    checks += [("sbatch_options", option, validate.text_problem) for option in job.sbatch_options]
    # Not on #SBATCH lines, but filled in the same way: the interpreter srun starts (a leading
    # '-' would be an option of srun) and the names of exported variables.
    checks.append(("python", job.python, validate.path_problem))
    checks += [("env", name, validate.env_name_problem) for name in job.env]
    checks += [("env", value, validate.quoted_value_problem) for value in job.env.values()]
    checks += [("env_setup", line, validate.quoted_value_problem) for line in job.env_setup]
    for name, value, check in checks:
        problem = check(value) if value is not None else None
        if problem:
            raise ConfigError(f"[slurm] {name} {problem} (got {validate.shown(value)})",
                              f"fix {name} in the [slurm] table or its flag")


def _sbatch_lines(job: SlurmJob, run_dir: str) -> list[str]:
    _check_sbatch_values(job)
    lines = [f"--job-name={job.job_name}", f"--nodes={job.nodes}", "--ntasks-per-node=1"]
    if job.exclusive:
        lines.append("--exclusive")
    for flag, value in (("partition", job.partition), ("time", job.time), ("account", job.account)):
        if value:
            lines.append(f"--{flag}={value}")
    if job.workdir:
        lines.append(f"--chdir={job.workdir}")
    lines += [f"--output={run_dir}/slurm-%j.out", f"--error={run_dir}/slurm-%j.err",
              # A requeued job keeps its id: append, so the log shows every attempt.
              "--open-mode=append"]
    lines.append("--requeue" if job.requeue else "--no-requeue")
    lines += job.sbatch_options
    return [f"#SBATCH {line}" for line in lines]


def _setup_lines(lines: list[str]) -> list[str]:
    """The user's setup lines; sourced files live on the cluster, where shellcheck cannot follow them."""
    out = []
    for line in lines:
        if line.lstrip().startswith(("source ", ". ")):
            out.append("# shellcheck source=/dev/null")
        out.append(line)
    return out


def _launch_command(spec: "TrainSpec", job: SlurmJob) -> list[str]:
    """The srun + torchrun command, one argument group per line."""
    launcher = [job.python, "-m", "torch.distributed.run"] if job.python else ["torchrun"]
    head = ["srun"] + (["--auto-resume=1"] if job.hyperpod else []) + launcher
    groups = [
        " ".join(shlex.quote(part) for part in head),
        '--nnodes "$SLURM_JOB_NUM_NODES"',
        f"--nproc_per_node {job.workers_per_node}",
        '--rdzv_id "$SLURM_JOB_ID"',
        "--rdzv_backend c10d",
        # $(hostname) is the first node of *this* allocation: after a requeue or a node
        # replacement the rendezvous moves with it.
        f'--rdzv_endpoint "$(hostname):{job.rdzv_port}"',
        "-m llamapod worker",
    ]
    train_args = job_train_args(spec, job)
    for arg in train_args:
        validate.require(validate.quoted_value_problem(arg), arg, f"the trainer flag {arg.split('=', 1)[0]}",
                         "remove NUL characters and undecodable bytes from the value")
    groups += [shlex.quote(arg) for arg in train_args]
    return [groups[0] + " \\"] + [f"{_INDENT}{g} \\" for g in groups[1:-1]] + [f"{_INDENT}{groups[-1]}"]


def render_sbatch(spec: "TrainSpec", job: SlurmJob) -> str:
    """The sbatch script that trains ``spec`` as ``job``."""
    run_dir, checkpoint_dir, script_path = job_paths(spec, job)
    out = [
        "#!/bin/bash",
        "# Llama training job written by `llamapod train --slurm`. Edit it freely, then",
        f"# submit it with `sbatch {script_path}`; follow it with `llamapod logs JOB -f`.",
        f"# Checkpoints go to {checkpoint_dir} and the job resumes from the newest",
        "# complete one there, so a requeued or auto-resumed job continues where it stopped.",
        *_sbatch_lines(job, run_dir),
        "",
    ]
    if job.workdir:
        # Where --chdir is missing on a node, Slurm starts the job in /tmp and says so only in the log.
        workdir = shlex.quote(job.workdir)
        out += [f'if [ "$PWD" = /tmp ] && [ ! -d {workdir} ]; then',
                "    printf 'llamapod: the working folder %s (workdir in [slurm], --chdir) does not exist on %s: "
                f"create it on a file system every node mounts, or set workdir\\n' {workdir} \"$(hostname)\" >&2",
                "    exit 1", "fi"]
    if job.env_setup:
        # Activation scripts (conda's especially) read unset variables: `set -u` after them.
        out += ["set -eo pipefail", "", "# Software environment", *_setup_lines(job.env_setup), "set -u"]
    else:
        out.append("set -euo pipefail")
    network = dict(network_env(job))
    # A variable set in [slurm] env replaces the default in place rather than exporting it twice.
    network.update({name: value for name, value in job.env.items() if name in network})
    extra = {name: value for name, value in job.env.items() if name not in network}
    out += ["", _hardware_comment(job)]
    out += [f"export {name}={shlex.quote(value)}" for name, value in network.items()]
    if extra:
        out += ["", "# Environment from [slurm] env"]
        out += [f"export {name}={shlex.quote(value)}" for name, value in sorted(extra.items())]
    out += [
        f"mkdir -p {shlex.quote(checkpoint_dir)}",
        "",
        'echo "llamapod: job $SLURM_JOB_ID on $SLURM_JOB_NUM_NODES node(s) $SLURM_JOB_NODELIST,'
        ' attempt $((${SLURM_RESTART_COUNT:-0} + 1))"',
        *_launch_command(spec, job),
    ]
    return "\n".join(out) + "\n"

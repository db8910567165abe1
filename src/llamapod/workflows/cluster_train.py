"""A training run sent from the laptop to a cluster's head node.

Order matters for re-runs: the environment and the inputs are prepared before
anything is submitted, so an interrupted `llamapod train --cluster` leaves no job
behind, and running it again reuses the environment and the uploaded files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from llamapod import report
from llamapod.errors import ConfigError
from llamapod.workflows.environment import EnvOptions, RemoteEnv, RemoteLayout, local_wheel, prepare_environment
from llamapod.remote.transfer import ENV_RECORD, sync_path

if TYPE_CHECKING:
    from llamapod.config.train import TrainSpec
    from llamapod.workflows.connect import ClusterAccess
    from llamapod.remote.ssh import SshShell
    from llamapod.slurm.spec import SlurmJob

# TrainSpec fields that may name files on the laptop; each one that exists locally is
# uploaded into the run's inputs/ folder and the field rewritten to the cluster path.
INPUT_FIELDS = ("dataset", "tokenizer", "init_from", "resume_from_checkpoint")


@dataclass
class ClusterRun:
    """One `llamapod train --cluster` invocation: where it goes and what it sends."""

    access: "ClusterAccess"
    spec: "TrainSpec"
    job: "SlurmJob"
    config_path: Path | None
    layout: RemoteLayout
    name: str
    shell: "SshShell | None" = None
    uploads: list[tuple[Path, str]] = field(default_factory=list)

    @classmethod
    def create(cls, spec: "TrainSpec", *, cluster: str, config_path: Path | None,
               slurm_overrides: dict[str, Any]) -> "ClusterRun":
        from llamapod.workflows.connect import resolve_cluster
        from llamapod.slurm.spec import load_slurm_job

        access = resolve_cluster(cluster, config_path)
        layout = RemoteLayout(access.fsx_root)
        job = load_slurm_job(config_path, slurm_overrides)
        job = _hardware_from_cluster(access, job, explicit=_explicit_slurm_keys(config_path, slurm_overrides))
        name = run_name(spec, job)
        run_dir = layout.run_dir(name)
        # Caches (tokenizers, tokenized shards) go on the shared file system: every node
        # sees them, and HyperPod's root volume is small.
        env = {"LLAMAPOD_HOME": str(layout.root / "home"), **job.env}
        job = job.model_copy(update={"job_name": name, "output_dir": str(layout.runs), "workdir": str(run_dir),
                                     "hyperpod": True if access.via_ssm else job.hyperpod, "env": env})
        run = cls(access=access, spec=spec, job=job, config_path=config_path, layout=layout, name=name)
        run.spec, run.uploads = _rewrite_inputs(spec, run_dir)
        return run

    @property
    def run_dir(self) -> PurePosixPath:
        return self.layout.run_dir(self.name)

    def render(self, env: RemoteEnv | None) -> str:
        from llamapod.slurm.render import render_sbatch

        job = self.job
        if env is not None:
            job = job.model_copy(update={"python": env.python, "env_setup": [env.activate, *job.env_setup]})
        return render_sbatch(self.spec, job)

    def render_preview(self) -> str:
        lines = [f"# would run on cluster {self.access.name} in {self.run_dir}"]
        lines += [f"# would upload {local} -> {remote}" for local, remote in self.uploads]
        lines.append("# (the environment line is added once it exists on the cluster)")
        return "\n".join(lines) + "\n" + self.render(None)

    def launch(self) -> str:
        """Connect, prepare the environment, upload inputs, submit; returns the Slurm job id."""
        from llamapod.workflows.connect import connect
        from llamapod.slurm.jobs import SlurmJobs

        self.shell = connect(self.access)
        settings = self.access.settings
        options = EnvOptions(base_python=settings.base_python, system_site_packages=settings.system_site_packages,
                             pip_no_index=settings.pip_no_index, pip_args=tuple(settings.pip_args))
        env = prepare_environment(self.shell, self.layout, local_wheel(prebuilt=settings.wheel), options)
        self._upload_inputs()
        self.connected_shell.write_text(str(self.run_dir / ENV_RECORD), f"{env.path}\n")
        script = self.render(env)
        script_path = str(self.run_dir / "job.sbatch")
        self.shell.write_text(script_path, script)
        jobs = SlurmJobs(self.shell)
        jobs.preflight(self.job.nodes, self.job.partition)
        job_id = jobs.submit(script_path)
        report.success(f"submitted job {job_id} on {self.access.name}: {self.job.nodes} node(s), run {self.run_dir}")
        return job_id

    @property
    def connected_shell(self) -> "SshShell":
        if self.shell is None:
            raise RuntimeError("ClusterRun.launch() connects before anything uses the shell")
        return self.shell

    def _upload_inputs(self) -> None:
        shell = self.connected_shell
        if self.config_path is not None and Path(self.config_path).is_file():
            shell.put(Path(self.config_path), str(self.run_dir / "llamapod.toml"))
        for local, remote in self.uploads:
            report.info(f"syncing {local} to {remote}")
            if not sync_path(shell, local, remote):
                report.info(f"  unchanged since the last upload: kept {remote}")


def _explicit_slurm_keys(config_path: Path | None, overrides: dict[str, Any]) -> set[str]:
    from llamapod.config.files import load_table

    return set(load_table(config_path, "slurm")) | set(overrides)


def _hardware_from_cluster(access: "ClusterAccess", job: "SlurmJob", *, explicit: set[str]) -> "SlurmJob":
    """Instance type and node count from the cluster's worker group, unless the user chose them.

    Without this a GPU cluster would get the CPU default of 2 workers per node.
    """
    groups = access.worker_groups()
    if not groups or {"instance_type", "gpus_per_node"} & explicit and "nodes" in explicit:
        return job
    group = next((g for g in groups if job.partition and g["name"] == job.partition), groups[0])
    if len(groups) > 1 and not job.partition:
        report.info(f"using worker group {group['name']} ({group['instance_type']}); "
                "set --partition or --instance-type to choose another")
    updates: dict[str, Any] = {}
    if not {"instance_type", "gpus_per_node"} & explicit and group.get("instance_type"):
        updates["instance_type"] = group["instance_type"]
    if "nodes" not in explicit and group.get("count"):
        updates["nodes"] = int(group["count"])
    if not updates:
        return job
    from llamapod.slurm.spec import build_slurm_job

    return build_slurm_job({**job.model_dump(), **updates},
                           {key: f"cluster {access.name} worker group {group['name']}" for key in updates})


def run_name(spec: "TrainSpec", job: "SlurmJob") -> str:
    """The run's folder name on the cluster: the spec's run_dir name, else the Slurm job name."""
    if spec.run_dir:
        name = PurePosixPath(spec.run_dir).name
        from llamapod.slurm.spec import SlurmJob

        try:
            SlurmJob(job_name=name)
        except Exception:
            raise ConfigError(f"run_dir '{spec.run_dir}' cannot name a run on the cluster: its last part must be "
                              "letters, digits, '.', '_' or '-'", "choose a simpler --run_dir") from None
        return name
    return job.job_name


def _rewrite_inputs(spec: "TrainSpec", run_dir: PurePosixPath) -> tuple["TrainSpec", list[tuple[Path, str]]]:
    updates: dict[str, Any] = {"run_dir": None}
    uploads: list[tuple[Path, str]] = []
    for name in INPUT_FIELDS:
        value = getattr(spec, name, None)
        if not value:
            continue
        local = Path(value).expanduser()
        if not local.exists():
            continue  # a hub name (`allenai/c4`) or a path that already lives on the cluster
        remote = str(run_dir / "inputs" / name / local.resolve().name)
        uploads.append((local, remote))
        updates[name] = remote
    if spec.checkpoint_dir and not PurePosixPath(spec.checkpoint_dir).is_absolute():
        updates["checkpoint_dir"] = str(run_dir / spec.checkpoint_dir)
    return spec.model_copy(update=updates), uploads


def follow_job(run: ClusterRun, job_id: str) -> int:
    """Stream the job's output until it ends; 0 when it completed, else one line with the next step."""
    from llamapod.slurm.jobs import SlurmJobs, ended_on_cluster

    jobs = SlurmJobs(run.connected_shell)
    cluster = run.access.name
    job = jobs.follow_to_end(job_id, cluster)
    if job is None:
        return 130
    if not job.failed:
        return 0
    for line in jobs.error_tail(job, lines=10).splitlines():
        report.info(f"  | {line}")
    raise ended_on_cluster(job, cluster, "re-run: it resumes from the last checkpoint")

"""``llamapod data prepare --cluster NAME``: the tokenizing job sent from a laptop to a
cluster's head node, reaching it the way ``llamapod train --cluster`` does.

The environment on /fsx is prepared (or reused) and local inputs are synced before
anything is submitted, so an interrupted command leaves no job behind and a re-run
reuses both. On the cluster:
- a relative ``--out`` (and a relative source or tokenizer that is not a local path) lives
  under ``<fsx_root>/llamapod/data/``; an absolute one is used as written;
- a source or tokenizer that exists on this machine is uploaded to
  ``<fsx_root>/llamapod/data/inputs/``, unchanged uploads are not repeated;
- the job runs on every node of the worker group unless ``--nodes`` says otherwise; its
  script and logs go to ``<fsx_root>/llamapod/runs/<job name>/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable

from llamapod.workflows.environment import EnvOptions, RemoteEnv, RemoteLayout, local_wheel, prepare_environment
from llamapod.remote.transfer import sync_path
from llamapod.slurm.prepare_render import PrepareRequest, default_job_name, prepare_job_paths, render_prepare_sbatch

# A Hugging Face hub id (`allenai/c4`, `EleutherAI/gpt-neox-20b`, `wikitext`): passed on as it is.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w-]*(/[\w.-]+)?")

if TYPE_CHECKING:
    from llamapod.workflows.connect import ClusterAccess
    from llamapod.remote.ssh import SshShell
    from llamapod.slurm.spec import SlurmJob


def data_root(layout: RemoteLayout) -> PurePosixPath:
    return layout.root / "data"


def on_cluster(path: str, layout: RemoteLayout) -> str:
    """A cluster path: absolute as written, relative under the data folder."""
    return path if PurePosixPath(path).is_absolute() else str(data_root(layout) / path)


@dataclass
class ClusterPrepare:
    """One `llamapod data prepare --cluster` invocation: where it goes and what it sends."""

    access: "ClusterAccess"
    job: "SlurmJob"
    request: PrepareRequest
    layout: RemoteLayout
    uploads: list[tuple[Path, str]] = field(default_factory=list)
    shell: "SshShell | None" = None

    @classmethod
    def create(cls, request: PrepareRequest, *, cluster: str, config_path: Path | None,
               slurm_overrides: dict[str, Any]) -> "ClusterPrepare":
        from llamapod.config.files import load_table
        from llamapod.workflows.connect import resolve_cluster
        from llamapod.slurm.spec import build_slurm_job, load_slurm_job

        access = resolve_cluster(cluster, config_path)
        layout = RemoteLayout(access.fsx_root)
        request, uploads = _cluster_paths(request, layout)
        explicit = set(load_table(config_path, "slurm")) | set(slurm_overrides)
        values = load_slurm_job(config_path, slurm_overrides).model_dump()
        if "job_name" not in explicit:
            values["job_name"] = default_job_name(request.out)
        if "nodes" not in explicit:
            values["nodes"] = _worker_nodes(access, values.get("partition")) or values["nodes"]
        run_dir = layout.run_dir(values["job_name"])
        # Caches (the built-in tokenizer) go on the shared file system, where every node sees them.
        values.update(output_dir=str(layout.runs), workdir=str(run_dir),
                      env={"LLAMAPOD_HOME": str(layout.root / "home"), **values["env"]})
        return cls(access=access, job=build_slurm_job(values), request=request, layout=layout, uploads=uploads)

    @property
    def script_path(self) -> str:
        return prepare_job_paths(self.job).script

    def render(self, env: RemoteEnv | None) -> str:
        job = self.job
        if env is not None:
            job = job.model_copy(update={"python": env.python, "env_setup": [env.activate, *job.env_setup]})
        return render_prepare_sbatch(self.request, job)

    def render_preview(self) -> str:
        lines = [f"# would run on cluster {self.access.name}: {self.job.nodes} node(s), output {self.request.out}"]
        lines += [f"# would upload {local} -> {remote}" for local, remote in self.uploads]
        lines.append("# (the environment line is added once it exists on the cluster)")
        return "\n".join(lines) + "\n" + self.render(None)

    def launch(self, notify: Callable[[str], None]) -> str:
        """Connect, prepare the environment, upload inputs, submit; returns the Slurm job id."""
        from llamapod.workflows.connect import connect
        from llamapod.slurm.jobs import SlurmJobs

        self.shell = connect(self.access)
        settings = self.access.settings
        options = EnvOptions(base_python=settings.base_python, system_site_packages=settings.system_site_packages,
                             pip_no_index=settings.pip_no_index, pip_args=tuple(settings.pip_args))
        env = prepare_environment(self.shell, self.layout, local_wheel(prebuilt=settings.wheel), options)
        for local, remote in self.uploads:
            notify(f"syncing {local} to {remote}")
            if not sync_path(self.shell, local, remote):
                notify(f"  unchanged since the last upload: kept {remote}")
        jobs = SlurmJobs(self.shell)
        jobs.preflight(self.job.nodes, self.job.partition)
        running = jobs.active_job_in(prepare_job_paths(self.job).run_dir)
        if running is not None:
            from llamapod.errors import SlurmError

            raise SlurmError(f"job {running.job_id} ({running.name}) is already {running.state} for {self.request.out}",
                             f"follow it with `llamapod logs --cluster {self.access.name} {running.job_id} -f`")
        self.shell.write_text(self.script_path, self.render(env))
        return jobs.submit(self.script_path)


def _worker_nodes(access: "ClusterAccess", partition: str | None) -> int | None:
    """Every node of the worker group the job runs in: tokenizing uses them all."""
    groups = access.worker_groups()
    group = next((g for g in groups if partition and g["name"] == partition), groups[0] if groups else None)
    return int(group["count"]) if group and group.get("count") else None


def _cluster_paths(request: PrepareRequest, layout: RemoteLayout) -> tuple[PrepareRequest, list[tuple[Path, str]]]:
    """The request with cluster paths, and the local files to upload for it."""
    uploads: list[tuple[Path, str]] = []
    updates: dict[str, Any] = {"out": on_cluster(request.out, layout)}
    for name in ("source", "tokenizer"):
        value = getattr(request, name)
        if not value:
            continue
        local = Path(value).expanduser()
        if local.exists():
            remote = str(data_root(layout) / "inputs" / local.resolve().name)
            uploads.append((local, remote))
            updates[name] = remote
        elif not _HUB_ID.fullmatch(value):
            updates[name] = on_cluster(value, layout)
    return replace(request, **updates), uploads

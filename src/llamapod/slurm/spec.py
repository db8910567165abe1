"""How a training run is laid out on Slurm: the ``[slurm]`` table of ``llamapod.toml``.

``SlurmJob`` holds what the sbatch script needs beyond the training settings: how many
nodes of which instance type, where the job writes, how the job's Python environment is
set up. The launch flags of ``llamapod train`` (--nodes --partition --time --account
--instance-type) override the table. Torch-free, so it validates on any login node.
"""

from __future__ import annotations

import difflib
import re
from pathlib import PurePosixPath
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llamapod import validate
from llamapod.errors import ConfigError
from llamapod.instances import InstanceInfo, instance_info, known_instance_types

# Worker processes per node when the nodes have no GPUs: two, so a CPU job still
# exercises the same sharded, multi-process code path as a GPU job.
CPU_WORKERS_PER_NODE = 2

DEFAULT_RDZV_PORT = 29500

# Slurm's --time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S, and "unlimited" (matched whole,
# like every grammar in llamapod.validate).
_TIME = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|unlimited|infinite", re.IGNORECASE)

# Flags of `llamapod train` that fill [slurm] settings, for messages.
SLURM_MAX_COUNT = 2**32 - 3

FLAG_NAMES = {"nodes": "--nodes", "partition": "--partition", "time": "--time", "account": "--account",
              "instance_type": "--instance-type"}


class SlurmJob(BaseModel):
    """Everything about a Slurm job except the training settings (those are a TrainSpec)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    job_name: str = Field("llamapod", description="Slurm job name; also names the run folder <output_dir>/<job_name>")
    # Numbers and flags are strict: in TOML `nodes = true` or `exclusive = 1` is a mistake.
    # Slurm counts nodes in 32 bits (0xfffffffe is its "no value"): a larger count never reaches sbatch.
    nodes: int = Field(1, ge=1, le=SLURM_MAX_COUNT, strict=True, description="number of nodes")
    partition: Optional[str] = Field(None, description="partition (default: the cluster's default partition)")
    time: Optional[str] = Field(None, description="time limit, e.g. 4:00:00 or 2-00:00:00")
    account: Optional[str] = Field(None, description="account to charge")
    instance_type: Optional[str] = Field(None, description="instance type of the nodes, e.g. ml.g5.48xlarge "
                                                           "(sets GPUs per node and NCCL/EFA settings; none = CPU nodes)")
    gpus_per_node: Optional[int] = Field(None, ge=1, le=SLURM_MAX_COUNT, strict=True,
                                         description="worker processes per node (default: the instance "
                                                     f"type's GPUs, or {CPU_WORKERS_PER_NODE} on CPU nodes)")
    hyperpod: Optional[bool] = Field(None, strict=True, description="SageMaker HyperPod: srun --auto-resume=1 "
                                                       "(default: detected from /opt/sagemaker_cluster)")
    rdzv_port: int = Field(DEFAULT_RDZV_PORT, ge=1024, le=65535, strict=True,
                           description="torchrun rendezvous port on the first node")
    output_dir: str = Field("runs", description="shared folder that holds one run folder per job name")
    workdir: Optional[str] = Field(None, description="the job's working directory (default: where it is submitted from)")
    env_setup: list[str] = Field(default_factory=list,
                                 description="shell lines run before torchrun (e.g. activating a virtual environment)")
    python: Optional[str] = Field(None, description="Python interpreter that runs torchrun and the trainer "
                                                    "(default: the one running llamapod when submitting on "
                                                    "this machine, else torchrun from PATH)")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables (override the defaults)")
    exclusive: bool = Field(True, strict=True, description="give the job whole nodes")
    requeue: bool = Field(True, strict=True,
                          description="let Slurm requeue the job after a node failure or `scontrol requeue`")
    sbatch_options: list[str] = Field(default_factory=list, description="more #SBATCH options, e.g. --mem=0")

    @field_validator("job_name")
    @classmethod
    def _job_name(cls, value: str) -> str:
        if validate.slurm_name_problem(value):
            raise ValueError("must be letters, digits, '.', '_' or '-' (at most 64), starting with a letter or digit")
        return value

    @field_validator("partition", "account")
    @classmethod
    def _slurm_name(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and validate.slurm_list_problem(value):
            raise ValueError("must be letters, digits, '_', '.', ',' or '-'")
        return value

    @field_validator("time")
    @classmethod
    def _time_limit(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not _TIME.fullmatch(value.strip()):
            raise ValueError("must be a Slurm time limit: MINUTES, HH:MM:SS, DAYS-HH:MM:SS or unlimited")
        return value.strip() if value is not None else None

    @field_validator("instance_type")
    @classmethod
    def _instance_type(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return None
        name = value.strip()
        # Plain EC2 names (ParallelCluster, self-managed Slurm) mean the same hardware.
        if not name.startswith("ml."):
            name = f"ml.{name}"
        if name not in known_instance_types():
            close = difflib.get_close_matches(name, known_instance_types(), n=1, cutoff=0.8)
            suggestion = f"; did you mean {close[0]}?" if close else "; set gpus_per_node for other hardware"
            raise ValueError(f"unknown instance type{suggestion}")
        return name

    @field_validator("output_dir", "workdir")
    @classmethod
    def _sbatch_path(cls, value: Optional[str]) -> Optional[str]:
        # Both end up on #SBATCH lines (--chdir, --output), which sbatch parses itself.
        problem = validate.sbatch_path_problem(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("python")
    @classmethod
    def _interpreter(cls, value: Optional[str]) -> Optional[str]:
        # Quoted in the srun command; a leading '-' would still be an option of srun.
        problem = validate.path_problem(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("env_setup", mode="before")
    @classmethod
    def _setup_lines(cls, value: Any) -> Any:
        # A TOML multi-line string reads more naturally than a list for shell code.
        if isinstance(value, str):
            return [line for line in value.splitlines() if line.strip()]
        return value

    @field_validator("env_setup")
    @classmethod
    def _setup_code(cls, value: list[str]) -> list[str]:
        # Shell code by design (it runs after every #SBATCH line); only a NUL byte, which
        # bash cannot read, is refused.
        if any("\x00" in line for line in value):
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value if validate.env_name_problem(name)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a valid environment variable name")
        values = [text for text in value.values() if validate.text_problem(text)]
        if values:
            raise ValueError(f"the value {values[0]!r} must not contain control characters such as newlines")
        return value

    @field_validator("sbatch_options")
    @classmethod
    def _sbatch_options(cls, value: list[str]) -> list[str]:
        for option in value:
            if not option.startswith("-") or validate.text_problem(option):
                raise ValueError(f"{option!r} must be one sbatch option starting with '-', e.g. --mem=0")
        return value

    # ---- derived values --------------------------------------------------------

    @property
    def instance(self) -> InstanceInfo:
        return instance_info(self.instance_type) if self.instance_type else InstanceInfo()

    @property
    def workers_per_node(self) -> int:
        if self.gpus_per_node is not None:
            return self.gpus_per_node
        return self.instance.gpus or CPU_WORKERS_PER_NODE

    @property
    def uses_gpus(self) -> bool:
        # gpus_per_node without an instance type: a GPU cluster llamapod has no table entry for.
        return self.instance.gpus > 0 or self.gpus_per_node is not None

    def absolute(self, path: str) -> str:
        """``path`` made absolute against the job's working directory (when one is known)."""
        if PurePosixPath(path).is_absolute() or self.workdir is None:
            return path
        return str(PurePosixPath(self.workdir) / path)

    @property
    def run_dir(self) -> str:
        """One folder per job name, not per job id, so a resubmitted or requeued job finds its checkpoints."""
        return str(PurePosixPath(self.absolute(self.output_dir)) / self.job_name)


def load_slurm_job(config_path, overrides: dict[str, Any] | None = None) -> SlurmJob:
    """The ``[slurm]`` table of ``config_path`` (may be None) with ``overrides`` (flags) applied."""
    from llamapod.config.files import load_table

    table = load_table(config_path, "slurm")
    overrides = overrides or {}
    sources = {key: f"[slurm] {key} in {config_path}" for key in table}
    for key in overrides:
        sources[key] = FLAG_NAMES.get(key, f"slurm setting {key}")
    for key in table:
        if key not in SlurmJob.model_fields:
            close = difflib.get_close_matches(str(key), list(SlurmJob.model_fields), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else "see docs/slurm.md for the [slurm] settings"
            raise ConfigError(f"config file {config_path} [slurm]: unknown setting '{key}'", hint)
    return build_slurm_job({**table, **overrides}, sources)


def build_slurm_job(values: dict[str, Any], sources: dict[str, str] | None = None) -> SlurmJob:
    """Validate ``values`` into a SlurmJob; every problem is reported, the first as the message."""
    from llamapod.config.files import format_validation_errors

    sources = sources or {}
    try:
        return SlurmJob(**values)
    except ValidationError as exc:
        lines = format_validation_errors(exc)
        problems = [_with_source(line, err, sources) for line, err in zip(lines, exc.errors())]
        first_field = str(exc.errors()[0].get("loc", ("",))[0])
        flag = sources.get(first_field, "")
        hint = (f"fix {flag}" if flag.startswith("--") else
                "fix the [slurm] table of llamapod.toml (see docs/slurm.md)")
        raise ConfigError(problems[0], hint, problems=problems[1:]) from None


def _with_source(line: str, err: dict, sources: dict[str, str]) -> str:
    loc = [str(p) for p in err.get("loc", ())]
    if not loc:
        return line
    name = loc[0]
    source = sources.get(name, f"[slurm] {name}")
    rest = line.split(":", 1)[1].strip() if ":" in line else line
    rest = rest.replace("Input should be ", "must be ")
    rest = rest.replace("greater than or equal to ", ">= ").replace("less than or equal to ", "<= ")
    return f"{source}: {rest}"

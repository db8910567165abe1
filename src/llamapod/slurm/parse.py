"""What Slurm's commands print, as llamapod's JobInfo: ``scontrol show job -o`` records,
``sacct -P`` lines, job ids and the trainer's metrics lines. No commands run here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from llamapod import validate
from llamapod.errors import SlurmError

# States after which a job never runs again (a requeued job passes through PENDING instead).
ENDED_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                          "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"})

JOB_ID = re.compile(r"\d+(_\d+)?")  # matched whole (fullmatch): "12\n" is not a job id
# A trainer's `step n/N | loss ...` line, or a tokenizing job's `prepare | parts | tokens | ETA` line.
_METRICS = re.compile(r"((?:step \d+/\d+|prepare) \|.*)$")
# `scontrol show job -o` prints Key=Value pairs; keys may hold ':' or '/' (ReqB:S:C:T, AllocNode:Sid).
_JOB_NAME = re.compile(r"(?:^|\s)JobName=(.*) UserId=[^\s()]*\(\d+\) ")
_KEY = re.compile(r"(?:^|\s)([A-Za-z][\w:/]*)=")
SACCT_FIELDS = ("JobID", "JobName", "State", "Elapsed", "NNodes", "NodeList", "Reason", "Partition",
                 "ExitCode", "WorkDir", "User")

@dataclass(frozen=True)
class JobInfo:
    job_id: str
    name: str
    state: str
    elapsed: str = ""
    nodes: int = 0
    node_list: str = ""
    reason: str = ""
    partition: str = ""
    stdout: Optional[str] = None
    stderr: Optional[str] = None
    exit_code: str = ""
    restarts: int = 0
    user: str = ""

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES

    @property
    def failed(self) -> bool:
        return self.ended and self.state != "COMPLETED"

    @property
    def log_paths(self) -> list[str]:
        """stdout, then stderr when it is a different file."""
        paths = [p for p in (self.stdout, self.stderr) if p]
        return list(dict.fromkeys(paths))


def check_job_id(job_id: str) -> str:
    job_id = str(job_id).strip()
    # Job 0 does not exist: `scontrol show job 0` shows every job instead.
    if not JOB_ID.fullmatch(job_id) or int(job_id.split("_")[0]) == 0:
        raise SlurmError(f"{validate.shown(job_id)} is not a Slurm job id",
                         "job ids are numbers, as printed by `llamapod train --slurm` and `llamapod jobs`")
    return job_id


def last_metrics_line(text: str) -> Optional[str]:
    """The newest `step n/N | loss ...` line the trainer logged (or `prepare | ...` line of a
    tokenizing job), without any prefix."""
    for line in reversed(text.splitlines()):
        match = _METRICS.search(line.strip())
        if match:
            return match.group(1)
    return None


def parse_scontrol_record(line: str) -> dict[str, str]:
    """One line of `scontrol show job -o` as a dict (values may contain spaces)."""
    # A job's name is free text ("sweep lr=3e-4"): read it up to the real owner field and take it
    # out first, so that Key=Value words inside it are not taken for fields.
    name = _JOB_NAME.search(line)
    if name:
        line = line[:name.start(1)] + line[name.end(1):]
    matches = list(_KEY.finditer(line))
    record = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        record[match.group(1)] = line[match.end():end].strip()
    if name:
        record["JobName"] = name.group(1)
    return record


def job_from_scontrol(record: dict[str, str]) -> JobInfo:
    def path(key: str) -> Optional[str]:
        value = record.get(key, "")
        return value if value and value != "(null)" else None

    nodes_text = record.get("NumNodes", "0").split("-")[0]
    node_list = record.get("NodeList", "")
    return JobInfo(
        job_id=record.get("JobId", ""),
        name=record.get("JobName", ""),
        state=record.get("JobState", "UNKNOWN").split()[0],
        elapsed=record.get("RunTime", ""),
        nodes=int(nodes_text) if nodes_text.isdigit() else 0,
        node_list="" if node_list == "(null)" else node_list,
        reason=record.get("Reason", "None"),
        partition=record.get("Partition", ""),
        stdout=path("StdOut"),
        stderr=path("StdErr"),
        exit_code=record.get("ExitCode", ""),
        restarts=int(record.get("Restarts", "0") or 0),
        user=record.get("UserId", "").split("(")[0],
    )


def job_from_sacct(line: str) -> JobInfo:
    """One line of `sacct -P -n -X -o <SACCT_FIELDS>` ('|'-separated, in that order).

    sacct before 23.02 has no StdOut field; Slurm's default `slurm-<id>.out` in the job's
    working directory is the best guess for a job that ended long ago.
    """
    fields = dict(zip(SACCT_FIELDS, line.split("|")))
    workdir = fields.get("WorkDir", "")
    default_log = f"{workdir}/slurm-{fields['JobID']}.out" if workdir else None
    nodes = fields.get("NNodes", "0")
    return JobInfo(
        job_id=fields["JobID"],
        name=fields.get("JobName", ""),
        state=fields.get("State", "UNKNOWN").split()[0],
        elapsed=fields.get("Elapsed", ""),
        nodes=int(nodes) if nodes.isdigit() else 0,
        node_list=fields.get("NodeList", ""),
        reason=fields.get("Reason", ""),
        partition=fields.get("Partition", ""),
        stdout=default_log,
        stderr=default_log,
        exit_code=fields.get("ExitCode", ""),
        user=fields.get("User", ""),
    )

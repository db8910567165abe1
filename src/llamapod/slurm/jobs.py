"""Submit, inspect, follow and cancel Slurm jobs through a ``Shell``.

The same code runs on a head node (LocalShell) and from a laptop (SshShell), so every
Slurm interaction is a command line plus parsing of its output: ``sbatch --parsable``,
``scontrol show job -o`` (pending, running and recently ended jobs, with their log
paths), ``sacct`` for older jobs where the cluster keeps accounting, ``scancel``, and
plain file reads for the logs. Slurm's terse errors become one line with a next step.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Iterator, Optional

from llamapod import report, validate
from llamapod.errors import RemoteError, SlurmError
from llamapod.remote.shell import CommandResult, Shell
from llamapod.slurm.parse import (  # noqa: F401 (the parsers stay importable from here)
    ENDED_STATES, JOB_ID, SACCT_FIELDS, JobInfo, check_job_id, job_from_sacct, job_from_scontrol,
    last_metrics_line, parse_scontrol_record)

COMMAND_TIMEOUT_S = 60.0
# sinfo's short node states (%t) that take no new jobs.
_UNUSABLE_NODE_STATES = frozenset({"down", "drain", "drng", "fail", "failg", "inval", "futr", "maint"})


# sbatch's rejections, by the words Slurm uses -> (our message, hint).
_SBATCH_REJECTIONS = (
    ("Invalid partition name", "Slurm has no such partition",
     "pick one of the partitions `sinfo` lists (--partition or partition in [slurm])"),
    ("Node count specification invalid", "the job asks for more nodes than the partition has",
     "lower --nodes (or nodes in [slurm]) to what `sinfo` shows, or pick a bigger partition"),
    ("Requested node configuration is not available", "no nodes of the partition match what the job asks for",
     "check --nodes and --partition against `sinfo`"),
    ("Invalid account", "the account is not valid for this partition",
     "check --account (or account in [slurm]) with `sacctmgr show assoc user=$USER`"),
    ("Required partition not available", "the partition is inactive or draining and takes no jobs",
     "pick another partition from `sinfo` (--partition or partition in [slurm]), or ask an operator"),
    ("Invalid qos", "the QOS is not valid for this user, account or partition",
     "check the --qos in sbatch_options with `sacctmgr show assoc user=$USER format=account,qos`"),
    ("accounting/QOS policy", "the job exceeds a limit of its account or QOS",
     "ask for fewer nodes or less time, or check your limits with `sacctmgr show assoc user=$USER`"),
    ("time limit", "the time limit exceeds what the partition allows",
     "lower --time (or time in [slurm]); `sinfo -o '%P %l'` shows each partition's limit"),
)


def _job_order(job: JobInfo) -> list[int]:
    """Numeric order of ids as sacct prints them: 12, 12_3, 12_[4-9] (pending array tasks), 13+0 (het jobs)."""
    return [int(number) for number in re.findall(r"\d+", job.job_id)]


class SlurmJobs:
    """Slurm through a Shell: the only place llamapod runs Slurm commands."""

    def __init__(self, shell: Shell, poll_interval_s: float = 1.0):
        self.shell = shell
        self.poll_interval_s = poll_interval_s
        self._checked: set[str] = set()
        self._user: Optional[str] = None
        self._accounting: Optional[bool] = None

    # ---- running Slurm commands --------------------------------------------------

    def _require(self, program: str) -> None:
        if program in self._checked:
            return
        if self.shell.which(program) is None:
            raise SlurmError(f"Slurm is not installed on {self.shell.where}: `{program}` is not on PATH",
                             "run this on the cluster's login or head node, or from a laptop with --cluster NAME")
        if not self._checked:
            # Slurm's commands retry a missing configuration file for a minute before they fail.
            try:
                probe = self.shell.run(["sh", "-c", 'if [ -n "${SLURM_CONF:-}" ] && [ ! -e "$SLURM_CONF" ]; '
                                        'then echo "$SLURM_CONF"; fi'], timeout=COMMAND_TIMEOUT_S)
            except RemoteError:
                probe = None  # no sh: Slurm's own commands say what is wrong
            if probe is not None and probe.ok and probe.stdout.strip():
                raise SlurmError(f"SLURM_CONF names {probe.stdout.strip()}, which does not exist on {self.shell.where}",
                                 "point SLURM_CONF at the cluster's slurm.conf, or unset it")
        self._checked.add(program)

    def _run(self, argv: list[str]) -> CommandResult:
        self._require(argv[0])
        result = self.shell.run(argv, timeout=COMMAND_TIMEOUT_S)
        text = result.stderr + result.stdout
        if not result.ok and ("Unable to contact slurm controller" in text or "Zero Bytes were transmitted" in text):
            raise SlurmError(f"cannot reach the Slurm controller from {self.shell.where}",
                             "check that slurmctld is running: `scontrol ping`")
        if not result.ok and "Unable to process configuration file" in text:
            raise SlurmError(f"Slurm on {self.shell.where} has no usable configuration (slurm.conf)",
                             "run this on a node of the cluster, set SLURM_CONF to its slurm.conf, or use "
                             "--cluster NAME from a laptop")
        return result

    @staticmethod
    def _slurm_message(result: CommandResult) -> str:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit code {result.returncode}"
        for prefix in ("sbatch: error: ", "scancel: error: ", "sinfo: error: ", "error: "):
            last = last.removeprefix(prefix)
        return last.removeprefix("Batch job submission failed: ")

    # ---- submit ------------------------------------------------------------------

    def preflight(self, nodes: int, partition: Optional[str]) -> None:
        """Fail before sbatch when the partition is unknown or too small.

        Clusters without EnforcePartLimits accept such a job and leave it pending forever
        (reason PartitionNodeLimit), so the check cannot be left to sbatch alone.
        """
        result = self._run(["sinfo", "-h", "-o", "%P %D %a %t"])
        if not result.ok:
            raise SlurmError(f"sinfo failed on {self.shell.where}: {self._slurm_message(result)}",
                             "check that Slurm works here: `sinfo`")
        sizes: dict[str, int] = {}
        usable: dict[str, int] = {}
        availability: dict[str, str] = {}
        default = None
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) < 2 or not parts[1].isdigit():
                continue
            name = parts[0].rstrip("*")
            if parts[0].endswith("*"):
                default = name
            sizes[name] = sizes.get(name, 0) + int(parts[1])
            availability[name] = parts[2] if len(parts) > 2 else "up"
            node_state = parts[3].rstrip("*~#!%$@^-+") if len(parts) > 3 else "idle"
            usable[name] = usable.get(name, 0) + (0 if node_state in _UNUSABLE_NODE_STATES else int(parts[1]))
        listing = ", ".join(f"{name} ({count} node{'s' if count != 1 else ''})" for name, count in sizes.items())
        target = partition or default
        if partition and partition not in sizes:
            raise SlurmError(f"Slurm has no partition '{partition}'",
                             f"partitions here: {listing or 'none'}; set --partition (or partition in [slurm])")
        if target and availability.get(target, "up") != "up":
            # A down partition queues the job and never starts it (reason PartitionDown).
            up = ", ".join(name for name, state in availability.items() if state == "up")
            raise SlurmError(f"partition '{target}' is {availability[target]}: "
                             "Slurm would queue the job but not start it",
                             f"pick a partition that is up ({up or 'none is'}) with --partition (or partition "
                             "in [slurm]), or ask an operator to bring it up")
        if target and target in sizes and nodes > sizes[target]:
            raise SlurmError(f"the job asks for {nodes} nodes but partition '{target}' has {sizes[target]}",
                             f"lower --nodes (or nodes in [slurm]) to {sizes[target]} or less; partitions: {listing}")
        if target and target in usable and nodes > usable[target]:
            # Down or drained nodes take no jobs: the job would wait until an operator brings them back.
            raise SlurmError(f"the job asks for {nodes} nodes but only {usable[target]} of the {sizes[target]} nodes "
                             f"of partition '{target}' take jobs (the others are down or drained)",
                             f"lower --nodes to {usable[target]} or less, pick another partition, or ask an operator; "
                             "`sinfo -R` shows why nodes are down")

    def submit(self, script_path: str) -> str:
        """``sbatch --parsable`` the script; returns the job id."""
        result = self._run(["sbatch", "--parsable", script_path])
        if not result.ok:
            detail = self._slurm_message(result)
            for words, message, hint in _SBATCH_REJECTIONS:
                if words.lower() in detail.lower():
                    raise SlurmError(f"sbatch rejected the job: {message} ({detail})", hint)
            raise SlurmError(f"sbatch rejected the job: {detail}", f"check the #SBATCH lines of {script_path}")
        job_id = result.stdout.strip().split(";")[0]
        if not JOB_ID.fullmatch(job_id):
            raise SlurmError(f"sbatch printed no job id (got {result.stdout.strip()!r})",
                             "check `squeue --me` for the job")
        return job_id

    def write_and_submit(self, script_path: str, text: str) -> str:
        """Write the script and submit it; where sbatch refuses it, the script that was there before stays."""
        backup = f"{script_path}.previous"
        had_one = self.shell.exists(script_path)
        if had_one:
            self.shell.run(["cp", "-p", "--", script_path, backup], timeout=COMMAND_TIMEOUT_S, check=True)
        self.shell.write_text(script_path, text, mode=0o755)
        try:
            job_id = self.submit(script_path)
        except BaseException:
            undo = ["mv", "-f", "--", backup, script_path] if had_one else ["rm", "-f", "--", script_path]
            self.shell.run(undo, timeout=COMMAND_TIMEOUT_S)
            raise
        if had_one:
            self.shell.run(["rm", "-f", "--", backup], timeout=COMMAND_TIMEOUT_S)
        return job_id

    # ---- inspect -----------------------------------------------------------------

    def _current_user(self) -> str:
        if self._user is None:
            self._user = self.shell.run(["id", "-un"], timeout=COMMAND_TIMEOUT_S).stdout.strip()
        return self._user

    def _sacct(self, args: list[str]) -> list[JobInfo]:
        """Jobs from accounting; [] where the cluster keeps none (sacct then says so)."""
        if self._accounting is False or self.shell.which("sacct") is None:
            return []
        result = self._run(["sacct", "-P", "-n", "-X", "-o", ",".join(SACCT_FIELDS), *args])
        if not result.ok or "accounting storage is disabled" in (result.stdout + result.stderr):
            self._accounting = False
            return []
        self._accounting = True
        return [job_from_sacct(line) for line in result.stdout.splitlines() if line.count("|") >= 2]

    def info(self, job_id: str) -> JobInfo:
        """State, elapsed time, nodes, Slurm's reason and log paths of one job."""
        job_id = check_job_id(job_id)
        result = self._run(["scontrol", "show", "job", "-o", job_id])
        if result.ok and result.stdout.strip():
            job = job_from_scontrol(parse_scontrol_record(result.stdout.strip().splitlines()[0]))
            # A task of an array (12_3) may share one record with its pending siblings (JobId=12
            # ArrayTaskId=1-5): keep the task's own id, so that cancel stops that task only.
            return dataclasses.replace(job, job_id=job_id) if "_" in job_id else job
        message = self._slurm_message(result)
        if "Invalid job id" not in message and "not found" not in message:
            raise SlurmError(f"scontrol could not show job {job_id}: {message}", "check `scontrol ping`")
        for job in self._sacct(["-j", job_id]):
            if job.job_id == job_id:
                return job
        raise SlurmError(f"Slurm has no job {job_id}",
                         "list the jobs it knows with `llamapod jobs` (without accounting, Slurm forgets "
                         "ended jobs after a few minutes)")

    def list(self, all_users: bool = False) -> list[JobInfo]:
        """Pending, running and recently ended jobs (older ones too where accounting exists)."""
        result = self._run(["scontrol", "show", "job", "-o"])
        if not result.ok:
            raise SlurmError(f"scontrol could not list jobs: {self._slurm_message(result)}", "check `scontrol ping`")
        jobs = {}
        for line in result.stdout.splitlines():
            if "JobId=" in line:
                job = job_from_scontrol(parse_scontrol_record(line))
                jobs[job.job_id] = job
        for job in self._sacct(["--starttime", "now-1days"] + ([] if all_users else ["--user", self._current_user()])):
            jobs.setdefault(job.job_id, job)
        if not all_users:
            user = self._current_user()
            jobs = {k: v for k, v in jobs.items() if v.user == user}
        return sorted(jobs.values(), key=_job_order)

    def active_job_in(self, run_dir: str) -> Optional[JobInfo]:
        """A pending or running job of this user that writes its logs into ``run_dir``, if any."""
        prefix = run_dir.rstrip("/") + "/"
        for job in self.list():
            if not job.ended and any(path.startswith(prefix) for path in job.log_paths):
                return job
        return None

    # ---- logs --------------------------------------------------------------------

    def _read(self, path: str, tail: Optional[int], job: Optional[JobInfo] = None) -> str:
        try:
            if tail is None:
                return self.shell.read_text(path)
            return self.shell.run(["tail", "-n", str(tail), validate.shell_operand(path)], timeout=COMMAND_TIMEOUT_S,
                                  check=True).stdout
        except RemoteError as exc:
            if job is None:
                raise
            owner = f" (it runs as {job.user})" if job.user and job.user != self._current_user() else ""
            raise SlurmError(f"cannot read the log of job {job.job_id}: {path}{owner}",
                             "logs are readable by the job's owner; run this as that user, or ask them "
                             f"(`ls -l {path}` shows its owner and mode)") from exc

    def _missing_log(self, job: JobInfo) -> SlurmError:
        if job.state == "PENDING":
            return SlurmError(f"job {job.job_id} has not started yet (pending: {job.reason}), so it has no log yet",
                              f"`llamapod logs {job.job_id} -f` waits for it to start")
        where = job.log_paths[0] if job.log_paths else "its output file"
        if job.ended and not job.node_list:
            return SlurmError(f"job {job.job_id} was {job.state} before it started (pending: {job.reason}), "
                              "so it has no log", "resubmit it; a training run resumes from its last checkpoint")
        folder = where.rsplit("/", 1)[0] if "/" in where else ""
        if job.ended and (job.reason == "JobLaunchFailure" or (folder and not self.shell.exists(folder))):
            # slurmstepd opens the log on the node before the script starts; it leaves no file behind.
            return SlurmError(f"job {job.job_id} {job.state} before it started: its log {where} could not be "
                              f"created on {job.node_list or 'its node'} (Slurm's reason: {job.reason})",
                              "the log's folder must exist and be writable on the compute nodes: put the run "
                              "folder on a file system every node mounts (--run_dir or output_dir), and resubmit")
        if job.ended:
            return SlurmError(f"job {job.job_id} {job.state}, but its log ({where}) no longer exists",
                              "it was moved or deleted after the job ended; Slurm keeps no copy "
                              "(`llamapod jobs` still shows how the job ended)")
        return SlurmError(f"the log of job {job.job_id} ({where}) does not exist yet",
                          "Slurm creates it when the job starts on its first node; if the job ended, "
                          "the file was moved or deleted")

    def log_text(self, job_id: str, tail: Optional[int] = None, job: Optional[JobInfo] = None) -> str:
        """The job's stdout, then its stderr when that is a separate file (each at most ``tail`` lines)."""
        job = job or self.info(job_id)
        present = [p for p in job.log_paths if self.shell.exists(p)]
        if not present:
            raise self._missing_log(job)
        parts = [self._read(p, tail, job) for p in present]
        return "".join(part if part.endswith("\n") or not part else part + "\n" for part in parts)

    def error_tail(self, job: JobInfo, lines: int = 20) -> str:
        """The last lines of the job's error log (stderr, or the combined log)."""
        path = job.stderr or job.stdout
        if not path or not self.shell.exists(path):
            return ""
        try:
            return self._read(path, lines, job)
        except SlurmError:
            return ""  # another user's log, in a listing of everyone's jobs

    def last_metrics(self, job: JobInfo, lines: int = 200) -> Optional[str]:
        """The job's newest metrics line, from the end of its logs."""
        found = None
        for path in job.log_paths:
            try:
                if self.shell.exists(path):
                    found = last_metrics_line(self._read(path, lines, job)) or found
            except SlurmError:
                continue  # another user's log, in a listing of everyone's jobs
        return found

    def follow(self, job_id: str, timeout: Optional[float] = None) -> Iterator[str]:
        """The job's log lines as they are written, until the job ends (through requeues)."""
        job_id = check_job_id(job_id)
        offsets: dict[str, int] = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        said_pending = False
        while True:
            job = self.info(job_id)
            if job.state == "PENDING" and not said_pending:
                report.info(f"job {job_id} is pending ({job.reason}): waiting for it to start "
                            "(Ctrl-C stops following; the job stays queued)")
                said_pending = True
            for path in job.log_paths:
                # Once the job has ended its files are complete: a last line without a newline counts too.
                yield from self._new_lines(path, offsets, include_partial=job.ended)
            if job.ended:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise SlurmError(f"job {job_id} is still {job.state} after {timeout:g} s",
                                 f"follow it again with `llamapod logs {job_id} -f`")
            time.sleep(self.poll_interval_s)

    def follow_to_end(self, job_id: str, cluster: str) -> Optional[JobInfo]:
        """Report a cluster job's output until it ends: its final state, or None when the user
        stopped following (Ctrl-C; the job keeps running)."""
        report.info(f"following job {job_id} (Ctrl-C stops following; the job keeps running)")
        try:
            for line in self.follow(job_id):
                report.info(line)
        except KeyboardInterrupt:
            report.info(f"stopped following; job {job_id} continues: `llamapod logs --cluster {cluster} {job_id} -f`")
            return None
        return self.info(job_id)

    def _new_lines(self, path: str, offsets: dict[str, int], include_partial: bool = False) -> Iterator[str]:
        """Complete lines appended to ``path`` since the last call (offsets in lines).

        Counted in lines, not bytes: bytes that are not UTF-8 reach us replaced, so the
        length of the text read says nothing about the length of the file.
        """
        if not self.shell.exists(path):
            return
        seen = offsets.get(path, 0)
        result = self.shell.run(["tail", "-n", f"+{seen + 1}", validate.shell_operand(path)],
                                timeout=COMMAND_TIMEOUT_S)
        if not result.ok:
            return
        text = result.stdout
        complete = text if include_partial else text[: text.rfind("\n") + 1]
        offsets[path] = seen + complete.count("\n")
        yield from complete.splitlines()

    # ---- control -----------------------------------------------------------------

    def cancel(self, job_id: str) -> JobInfo:
        """Cancel a job; returns its state before. An ended job is left as it is."""
        job = self.info(job_id)
        if job.ended:
            return job
        result = self._run(["scancel", job.job_id])
        if not result.ok:
            raise SlurmError(f"scancel could not cancel job {job.job_id}: {self._slurm_message(result)}",
                             "only the job's owner (or an operator) can cancel it")
        return job

    def wait(self, job_id: str, timeout: float) -> JobInfo:
        """Poll until the job has ended; raises SlurmError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.info(job_id)
            if job.ended:
                return job
            if time.monotonic() > deadline:
                raise SlurmError(f"job {job_id} is still {job.state} after {timeout:g} s",
                                 f"check it with `llamapod logs {job_id}`")
            time.sleep(self.poll_interval_s)


def ended_on_cluster(job: JobInfo, cluster: str, rerun: str) -> SlurmError:
    """The one line for a cluster job that ended failed; ``rerun`` ends the hint (what re-running keeps)."""
    reason = f" ({job.reason})" if job.reason and job.reason != "None" else ""
    return SlurmError(f"job {job.job_id} ended {job.state} on cluster {cluster}{reason}",
                      f"read its logs with `llamapod logs --cluster {cluster} {job.job_id}`, fix the cause, and {rerun}")

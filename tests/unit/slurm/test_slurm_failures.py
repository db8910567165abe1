"""Slurm answers the test cluster cannot give (it has no accounting, and runs as root):
QOS and account refusals, logs only their owner may read, states llamapod has no words for."""

from __future__ import annotations

import pytest

from llamapod.cli.slurm_cmds import _where, describe
from llamapod.errors import RemoteError, SlurmError
from llamapod.remote.shell import CommandFailed, CommandResult, LocalShell
from llamapod.slurm.jobs import JobInfo, SlurmJobs

OTHERS_JOB = ("JobId=41 JobName=theirs UserId=alice(1001) JobState=FAILED Reason=NonZeroExitCode "
              "RunTime=00:01:02 NumNodes=1 NodeList=n1 ExitCode=1:0 StdOut=/fsx/alice/slurm-41.out "
              "StdErr=/fsx/alice/slurm-41.out")


class ScriptedShell(LocalShell):
    """Slurm commands answered from a table; files only their owner may read."""

    def __init__(self, answers: dict[str, CommandResult]):
        super().__init__()
        self.answers = answers

    def which(self, program: str):
        return f"/usr/bin/{program}"

    def run(self, argv, **kwargs):
        argv = [str(a) for a in argv]
        if argv[0] == "id":
            return CommandResult(tuple(argv), 0, "bob\n", "")
        if argv[0] == "tail":
            result = CommandResult(tuple(argv), 1, "", f"tail: cannot open '{argv[-1]}' for reading: Permission denied")
            if kwargs.get("check"):
                raise CommandFailed(result, self.where)
            return result
        return self.answers.get(argv[0], CommandResult(tuple(argv), 0, "", ""))

    def exists(self, path: str) -> bool:
        return True

    def read_text(self, path: str) -> str:
        raise RemoteError(f"cannot read {path} on {self.where}: Permission denied")


def _answer(program: str, returncode: int, stdout: str = "", stderr: str = "") -> dict[str, CommandResult]:
    return {program: CommandResult((program,), returncode, stdout, stderr)}


@pytest.mark.parametrize("said, ours", [
    ("Invalid account or account/partition combination specified", "the account is not valid"),
    ("Invalid qos specification", "the QOS is not valid"),
    ("Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)",
     "the job exceeds a limit of its account or QOS"),
])
def test_slurm_account_and_qos_refusals_are_named(said, ours):
    jobs = SlurmJobs(ScriptedShell(_answer("sbatch", 1, stderr=f"sbatch: error: Batch job submission failed: {said}")))
    with pytest.raises(SlurmError) as refused:
        jobs.submit("/fsx/run/job.sbatch")
    assert str(refused.value) == f"sbatch rejected the job: {str(refused.value).split(': ', 1)[1]}"
    assert ours in str(refused.value) and f"({said})" in str(refused.value)
    assert "sacctmgr" in refused.value.hint or "fewer nodes" in refused.value.hint


def test_slurm_log_of_another_users_job_is_one_line_and_does_not_stop_the_listing(run_cli, monkeypatch):
    shell = ScriptedShell(_answer("scontrol", 0, stdout=OTHERS_JOB + "\n"))
    jobs = SlurmJobs(shell)
    with pytest.raises(SlurmError) as unreadable:
        jobs.log_text("41")
    assert str(unreadable.value) == "cannot read the log of job 41: /fsx/alice/slurm-41.out (it runs as alice)"
    assert "`ls -l /fsx/alice/slurm-41.out`" in unreadable.value.hint
    with pytest.raises(SlurmError):
        jobs.log_text("41", tail=5)
    # Listing everyone's jobs reads each one's log for its metrics and error lines: an
    # unreadable one is shown without them.
    listed = jobs.list(all_users=True)
    assert [job.job_id for job in listed] == ["41"]
    assert jobs.last_metrics(listed[0]) is None and jobs.error_tail(listed[0]) == ""

    monkeypatch.setattr("llamapod.cli.slurm_cmds._slurm", lambda cluster: jobs)
    code, out, err = run_cli("jobs", "--all")
    assert code == 0 and out.splitlines()[1].startswith("41   theirs  FAILED")
    code, out, err = run_cli("logs", "41")
    assert code == 1 and out == ""
    assert err.startswith("error: cannot read the log of job 41: /fsx/alice/slurm-41.out (it runs as alice)\n")


@pytest.mark.parametrize("state", ["REQUEUED", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY", "SUSPENDED",
                                   "RESIZING", "CONFIGURING", "COMPLETING", "REQUEUE_HOLD", "STAGE_OUT",
                                   "SOMETHING_NEW"])
def test_slurm_states_llamapod_has_no_words_for_are_shown_as_slurm_names_them(state):
    job = JobInfo(job_id="7", name="a name with spaces and ünïcødé ✓ " * 4, state=state, elapsed="00:00:05",
                  nodes=1, node_list="n1", reason="None")
    line = describe(job)
    assert line.startswith(f"job 7 ({job.name}) ") and state in line
    assert isinstance(_where(job), str)


def test_slurm_job_names_with_key_value_words_stay_names():
    from llamapod.slurm.parse import job_from_scontrol, parse_scontrol_record

    line = ("JobId=419 JobName=sweep lr=3e-4 JobId=1 UserId=x(5) UserId=root(0) GroupId=root(0) "
            "JobState=PENDING Reason=BeginTime NumNodes=1")
    job = job_from_scontrol(parse_scontrol_record(line))
    assert (job.job_id, job.user, job.state) == ("419", "root", "PENDING")
    assert job.name == "sweep lr=3e-4 JobId=1 UserId=x(5)"


def test_slurm_listing_with_accounting_takes_array_and_het_job_ids():
    sacct = "".join(f"{job_id}|{name}|PENDING|00:00:00|1||Priority|gpu|0:0|/fsx|bob\n"
                    for job_id, name in (("123_[1-5]", "array"), ("124+0", "het"), ("99", "old")))
    shell = ScriptedShell({**_answer("scontrol", 0, stdout="No jobs in the system\n"), **_answer("sacct", 0, sacct)})
    listed = SlurmJobs(shell).list()
    assert [(job.job_id, job.name) for job in listed] == [("99", "old"), ("123_[1-5]", "array"), ("124+0", "het")]

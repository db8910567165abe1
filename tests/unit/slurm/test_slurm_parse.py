"""Parsing what Slurm's commands print."""

from __future__ import annotations

import pytest

from llamapod.errors import SlurmError
from llamapod.slurm.jobs import (check_job_id, job_from_sacct, job_from_scontrol, last_metrics_line,
                                 parse_scontrol_record)

# `scontrol show job -o 12` from Slurm 22.05 (the test Slurm), trimmed of nothing.
SCONTROL_LINE = (
    "JobId=12 JobName=llama2-7b UserId=ubuntu(1000) GroupId=ubuntu(1000) MCS_label=N/A Priority=4294901756 "
    "Nice=0 Account=(null) QOS=(null) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=1 "
    "Restarts=2 BatchFlag=1 Reboot=0 ExitCode=1:0 RunTime=00:03:07 TimeLimit=UNLIMITED TimeMin=N/A "
    "SubmitTime=2026-11-25T18:13:01 EligibleTime=2026-11-25T18:15:02 Partition=dev AllocNode:Sid=head:6760 "
    "ReqNodeList=(null) ExcNodeList=(null) NodeList=ip-10-1-0-[1-4] BatchHost=ip-10-1-0-1 NumNodes=4 "
    "NumCPUs=192 NumTasks=4 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=192,node=4,billing=192 "
    "Command=/fsx/runs/llama2-7b/job.sbatch WorkDir=/fsx/ubuntu StdErr=/fsx/runs/llama2-7b/slurm-12.err "
    "StdIn=/dev/null StdOut=/fsx/runs/llama2-7b/slurm-12.out Power=")


def test_slurm_scontrol_record_parses_keys_with_colons_and_empty_values():
    record = parse_scontrol_record(SCONTROL_LINE)
    assert record["ReqB:S:C:T"] == "0:0:*:*" and record["AllocNode:Sid"] == "head:6760"
    assert record["TRES"] == "cpu=192,node=4,billing=192" and record["Power"] == ""
    job = job_from_scontrol(record)
    assert (job.job_id, job.name, job.state, job.elapsed, job.nodes) == ("12", "llama2-7b", "FAILED", "00:03:07", 4)
    assert (job.node_list, job.reason, job.partition, job.exit_code, job.restarts, job.user) == (
        "ip-10-1-0-[1-4]", "NonZeroExitCode", "dev", "1:0", 2, "ubuntu")
    assert job.log_paths == ["/fsx/runs/llama2-7b/slurm-12.out", "/fsx/runs/llama2-7b/slurm-12.err"]
    assert job.ended and job.failed


def test_slurm_pending_record():
    line = ("JobId=13 JobName=x UserId=root(0) JobState=PENDING Reason=Resources Restarts=0 RunTime=00:00:00 "
            "Partition=debug NodeList=(null) NumNodes=2-2 StdErr=/r/slurm-13.out StdOut=/r/slurm-13.out")
    job = job_from_scontrol(parse_scontrol_record(line))
    assert (job.state, job.reason, job.nodes, job.node_list, job.ended) == ("PENDING", "Resources", 2, "", False)
    assert job.log_paths == ["/r/slurm-13.out"]


def test_slurm_sacct_line():
    # `sacct -P -n -X -o JobID,JobName,State,Elapsed,NNodes,NodeList,Reason,Partition,ExitCode,WorkDir,User`
    # as documented by sacct(1): '|'-separated, "CANCELLED by <uid>" for cancelled jobs.
    job = job_from_sacct("41|llama2-7b|CANCELLED by 1000|01:02:03|4|ip-10-1-0-[1-4]|None|dev|0:15|/fsx/ubuntu|ubuntu")
    assert (job.job_id, job.state, job.elapsed, job.nodes, job.user) == ("41", "CANCELLED", "01:02:03", 4, "ubuntu")
    assert job.stdout == "/fsx/ubuntu/slurm-41.out" and job.failed


def test_slurm_last_metrics_line_ignores_prefixes_and_other_lines():
    text = "\n".join([
        "llamapod: job 5 on 1 node(s) vm, attempt 1",
        "step 9/20 | loss 3.2000 | lr 1.00e-03",
        "0: step 10/20 | loss 3.1000 | lr 1.00e-03 | 1,000 tok/s",
        "step 10/20 | val_loss 3.3000 | val_ppl 27.11",
        "W1125 torch warning",
    ])
    assert last_metrics_line(text) == "step 10/20 | val_loss 3.3000 | val_ppl 27.11"
    assert last_metrics_line("nothing yet\n") is None
    # A tokenizing job's progress line (llamapod data prepare --slurm).
    preparing = text + "\nprepare | 12/64 parts | 1,234,567 tokens | 412,345 tokens/s | 19% | ETA 0:01:23\n• next"
    assert last_metrics_line(preparing) == "prepare | 12/64 parts | 1,234,567 tokens | 412,345 tokens/s | 19% | ETA 0:01:23"


@pytest.mark.parametrize("job_id", ["12", "12_3", " 7 "])
def test_slurm_job_ids_accepted(job_id):
    assert check_job_id(job_id) == job_id.strip()


@pytest.mark.parametrize("job_id", ["abc", "12;rm -rf /", "-1", "", "0", "000", "0_1", "12.0", "12_"])
def test_slurm_job_ids_refused(job_id):
    with pytest.raises(SlurmError) as err:
        check_job_id(job_id)
    assert err.value.message == f"'{job_id.strip()}' is not a Slurm job id"

"""SlurmJobs and `llamapod jobs|logs|cancel` against the real Slurm daemons, with small shell payloads."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
import time

import pytest

from llamapod.errors import SlurmError
from llamapod.remote.shell import LocalShell
from llamapod.slurm.jobs import SlurmJobs

pytestmark = pytest.mark.slurm

# Generous: another test session sharing the daemons may hold the node with an exclusive job.
WAIT_S = 300


def _script(tmp_path, body: str, *options: str, name: str = "payload") -> str:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --output={tmp_path}/slurm-%j.out",
             f"#SBATCH --error={tmp_path}/slurm-%j.err", *[f"#SBATCH {o}" for o in options], "",
             textwrap.dedent(body).strip(), ""]
    path = tmp_path / f"{name}.sbatch"
    path.write_text("\n".join(lines))
    return str(path)


@pytest.fixture
def jobs(slurm):
    return SlurmJobs(slurm.shell(), poll_interval_s=0.2)


def test_slurm_job_runs_and_its_log_and_metrics_are_read(jobs, tmp_path, run_cli):
    script = _script(tmp_path, """
        echo "starting on $(hostname)"
        for i in 1 2 3; do echo "step $i/3 | loss $((10 - i)).5 | lr 1.0e-03" >&2; done
        echo done
    """)
    job_id = jobs.submit(script)
    final = jobs.wait(job_id, timeout=WAIT_S)
    assert final.state == "COMPLETED" and not final.failed
    assert final.stdout == f"{tmp_path}/slurm-{job_id}.out"
    text = jobs.log_text(job_id)
    assert "starting on" in text and "step 3/3 | loss 7.5 | lr 1.0e-03" in text
    assert jobs.last_metrics(final) == "step 3/3 | loss 7.5 | lr 1.0e-03"

    code, out, err = run_cli("logs", job_id)
    assert code == 0
    assert "done" in out and "step 1/3" in out
    assert "last metrics: step 3/3 | loss 7.5 | lr 1.0e-03" in err
    assert f"job {job_id} (payload) COMPLETED after" in err

    code, out, _ = run_cli("logs", job_id, "-n", "1")
    assert code == 0 and out == "done\nstep 3/3 | loss 7.5 | lr 1.0e-03\n"

    code, out, err = run_cli("jobs")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith(job_id))
    assert re.search(rf"^{job_id}\s+payload\s+COMPLETED\s+\S+\s+1\s+\S+\s+step 3/3 \| loss 7.5", row)
    code, out, _ = run_cli("jobs", "--json")
    listed = {job["job_id"]: job for job in json.loads(out)}
    assert listed[job_id]["state"] == "COMPLETED"
    assert listed[job_id]["last_metrics"] == "step 3/3 | loss 7.5 | lr 1.0e-03"


def test_slurm_follow_streams_lines_until_the_job_ends(jobs, tmp_path, run_cli):
    script = _script(tmp_path, """
        for i in 1 2 3 4; do echo "line $i"; sleep 0.3; done
        printf "no newline at the end"
    """)
    job_id = jobs.submit(script)
    expected = ["line 1", "line 2", "line 3", "line 4", "no newline at the end"]
    assert list(jobs.follow(job_id, timeout=WAIT_S)) == expected
    code, out, _ = run_cli("logs", job_id, "-f")
    assert code == 0 and out.splitlines() == expected


def test_slurm_failed_job_shows_reason_and_error_tail(jobs, tmp_path, run_cli):
    script = _script(tmp_path, """
        echo "working"
        echo "Traceback: something broke" >&2
        echo "RuntimeError: out of patience" >&2
        exit 3
    """, name="broken")
    job_id = jobs.submit(script)
    final = jobs.wait(job_id, timeout=WAIT_S)
    assert final.state == "FAILED" and final.failed and final.exit_code == "3:0"
    assert "RuntimeError: out of patience" in jobs.error_tail(final)

    code, out, err = run_cli("logs", job_id)
    assert code == 1
    assert "RuntimeError: out of patience" in out
    assert f"error: job {job_id} (broken) FAILED after" in err
    assert "(exit code 3:0; Slurm's reason: NonZeroExitCode)" in err

    code, out, err = run_cli("jobs")
    assert code == 0
    assert f"warning: job {job_id} (broken) FAILED" in err
    assert f"last lines of {tmp_path}/slurm-{job_id}.err:\n    Traceback: something broke\n" \
           f"    RuntimeError: out of patience" in err


def test_slurm_cancel_running_and_ended_jobs(jobs, tmp_path, run_cli):
    script = _script(tmp_path, "echo up; sleep 60", name="sleeper")
    job_id = jobs.submit(script)
    deadline = time.monotonic() + WAIT_S
    while jobs.info(job_id).state != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.1)
    code, _, err = run_cli("cancel", job_id)
    assert code == 0 and f"cancelled job {job_id} (sleeper), which was RUNNING" in err
    assert jobs.wait(job_id, timeout=WAIT_S).state == "CANCELLED"
    code, _, err = run_cli("cancel", job_id)
    assert code == 0 and f"job {job_id} (sleeper) had already ended (CANCELLED); nothing to cancel" in err


def test_slurm_pending_job_has_no_log_yet(jobs, tmp_path, run_cli, monkeypatch):
    script = _script(tmp_path, "echo never", "--begin=now+1hour", name="later")
    job_id = jobs.submit(script)
    try:
        code, _, err = run_cli("logs", job_id)
        assert code == 1
        assert f"error: job {job_id} has not started yet (pending: BeginTime), so it has no log yet" in err
        assert f"hint: `llamapod logs {job_id} -f` waits for it to start" in err
        said = []
        monkeypatch.setattr("llamapod.report.info", said.append)
        with pytest.raises(SlurmError) as waited:
            list(jobs.follow(job_id, timeout=0.5))
        assert str(waited.value) == f"job {job_id} is still PENDING after 0.5 s"
        assert said == [f"job {job_id} is pending (BeginTime): waiting for it to start "
                        "(Ctrl-C stops following; the job stays queued)"]
    finally:
        jobs.cancel(job_id)
    jobs.wait(job_id, timeout=WAIT_S)
    code, out, err = run_cli("logs", job_id)
    assert code == 1 and out == ""
    assert err.startswith(f"error: job {job_id} was CANCELLED before it started (pending: BeginTime), so it has "
                          "no log\n")
    code, out, err = run_cli("logs", job_id, "-f")
    assert code == 1 and out == ""
    assert "hint: it never started (pending: BeginTime), so it wrote no log; resubmit" in err


def test_slurm_rejections_are_one_line(jobs, tmp_path, run_cli, slurm):
    with pytest.raises(SlurmError) as bad_partition:
        jobs.submit(_script(tmp_path, "true", "--partition=nope", name="p"))
    assert str(bad_partition.value) == ("sbatch rejected the job: Slurm has no such partition "
                                        "(Invalid partition name specified)")
    with pytest.raises(SlurmError) as too_many:
        jobs.submit(_script(tmp_path, "true", "--nodes=4", name="n"))
    assert str(too_many.value) == ("sbatch rejected the job: the job asks for more nodes than the partition has "
                                   "(Node count specification invalid)")
    assert "lower --nodes" in too_many.value.hint

    with pytest.raises(SlurmError) as preflight:
        jobs.preflight(4, None)
    assert str(preflight.value) == "the job asks for 4 nodes but partition 'debug' has 1"
    with pytest.raises(SlurmError) as unknown:
        jobs.preflight(1, "gpu")
    assert str(unknown.value) == "Slurm has no partition 'gpu'"
    assert unknown.value.hint.startswith("partitions here: debug (1 node)")

    code, _, err = run_cli("logs", "999999")
    assert code == 1 and "error: Slurm has no job 999999\n" in err
    code, _, err = run_cli("cancel", "12abc")
    assert code == 1 and "error: '12abc' is not a Slurm job id\n" in err


def test_slurm_missing_from_path(monkeypatch, tmp_path, run_cli):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("sbatch") is None
    with pytest.raises(SlurmError) as missing:
        SlurmJobs(LocalShell()).list()
    assert str(missing.value) == "Slurm is not installed on this machine: `scontrol` is not on PATH"
    code, _, err = run_cli("jobs")
    assert code == 1
    assert "error: Slurm is not installed on this machine: `scontrol` is not on PATH" in err
    assert "hint: run this on the cluster's login or head node, or from a laptop with --cluster NAME" in err


def test_slurm_controller_down_is_one_line(slurm, tmp_path):
    conf = tmp_path / "slurm.conf"
    # The test cluster's configuration, but a controller port nobody listens on.
    conf.write_text(slurm.conf.read_text().replace(f"SlurmctldHost={slurm.node}(127.0.0.1)",
                                                   f"SlurmctldHost={slurm.node}(127.0.0.1)\nSlurmctldPort=9\n"
                                                   "MessageTimeout=1"))
    with pytest.raises(SlurmError) as down:
        SlurmJobs(LocalShell(env={"SLURM_CONF": str(conf)})).list()
    assert str(down.value) == "cannot reach the Slurm controller from this machine"
    assert down.value.hint == "check that slurmctld is running: `scontrol ping`"


def test_slurm_second_submit_into_a_busy_run_folder_is_refused(slurm, tmp_path, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)
    # A job that holds its run folder for a while without training: the setup line sleeps,
    # and the "interpreter" is /bin/true, so srun returns at once afterwards.
    (tmp_path / "llamapod.toml").write_text("[train]\npreset = 'tiny'\n\n[slurm]\njob_name = 'busy'\n"
                                            "exclusive = false\npython = '/bin/true'\nenv_setup = ['sleep 60']\n")
    code, out, err = run_cli("train", "--slurm")
    assert code == 0, err
    job_id = out.strip()
    jobs = SlurmJobs(slurm.shell(), poll_interval_s=0.2)
    try:
        code, out, err = run_cli("train", "--slurm")
        assert code == 1 and out == ""
        state = jobs.info(job_id).state
        assert err.startswith(f"error: job {job_id} (busy) is already {state} in {tmp_path}/runs/busy\n")
        assert f"hint: follow it with `llamapod logs {job_id} -f`, stop it with `llamapod cancel {job_id}`" in err
    finally:
        jobs.cancel(job_id)
    assert jobs.wait(job_id, timeout=WAIT_S).state == "CANCELLED"


def test_slurm_log_with_undecodable_bytes_is_shown_not_an_internal_error(jobs, tmp_path, run_cli):
    # A job's output is whatever its programs wrote: bytes that are not UTF-8, and a last
    # line cut inside a multi-byte character.
    script = _script(tmp_path, r"""
        printf 'ok\n\xff\xfe bad bytes\n'
        printf 'step 1/2 | loss 1.0\n' >&2
        sleep 1
        printf 'caf\xc3'
    """, name="bytes")
    job_id = jobs.submit(script)
    followed = list(jobs.follow(job_id, timeout=WAIT_S))
    assert sorted(followed) == ["caf\ufffd", "ok", "step 1/2 | loss 1.0", "\ufffd\ufffd bad bytes"]
    for args in (["logs", job_id], ["logs", job_id, "-n", "2"], ["logs", job_id, "-f"], ["jobs"]):
        code, out, err = run_cli(*args)
        assert code == 0, (args, err)
        assert "internal error" not in err
    code, out, err = run_cli("logs", job_id)
    assert out == "ok\n\ufffd\ufffd bad bytes\ncaf\ufffd\nstep 1/2 | loss 1.0\n"
    assert "last metrics: step 1/2 | loss 1.0" in err


def test_slurm_partition_down_or_inactive_and_gone_logs_are_one_line(jobs, tmp_path, run_cli, slurm):
    slurm.run("scontrol", "create", "PartitionName=offline", f"Nodes={slurm.node}", "State=DOWN")
    slurm.run("scontrol", "create", "PartitionName=closed", f"Nodes={slurm.node}", "State=INACTIVE")
    try:
        # sbatch would queue a job in a down partition for ever (reason PartitionDown).
        with pytest.raises(SlurmError) as down:
            jobs.preflight(1, "offline")
        assert str(down.value) == "partition 'offline' is down: Slurm would queue the job but not start it"
        assert down.value.hint.startswith("pick a partition that is up (debug) with --partition")
        with pytest.raises(SlurmError) as inactive:
            jobs.submit(_script(tmp_path, "true", "--partition=closed", name="closed"))
        assert str(inactive.value) == ("sbatch rejected the job: the partition is inactive or draining and takes "
                                       "no jobs (Required partition not available (inactive or drain))")
    finally:
        slurm.run("scontrol", "delete", "PartitionName=offline", check=False)
        slurm.run("scontrol", "delete", "PartitionName=closed", check=False)

    code, out, err = run_cli("logs", "0")
    assert code == 1 and out == "" and err.startswith("error: '0' is not a Slurm job id\n")

    job_id = jobs.submit(_script(tmp_path, "echo gone", name="gone"))
    assert jobs.wait(job_id, timeout=WAIT_S).state == "COMPLETED"
    (tmp_path / f"slurm-{job_id}.out").unlink()
    (tmp_path / f"slurm-{job_id}.err").unlink()
    code, out, err = run_cli("logs", job_id)
    assert code == 1 and out == ""
    assert err.startswith(f"error: job {job_id} COMPLETED, but its log ({tmp_path}/slurm-{job_id}.out) "
                          "no longer exists\n  hint: it was moved or deleted after the job ended")
    code, _, _ = run_cli("jobs")
    assert code == 0


def test_slurm_job_whose_workdir_is_missing_on_the_node_fails_saying_so(slurm, tmp_path, monkeypatch, run_cli):
    # Slurm itself only logs "couldn't chdir ... going to /tmp instead" and runs the job there.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "llamapod.toml").write_text("[train]\npreset = 'tiny'\n\n[slurm]\njob_name = 'nowhere'\n"
                                            "exclusive = false\npython = '/bin/true'\n"
                                            "workdir = '/nonexistent/llamapod-workdir'\n")
    # The run folder is elsewhere, so nothing creates the working folder.
    code, out, err = run_cli("train", "--slurm", "--run_dir", str(tmp_path / "run"))
    assert code == 0, err
    job_id = out.strip()
    jobs = SlurmJobs(slurm.shell(), poll_interval_s=0.2)
    final = jobs.wait(job_id, timeout=WAIT_S)
    assert final.state == "FAILED" and final.exit_code == "1:0"
    code, out, err = run_cli("logs", job_id)
    assert code == 1
    assert ("llamapod: the working folder /nonexistent/llamapod-workdir (workdir in [slurm], --chdir) does not "
            f"exist on {slurm.node}: create it on a file system every node mounts, or set workdir") in out


def test_slurm_job_whose_log_folder_is_missing_on_the_node_names_it(jobs, tmp_path, run_cli):
    # The submitting machine wrote the script, but the node has no such folder for the log.
    script = tmp_path / "nolog.sbatch"
    script.write_text(f"#!/bin/bash\n#SBATCH --job-name=nolog\n#SBATCH --output={tmp_path}/missing/slurm-%j.out\n"
                      "echo hi\n")
    job_id = jobs.submit(str(script))
    assert jobs.wait(job_id, timeout=WAIT_S).failed
    code, out, err = run_cli("logs", job_id)
    assert code == 1 and out == ""
    assert err.startswith(f"error: job {job_id} FAILED before it started: its log "
                          f"{tmp_path}/missing/slurm-{job_id}.out could not be created on ")
    assert "hint: the log's folder must exist and be writable on the compute nodes" in err


def test_slurm_refused_submit_keeps_the_earlier_script_and_a_rerun_submits(slurm, tmp_path, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)
    base = "[train]\npreset = 'tiny'\n\n[slurm]\njob_name = 'keep'\nexclusive = false\npython = '/bin/true'\n"
    (tmp_path / "llamapod.toml").write_text(base)
    code, out, err = run_cli("train", "--slurm")
    assert code == 0, err
    jobs = SlurmJobs(slurm.shell(), poll_interval_s=0.2)
    jobs.wait(out.strip(), timeout=WAIT_S)
    script = tmp_path / "runs" / "keep" / "job.sbatch"
    edited = script.read_text() + "# my own note\n"
    script.write_text(edited)

    # Only sbatch knows that no node has this much memory.
    (tmp_path / "llamapod.toml").write_text(base + "sbatch_options = ['--mem=99999999']\n")
    code, out, err = run_cli("train", "--slurm")
    assert code == 1 and out == ""
    assert err.startswith("error: sbatch rejected the job: ") and err.count("\n") == 2
    assert script.read_text() == edited
    assert sorted(p.name for p in script.parent.iterdir() if p.name.startswith("job.")) == ["job.sbatch"]

    (tmp_path / "llamapod.toml").write_text(base)
    code, out, err = run_cli("train", "--slurm")
    assert code == 0, err
    assert jobs.wait(out.strip(), timeout=WAIT_S).state == "COMPLETED"


def test_slurm_drained_nodes_do_not_count_for_the_job(jobs, slurm):
    slurm.run("scontrol", "update", f"NodeName={slurm.node}", "State=DRAIN", "Reason=llamapod-test")
    try:
        with pytest.raises(SlurmError) as drained:
            jobs.preflight(1, None)
    finally:
        slurm.run("scontrol", "update", f"NodeName={slurm.node}", "State=RESUME")
    assert str(drained.value) == ("the job asks for 1 nodes but only 0 of the 1 nodes of partition 'debug' take jobs "
                                  "(the others are down or drained)")
    assert drained.value.hint.endswith("`sinfo -R` shows why nodes are down")
    jobs.preflight(1, None)


def test_slurm_conf_that_does_not_exist_is_one_line_at_once(slurm, tmp_path):
    # Slurm's own commands retry for a minute before they give up on a missing slurm.conf.
    started = time.monotonic()
    with pytest.raises(SlurmError) as missing:
        SlurmJobs(LocalShell(env={"SLURM_CONF": str(tmp_path / "gone.conf")})).list()
    assert time.monotonic() - started < 10
    assert str(missing.value) == f"SLURM_CONF names {tmp_path}/gone.conf, which does not exist on this machine"


def test_slurm_cancel_of_one_array_task_leaves_its_siblings(jobs, tmp_path, run_cli, slurm):
    array_id = jobs.submit(_script(tmp_path, "echo task", "--array=1-2", "--begin=now+1hour", name="arr"))
    try:
        code, _, err = run_cli("cancel", f"{array_id}_2")
        assert code == 0 and f"cancelled job {array_id}_2 (arr), which was PENDING" in err
        assert jobs.info(f"{array_id}_1").state == "PENDING"
    finally:
        slurm.run("scancel", array_id, check=False)

"""The real trainer as a Slurm job: `llamapod train --slurm` -> sbatch -> srun -> torchrun -> 2 CPU workers.

Two identical runs are submitted at once (they overlap on the node, which keeps the
module fast): one runs straight through; the other is requeued with `scontrol requeue`
after its first checkpoint, must come back from that checkpoint by itself (same job,
same script) and end with exactly the losses of the uninterrupted run.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llamapod.slurm.jobs import SlurmJobs

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TRAIN_FLAGS = ["--preset=tiny", "--max_steps=16", "--checkpoint_freq=4", "--logging_freq=1",
               "--validation_freq=16", "--validation_batches=2", "--train_batch_size=4", "--seed=7"]
JOB_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _submit(root: Path, name: str) -> tuple[str, Path]:
    """`llamapod train --slurm` in a subprocess, as a user runs it; returns (job id, run dir)."""
    config = root / f"{name}.toml"
    # Not exclusive, so both runs share the one test node; a port each for their rendezvous.
    config.write_text(f'[slurm]\njob_name = "{name}"\noutput_dir = "{root}/runs"\nexclusive = false\n'
                      f"hyperpod = false\nrdzv_port = {_free_port()}\n")
    result = subprocess.run([sys.executable, "-m", "llamapod", "train", "--slurm", "--config", str(config),
                             *TRAIN_FLAGS], capture_output=True, text=True, timeout=120, cwd=root)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert re.fullmatch(r"\d+", job_id), result.stdout
    assert f"submitted job {job_id} ({name}: 1 node x 2 workers)" in result.stderr
    return job_id, root / "runs" / name


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _train_losses(records: list[dict]) -> dict[int, float]:
    """step -> training loss; a resumed run's later records win over the attempt that was cut off."""
    return {r["step"]: r["loss"] for r in records if "loss" in r and "event" not in r and "val_loss" not in r}


def _requeue_after_first_checkpoint(slurm, jobs: SlurmJobs, job_id: str, run_dir: Path) -> None:
    """`scontrol requeue` the job as soon as it has a complete checkpoint (it is then mid-run)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not list((run_dir / "checkpoints").glob("step_*/COMPLETE")):
        assert time.monotonic() < deadline, "no checkpoint appeared"
        job = jobs.info(job_id)
        assert not job.ended, jobs.log_text(job_id, job=job)
        time.sleep(0.1)
    assert jobs.info(job_id).state == "RUNNING"
    slurm.run("scontrol", "requeue", job_id)


@pytest.fixture(scope="module")
def runs(slurm, tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm-train")
    straight = _submit(root, "straight")
    requeued = _submit(root, "requeued")
    jobs = SlurmJobs(slurm.shell(), poll_interval_s=0.2)
    try:
        _requeue_after_first_checkpoint(slurm, jobs, *requeued)
        yield {"straight": straight, "requeued": requeued, "jobs": jobs}
    finally:
        for job_id, _ in (straight, requeued):
            if not jobs.info(job_id).ended:
                jobs.cancel(job_id)


def test_slurm_trainer_job_runs_to_completion_and_logs_show_metrics(runs, run_cli):
    job_id, run_dir = runs["straight"]
    final = runs["jobs"].wait(job_id, timeout=JOB_TIMEOUT_S)
    code, out, err = run_cli("logs", job_id)
    assert final.state == "COMPLETED", out + err
    assert code == 0
    assert "FSDP2 full sharding on 2 CPU workers" in out
    assert re.search(r"^step 16/16 \| loss \d+\.\d+ \| lr ", out, re.MULTILINE)
    assert re.search(r"^last metrics: step 16/16 \| ", err, re.MULTILINE)
    assert f"job {job_id} (straight) COMPLETED after" in err
    records = _records(run_dir)
    assert records[-1]["event"] == "done" and records[-1]["step"] == 16
    assert sorted(_train_losses(records)) == list(range(1, 17))
    assert (run_dir / "checkpoints" / "step_00000016").is_dir()


def test_slurm_requeued_job_resumes_from_its_last_checkpoint(runs):
    job_id, run_dir = runs["requeued"]
    jobs = runs["jobs"]
    final = jobs.wait(job_id, timeout=JOB_TIMEOUT_S)
    log = jobs.log_text(job_id)
    assert final.state == "COMPLETED", log
    assert final.restarts == 1
    assert "attempt 1" in log and "attempt 2" in log
    resumed = re.search(r"resumed from (\S+)/step_(\d+) \(step (\d+)\)", log)
    assert resumed, log
    assert resumed.group(1) == str(run_dir / "checkpoints") and 4 <= int(resumed.group(3)) < 16

    _, straight_dir = runs["straight"]
    jobs.wait(runs["straight"][0], timeout=JOB_TIMEOUT_S)
    straight, requeued = _records(straight_dir), _records(run_dir)
    assert requeued[-1]["event"] == "done"
    assert requeued[-1]["loss"] == pytest.approx(straight[-1]["loss"], rel=1e-5)
    expected = _train_losses(straight)
    for step, loss in _train_losses(requeued).items():
        assert loss == pytest.approx(expected[step], rel=1e-5), f"step {step}"

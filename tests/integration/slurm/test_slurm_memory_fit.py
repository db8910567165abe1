"""The memory check on the way to a real queue: `llamapod train --slurm` against the test Slurm,
and `llamapod train --cluster` against a HyperPod cluster in the AWS emulator.

A job estimated not to fit in its GPUs never reaches the queue (nothing is written,
uploaded or submitted); one that fits prints its estimate and goes on as before.
"""

from __future__ import annotations

import re

import boto3
import pytest

from llamapod.cli.main import main
from llamapod.slurm.jobs import SlurmJobs

SEVEN_B_4096 = ["--preset", "llama2-7b", "--max_context_width", "4096", "--train_batch_size", "1"]
LIFECYCLE = {"SourceS3Uri": "s3://sagemaker-demo-lifecycle/src", "OnCreate": "on_create.sh"}
ROLE = "arn:aws:iam::123456789012:role/demo-exec"


def _cli(capfd, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capfd.readouterr()
    return code, out, err


def _slurm_config(tmp_path, name: str):
    config = tmp_path / f"{name}.toml"
    config.write_text(f'[slurm]\njob_name = "{name}"\noutput_dir = "{tmp_path}/runs"\nexclusive = false\n'
                      "hyperpod = false\n")
    return config


@pytest.mark.slurm
def test_slurm_job_that_cannot_fit_never_reaches_the_queue(slurm, tmp_path, capfd):
    config = _slurm_config(tmp_path, "too-big-for-a10g")
    code, out, err = _cli(capfd, "train", "--slurm", "--config", str(config), "--nodes", "4",
                          "--instance-type", "ml.g5.48xlarge", *SEVEN_B_4096, "--activation_checkpointing", "0")
    assert code == 1 and out == ""
    assert re.match(r"error: the job needs an estimated \d+\.\d GiB per GPU \(peak in the loss\), more than the "
                    r"22\.0 GiB usable on an A10G \(ml\.g5\.48xlarge\)", err), err
    assert "--activation_checkpointing 1 (est. " in err.splitlines()[1]
    assert not (tmp_path / "runs").exists()
    names = {job.name for job in SlurmJobs(slurm.shell()).list(all_users=True)}
    assert "too-big-for-a10g" not in names


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_job_that_fits_prints_its_estimate_then_is_submitted(slurm, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _slurm_config(tmp_path, "fits-on-one-a10g")
    # One A10G per node: the job runs on this machine's CPU, but is sized for the GPU.
    code, out, err = _cli(capfd, "train", "--slurm", "--config", str(config), "--instance-type", "ml.g5.xlarge",
                          "--preset", "tiny", "--max_steps", "2", "--validation_batches", "0")
    assert code == 0, err
    assert re.search(r"^memory: \d+\.\d GiB of 22\.0 GiB usable per A10G \(estimate\)$", err, re.M), err
    job_id = out.strip()
    jobs = SlurmJobs(slurm.shell(), poll_interval_s=0.2)
    try:
        assert jobs.info(job_id).name == "fits-on-one-a10g"
    finally:
        jobs.cancel(job_id)


@pytest.fixture
def g5_cluster(aws, tmp_path, monkeypatch):
    """A HyperPod cluster in the emulator whose workers are 4 x ml.g5.48xlarge; no llamapod.toml."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLAMAPOD_CONFIG", raising=False)
    groups = [("controller-machine", "ml.c5.xlarge", 1), ("worker-group-1", "ml.g5.48xlarge", 4)]
    boto3.client("sagemaker").create_cluster(
        ClusterName="demo",
        InstanceGroups=[{"InstanceGroupName": g, "InstanceType": t, "InstanceCount": n, "LifeCycleConfig": LIFECYCLE,
                         "ExecutionRole": ROLE, "ThreadsPerCore": 1} for g, t, n in groups],
        VpcConfig={"SecurityGroupIds": ["sg-12345678"], "Subnets": ["subnet-12345678"]})
    return "demo"


def test_cluster_job_is_checked_against_the_worker_groups_gpu(g5_cluster, capfd):
    # Nothing says which GPU: it comes from the cluster's worker group, before any connection.
    code, out, err = _cli(capfd, "train", "--cluster", g5_cluster, *SEVEN_B_4096, "--activation_checkpointing", "0")
    assert code == 1 and out == ""
    assert "usable on an A10G (ml.g5.48xlarge): it would run out of memory" in err.splitlines()[0], err
    assert "hint: it fits with --activation_checkpointing 1 (est. " in err

    code, out, err = _cli(capfd, "train", "--cluster", g5_cluster, "--dry-run", *SEVEN_B_4096,
                          "--activation_checkpointing", "1")
    assert code == 0, err
    assert re.search(r"^memory: \d\.\d GiB of 22\.0 GiB usable per A10G \(estimate\)$", err, re.M), err
    # The worker group's hardware went into the script too.
    assert "#SBATCH --nodes=4" in out and "ml.g5.48xlarge (8 x A10G per node" in out, out

"""Two `llamapod up` on one cluster name at the same time leave one of each resource.

On one machine the second run stops at once with a one-line message (cloud/lock.py); where
no lock reaches (two machines), FSx's client request token gives both runs the one file
system (the emulator answers a repeated token as FSx documents it: tests/fixtures/aws.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from fixtures.aws import ONE_CLUSTER, counts, resources_for
from llamapod.cloud import plan, progress, storage
from llamapod.cloud.ledger import Ledger
from llamapod.cloud.session import AwsSession
from llamapod.config.cluster import load_cluster_spec

TESTS = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("up_runner.py")


def start_up(name: str, gate: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{TESTS.parent / 'src'}{os.pathsep}{TESTS}"}
    return subprocess.Popen([sys.executable, str(RUNNER), name, str(gate)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before reaching the gate:\n{proc.stderr.read()}")
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_a_second_up_while_the_first_is_working_stops_with_one_line(aws_warm, cluster_name, tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    first = start_up(cluster_name, gate)
    try:
        wait_for(gate / f"at-gate-{first.pid}", first)  # the first run holds its network, role and bucket
        second = start_up(cluster_name, gate)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 1, err
        assert err.splitlines()[-2:] == [
            f"error: another `llamapod up` (pid {first.pid}) is working on cluster {cluster_name} right now",
            "  hint: wait for it to finish (or stop it), then run this again"]
    finally:
        (gate / "open").touch()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert counts(resources_for(aws_warm, cluster_name)) == ONE_CLUSTER


def test_two_runs_the_lock_cannot_see_get_one_file_system(aws_gaps, cluster_name, tmp_path):
    """Two machines: separate state files, no shared lock. Both look for the file system, find
    none, and ask FSx for one at the same moment with the same token."""
    spec = load_cluster_spec(None, {"name": cluster_name})
    ec2 = aws_gaps.raw_client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.0.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(VpcId=vpc, GroupName=cluster_name, Description="t")["GroupId"]
    stack_id = f"arn:aws:cloudformation:us-east-1:123456789012:stack/llamapod-{cluster_name}-network/1"
    both_looked = threading.Barrier(2, timeout=30)
    session = AwsSession(region="us-east-1")
    session.client("fsx").meta.events.register("before-parameter-build.fsx.CreateFileSystem",
                                                lambda **_: both_looked.wait())
    found: dict[str, str] = {}

    def machine(label: str) -> None:
        ledger = Ledger(cluster_name, "us-east-1", path=tmp_path / f"{label}.json")
        waiter = progress.Waiter(progress.VirtualClock(), threading.Event(), progress.Reporter(progress.VirtualClock()))
        fs = storage.ensure_file_system(session, spec, stack_id, subnet, group, plan.resource_tags(spec), ledger, waiter)
        found[label] = fs.id

    threads = [threading.Thread(target=machine, args=(label,)) for label in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(aws_gaps.requests["CreateFileSystem"]) == 2  # both asked
    assert found["a"] == found["b"]
    assert resources_for(aws_gaps.endpoint, cluster_name)["file_system"] == [found["a"]]
    aws_gaps.raw_client("fsx").delete_file_system(FileSystemId=found["a"])
    ec2.delete_security_group(GroupId=group)
    ec2.delete_subnet(SubnetId=subnet)
    ec2.delete_vpc(VpcId=vpc)


def test_the_emulator_refuses_what_the_services_refuse(aws_gaps, cluster_name):
    """The stricter stand-in itself (tests/fixtures/aws.py): requests moto would take and AWS refuses."""
    import pytest

    from llamapod.cloud.session import call
    from llamapod.errors import CloudError

    SUBNET, SG = "subnet-0123456789abcdef0", "sg-0123456789abcdef0"

    session = AwsSession(region="us-east-1")
    spec = load_cluster_spec(None, {"name": cluster_name})
    request = plan.cluster_request(spec, bucket="sagemaker-x", role_arn="arn:aws:iam::123456789012:role/r",
                                   subnet_id=SUBNET, sg_id=SG, tags=plan.resource_tags(spec))
    request["InstanceGroups"][1].update(InstanceCount=1, OnStartDeepHealthChecks=["InstanceConnectivity"])
    with pytest.raises(CloudError, match="ValidationException: InstanceConnectivity deep health checks need at "
                                         "least 2 instances in instance group worker-group-1"):
        call(session.client("sagemaker"), "create_cluster", **request)
    with pytest.raises(CloudError, match="ValidationException: .*failed to satisfy constraint"):
        call(session.client("fsx"), "create_file_system",
                     **plan.fsx_request(spec, SUBNET, SG, [{"Key": "team", "Value": "a;b"}]))
    scratch = load_cluster_spec(None, {"name": cluster_name})
    request = plan.fsx_request(scratch, SUBNET, SG, [])
    request["LustreConfiguration"]["DeploymentType"] = "SCRATCH_2"
    request["LustreConfiguration"].pop("PerUnitStorageThroughput")
    with pytest.raises(CloudError, match="BadRequest: MetadataConfiguration is only supported for PERSISTENT_2"):
        call(session.client("fsx"), "create_file_system", **request)
    clusters = aws_gaps.raw_client("sagemaker").list_clusters()["ClusterSummaries"]
    assert cluster_name not in [c["ClusterName"] for c in clusters]

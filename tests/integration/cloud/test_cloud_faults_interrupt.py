"""Interrupting `up` after each of its steps, and tearing down a half-built cluster.

The interrupt is a KeyboardInterrupt (what Ctrl-C raises) thrown by a botocore
``after-call`` handler right after the named call returned: the resource exists in the
emulator but llamapod may not have recorded it yet. Emulator gaps are injected as in
test_cloud_up_flow.py (``aws_gaps``).
"""

from __future__ import annotations

import pytest

from fixtures.aws import NOTHING, ONE_CLUSTER, Interrupt, counts, install_on_sessions, resources_for
from llamapod.cloud.ledger import ledger_path
from llamapod.cloud.session import AwsSession
from llamapod.cloud.up import bring_up
from llamapod.config.cluster import load_cluster_spec

# Every step of up: (operation, which occurrence of it). Each case starts from nothing
# (a fresh cluster name), is interrupted right after that call, then runs `up` again.
STEPS = [("CreateStack", 1), ("CreateRole", 1), ("AttachRolePolicy", 1), ("PutRolePolicy", 2),
         ("CreateBucket", 1), ("PutBucketPolicy", 1), ("PutObject", 1), ("CreateFileSystem", 1),
         ("PutObject", "provisioning_parameters.json"), ("CreateCluster", 1), ("DescribeCluster", 3)]


def _up(name: str):
    return bring_up(AwsSession(region="us-east-1"), load_cluster_spec(None, {"name": name}))


@pytest.mark.parametrize("operation,occurrence", STEPS, ids=[f"{op}-{n}" for op, n in STEPS])
def test_up_interrupted_after_a_step_then_rerun_creates_exactly_one_of_each(aws_gaps, cluster_name, monkeypatch,
                                                                            operation, occurrence):
    if occurrence == "provisioning_parameters.json":
        from llamapod.lifecycle import upload_files

        occurrence = len(upload_files()) + 1  # the lifecycle scripts are uploaded first
    interrupt = Interrupt(operation, occurrence)
    install_on_sessions(monkeypatch, interrupt.install)
    with pytest.raises(KeyboardInterrupt):
        _up(cluster_name)
    assert interrupt.fired

    result = _up(cluster_name)
    assert result.cluster_status == "InService"
    assert counts(resources_for(aws_gaps.endpoint, cluster_name)) == ONE_CLUSTER
    for op in ("CreateStack", "CreateFileSystem", "CreateCluster"):
        assert len(aws_gaps.requests.get(op, [])) == 1, op


def test_down_after_a_half_finished_up_with_the_state_file_lost(aws_gaps, cluster_name, monkeypatch, run_cli):
    interrupt = Interrupt("CreateCluster")
    install_on_sessions(monkeypatch, interrupt.install)
    with pytest.raises(KeyboardInterrupt):
        _up(cluster_name)
    ledger_path(cluster_name).unlink()
    assert counts(resources_for(aws_gaps.endpoint, cluster_name)) == ONE_CLUSTER

    code, out, err = run_cli("down", cluster_name, "--yes", "--region", "us-east-1")
    assert code == 0, err
    for kind in ("HyperPod cluster", "FSx for Lustre file system", "S3 bucket (all versions)",
                 "IAM role (and its policies)", "CloudFormation stack (VPC, subnets, NAT, security group)"):
        assert kind in out
    assert counts(resources_for(aws_gaps.endpoint, cluster_name)) == NOTHING


def test_failed_cluster_shows_aws_message_and_what_to_do(aws_gaps, cluster_name, monkeypatch, run_cli):
    import io

    message = "Lifecycle script on_create.sh failed on instance i-0abc (exit code 1)"
    aws_gaps.cluster_failure = message
    code, out, err = run_cli("up", "--name", cluster_name)
    assert code == 1
    expected = (f"error: cluster {cluster_name} failed: {message}\n"
                "  hint: a node's lifecycle script failed: read its log in CloudWatch (/aws/sagemaker/Clusters/...), "
                "then `llamapod down` and `llamapod up` again\n")
    assert err.endswith(expected)
    # Re-running finds the failed cluster and says the same at once (it does not create another).
    code, out, err = run_cli("up", "--name", cluster_name)
    assert code == 1 and err.endswith(expected)
    assert len(aws_gaps.requests["CreateCluster"]) == 1

    # Without a terminal and without --yes, down refuses and deletes nothing.
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, out, err = run_cli("down", cluster_name)
    assert code == 2
    assert err.endswith("error: refusing to delete 6 resources without confirmation (no terminal to ask on)\n"
                        "  hint: re-run with --yes to delete without asking\n")
    assert counts(resources_for(aws_gaps.endpoint, cluster_name))["cluster"] == 1

    code, out, err = run_cli("down", cluster_name, "--yes")
    assert code == 0, err
    assert counts(resources_for(aws_gaps.endpoint, cluster_name)) == NOTHING

    code, out, err = run_cli("status", cluster_name, "--region", "us-east-1")
    assert code == 1
    assert err == (f"error: there is no HyperPod cluster named {cluster_name} in us-east-1\n"
                   "  hint: create it with `llamapod up`, or pass --region if it is elsewhere\n")

"""`down` interrupted and re-run, and `down` reporting what it could not remove.

Emulator and its injected gaps as in test_cloud_up_flow.py (``aws_gaps``); the interrupt
is a KeyboardInterrupt thrown by a botocore ``after-call`` handler.
"""

from __future__ import annotations

import pytest

from fixtures.aws import NOTHING, Interrupt, _raw, counts, install_on_sessions, resources_for
from llamapod.cloud.down import take_inventory, tear_down
from llamapod.cloud.ledger import Ledger, ledger_path
from llamapod.cloud.session import AwsSession
from llamapod.cloud.up import bring_up
from llamapod.config.cluster import load_cluster_spec


def test_down_interrupted_after_deleting_the_file_system_then_rerun(aws_gaps, cluster_name, monkeypatch, run_cli):
    bring_up(AwsSession(region="us-east-1"), load_cluster_spec(None, {"name": cluster_name}))
    interrupt = Interrupt("DeleteFileSystem")
    install_on_sessions(monkeypatch, interrupt.install)
    session = AwsSession(region="us-east-1")
    ledger = Ledger.load(cluster_name)
    with pytest.raises(KeyboardInterrupt):
        tear_down(session, take_inventory(session, cluster_name, ledger), ledger)
    assert counts(resources_for(aws_gaps.endpoint, cluster_name))["cluster"] == 0
    assert ledger_path(cluster_name).exists()  # kept until the proof succeeds

    code, out, err = run_cli("down", cluster_name, "--yes")
    assert code == 0, err
    assert "HyperPod cluster" not in out  # already gone: not listed again
    assert counts(resources_for(aws_gaps.endpoint, cluster_name)) == NOTHING
    assert not ledger_path(cluster_name).exists()


def test_down_lists_what_is_left_with_a_console_link(aws_gaps, cluster_name, run_cli):
    # A VPC tagged for the cluster outside its stack: llamapod did not make it, so it is
    # not deleted, but the proof must not pretend it is gone.
    vpc = _raw(aws_gaps.endpoint, "ec2").create_vpc(
        CidrBlock="10.9.0.0/16",
        TagSpecifications=[{"ResourceType": "vpc", "Tags": [{"Key": "llamapod:cluster", "Value": cluster_name}]}],
    )["Vpc"]["VpcId"]
    code, out, err = run_cli("down", cluster_name, "--yes", "--region", "us-east-1")
    assert code == 1
    link = f"https://us-east-1.console.aws.amazon.com/vpcconsole/home#VpcDetails:VpcId={vpc}?region=us-east-1"
    assert out.splitlines()[1].split() == ["ec2:vpc", vpc, link]
    assert err.endswith(f"error: 1 resource(s) of cluster {cluster_name} still exist\n"
                        "  hint: run `llamapod down` again; if they stay, delete them from the console links above\n")
    _raw(aws_gaps.endpoint, "ec2").delete_vpc(VpcId=vpc)


def test_down_interrupted_after_the_cluster_still_deletes_hyperpods_log_group(aws_gaps, cluster_name, monkeypatch,
                                                                               run_cli):
    """The cluster is gone, and with it the id in the log group's name: the re-run finds the
    untagged group by the cluster's name, as HyperPod names it."""
    bring_up(AwsSession(region="us-east-1"), load_cluster_spec(None, {"name": cluster_name}))
    interrupt = Interrupt("DeleteCluster")
    install_on_sessions(monkeypatch, interrupt.install)
    session = AwsSession(region="us-east-1")
    ledger = Ledger.load(cluster_name)
    with pytest.raises(KeyboardInterrupt):
        tear_down(session, take_inventory(session, cluster_name, ledger), ledger)
    assert counts(resources_for(aws_gaps.endpoint, cluster_name))["log_group"] == 1
    ledger_path(cluster_name).unlink()  # and the state file lost too

    code, out, err = run_cli("down", cluster_name, "--yes", "--region", "us-east-1")
    assert code == 0, err
    assert f"/aws/sagemaker/Clusters/{cluster_name}/" in out
    assert counts(resources_for(aws_gaps.endpoint, cluster_name)) == NOTHING


def test_the_proof_lists_what_hyperpod_leaves_untagged(aws_gaps, cluster_name, run_cli):
    """A network interface HyperPod left in the subnet (no llamapod tag) and its log group count."""
    from llamapod.cloud.down import leftovers

    result = bring_up(AwsSession(region="us-east-1"), load_cluster_spec(None, {"name": cluster_name}))
    ec2 = _raw(aws_gaps.endpoint, "ec2")
    eni = ec2.create_network_interface(SubnetId=result.network.subnet_id,
                                       Description="HyperPod node")["NetworkInterface"]["NetworkInterfaceId"]
    kinds = {(item.kind, item.id) for item in leftovers(AwsSession(region="us-east-1"), cluster_name)}
    assert ("ec2:network-interface", eni) in kinds
    assert ("logs:log-group", f"/aws/sagemaker/Clusters/{cluster_name}/{cluster_name}") in kinds
    assert ("ec2:elastic-ip", resources_for(aws_gaps.endpoint, cluster_name)["elastic_ip"][0]) in kinds
    ec2.delete_network_interface(NetworkInterfaceId=eni)
    code, out, err = run_cli("down", cluster_name, "--yes", "--region", "us-east-1")
    assert code == 0, err
    assert counts(resources_for(aws_gaps.endpoint, cluster_name)) == NOTHING


def test_the_proof_finds_the_lifecycle_bucket_by_name_before_it_is_tagged(aws_warm, cluster_name):
    """`up` creates the bucket, then tags it: interrupted in between, the bucket carries no tag.
    The inventory finds it by its name; the proof that nothing is left must too."""
    from llamapod.cloud import plan
    from llamapod.cloud.down import leftovers, naming_spec

    session = AwsSession(region="us-east-1")
    bucket = plan.lifecycle_bucket_name(naming_spec(cluster_name, "us-east-1"), session.account_id)
    s3 = _raw(aws_warm, "s3")
    s3.create_bucket(Bucket=bucket)
    try:
        kinds = {(item.kind, item.id) for item in leftovers(session, cluster_name)}
        assert ("s3:bucket", bucket) in kinds
    finally:
        s3.delete_bucket(Bucket=bucket)

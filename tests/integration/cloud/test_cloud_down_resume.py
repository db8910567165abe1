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
    assert err.endswith(f"error: 1 resource(s) tagged llamapod:cluster={cluster_name} still exist\n"
                        "  hint: run `llamapod down` again; if they stay, delete them from the console links above\n")
    _raw(aws_gaps.endpoint, "ec2").delete_vpc(VpcId=vpc)

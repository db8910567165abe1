"""`up` puts the execution role within llamapod's permissions boundary, against the emulator."""

from __future__ import annotations

import json

import pytest

from fixtures.aws import _raw
from llamapod.cloud import iam, policies
from llamapod.cloud.ledger import Ledger
from llamapod.cloud.session import AwsSession
from llamapod.config.cluster import ClusterSpec
from llamapod.errors import CloudError


def _ensure(cluster_name: str):
    session = AwsSession(region="us-east-1")
    spec = ClusterSpec(name=cluster_name, region="us-east-1")
    arn = iam.ensure_role(session, spec, "sagemaker-llamapod-x", [{"Key": "llamapod:cluster", "Value": cluster_name}],
                          Ledger.open(cluster_name, "us-east-1"))
    return session, spec, arn


def test_the_role_is_created_within_the_boundary(aws_warm, cluster_name):
    session, spec, _ = _ensure(cluster_name)
    raw = _raw(aws_warm, "iam")
    role = raw.get_role(RoleName=iam.role_name(spec))["Role"]
    boundary = policies.boundary_arn(session.account_id)
    assert role["PermissionsBoundary"]["PermissionsBoundaryArn"] == boundary
    version = raw.get_policy(PolicyArn=boundary)["Policy"]["DefaultVersionId"]
    document = raw.get_policy_version(PolicyArn=boundary, VersionId=version)["PolicyVersion"]["Document"]
    assert json.loads(json.dumps(document)) == policies.permissions_boundary(session.account_id)
    # A second `up` (or another cluster) finds it and creates nothing new.
    _ensure(cluster_name)
    assert raw.get_policy(PolicyArn=boundary)["Policy"]["DefaultVersionId"] == version
    iam.delete_role(session, iam.role_name(spec))


def test_a_role_made_without_the_boundary_gets_it(aws_warm, cluster_name):
    """Roles made by earlier versions: the operator may change only roles within the boundary."""
    session = AwsSession(region="us-east-1")
    spec = ClusterSpec(name=cluster_name, region="us-east-1")
    raw = _raw(aws_warm, "iam")
    raw.create_role(RoleName=iam.role_name(spec),
                    AssumeRolePolicyDocument=json.dumps(policies.execution_role_trust_policy(session.account_id)))
    _ensure(cluster_name)
    role = raw.get_role(RoleName=iam.role_name(spec))["Role"]
    assert role["PermissionsBoundary"]["PermissionsBoundaryArn"] == policies.boundary_arn(session.account_id)
    iam.delete_role(session, iam.role_name(spec))
    assert iam.get_role(session, iam.role_name(spec)) is None


def test_a_boundary_changed_outside_llamapod_stops_up(aws, cluster_name):
    session = AwsSession(region="us-east-1")
    broader = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    raw = _raw(aws, "iam")
    arn = raw.create_policy(PolicyName=policies.BOUNDARY_NAME, PolicyDocument=json.dumps(broader))["Policy"]["Arn"]
    try:
        with pytest.raises(CloudError) as stopped:
            _ensure(cluster_name)
        assert stopped.value.code == "BoundaryChanged"
        assert "is not llamapod's document" in str(stopped.value)
        assert iam.get_role(session, iam.role_name(ClusterSpec(name=cluster_name, region="us-east-1"))) is None
    finally:
        raw.delete_policy(PolicyArn=arn)  # the emulator is shared with tests that do not reset it

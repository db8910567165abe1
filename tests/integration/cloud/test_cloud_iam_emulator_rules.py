"""The emulator refuses the trust policies AWS refuses, and accepts llamapod's (fixtures.aws_iam)."""

from __future__ import annotations

import json

import pytest

from fixtures.aws_iam import trust_policy_problem
from llamapod.cloud import policies
from llamapod.cloud.session import AwsSession, call
from llamapod.errors import CloudError

ACCOUNT = "123456789012"


def _trust(**statement) -> str:
    base = {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}
    base.update(statement)
    return json.dumps({"Version": "2012-10-17", "Statement": [{k: v for k, v in base.items() if v is not None}]})


@pytest.mark.parametrize("document, problem", [
    (_trust(Principal={"Service": "sagemaker"}), "Invalid principal in policy"),
    (_trust(Principal={"Service": "SageMaker.AmazonAWS.com "}), "Invalid principal in policy"),
    (_trust(Principal={"AWS": "arn:aws:iam::12345:root"}), "Invalid principal in policy"),
    (_trust(Principal={"Robot": "x"}), "Invalid principal in policy"),
    (_trust(Principal=None), "Missing required field Principal"),
    (_trust(Resource="*"), "Has prohibited field Resource"),
    (_trust(Action="s3:GetObject"), "AssumeRole policy may only specify STS AssumeRole actions."),
    (_trust(Condition={"StringEquals": {"sagemaker:SourceAccount": ACCOUNT}}),
     "Condition key sagemaker:SourceAccount is never set for a role assumption (neither global nor sts)"),
    (_trust(Condition={"StringEquals": {"aws:SourceAcount": ACCOUNT}}),
     "Condition key aws:SourceAcount is never set for a role assumption (neither global nor sts)"),
    ("{not json", "Syntax errors in policy."),
])
def test_documented_invalid_trust_policies_are_named(document, problem):
    assert trust_policy_problem(document) == problem


@pytest.mark.parametrize("document", [
    json.dumps(policies.execution_role_trust_policy(ACCOUNT)),
    _trust(Condition={"StringEquals": {"aws:SourceAccount": ACCOUNT}, "ArnLike": {"aws:SourceArn": "arn:aws:*"}}),
    _trust(Principal={"AWS": f"arn:aws:iam::{ACCOUNT}:role/ci"}, Condition={"StringEquals": {"sts:ExternalId": "x"}}),
    _trust(Principal={"Federated": "arn:aws:iam::1:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/AB"},
           Action="sts:AssumeRoleWithWebIdentity",
           Condition={"StringEquals": {"oidc.eks.us-east-1.amazonaws.com/id/AB:sub": "system:serviceaccount:a:b"}}),
])
def test_valid_trust_policies_pass(document):
    assert trust_policy_problem(document) is None


def test_the_emulator_answers_like_iam(aws_warm, cluster_name):
    iam = AwsSession(region="us-east-1").client("iam")
    with pytest.raises(CloudError) as refused:
        call(iam, "create_role", RoleName=f"llamapod-{cluster_name}",
             AssumeRolePolicyDocument=_trust(Principal={"Service": "sagemaker"}))
    assert (refused.value.code, refused.value.aws_message) == ("MalformedPolicyDocument", "Invalid principal in policy")
    role = call(iam, "create_role", RoleName=f"llamapod-{cluster_name}",
                AssumeRolePolicyDocument=json.dumps(policies.execution_role_trust_policy(ACCOUNT)))["Role"]
    assert role["RoleName"] == f"llamapod-{cluster_name}"
    with pytest.raises(CloudError) as refused:
        call(iam, "update_assume_role_policy", RoleName=f"llamapod-{cluster_name}", PolicyDocument=_trust(Resource="*"))
    assert refused.value.code == "MalformedPolicyDocument"
    call(iam, "delete_role", RoleName=f"llamapod-{cluster_name}")

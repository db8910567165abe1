"""The test-side IAM evaluator decides as the IAM User Guide's evaluation-logic pages say."""

from __future__ import annotations

import pytest

from fixtures.iam_eval import ALLOW, EXPLICIT_DENY, IMPLICIT_DENY, Request, allowed, decide, evaluate

ROLE = "arn:aws:iam::123456789012:role/llamapod-x"


def _policy(*statements):
    return {"Version": "2012-10-17", "Statement": list(statements)}


def _allow(action="*", resource="*", condition=None):
    statement = {"Effect": "Allow", "Action": action, "Resource": resource}
    if condition:
        statement["Condition"] = condition
    return statement


def test_nothing_allowed_is_an_implicit_deny():
    assert decide(_policy(_allow("s3:GetObject")), Request("s3:PutObject", "arn:aws:s3:::b/k")) == IMPLICIT_DENY


def test_an_explicit_deny_beats_any_allow():
    policy = _policy(_allow("iam:*"), {"Effect": "Deny", "Action": "iam:DeletePolicy", "Resource": "*"})
    assert decide(policy, Request("iam:DeletePolicy", "arn:aws:iam::1:policy/p")) == EXPLICIT_DENY
    # A deny in a second policy wins as well.
    other = _policy({"Effect": "Deny", "Action": "s3:*", "Resource": "*"})
    assert evaluate([_policy(_allow()), other], Request("s3:GetObject", "arn:aws:s3:::b/k")) == EXPLICIT_DENY


def test_actions_match_case_insensitively_with_wildcards():
    policy = _policy(_allow(["ec2:Describe*", "iam:Get?ole"]))
    assert allowed(policy, Request("EC2:describeVPCs", "*"))
    assert allowed(policy, Request("iam:GetRole", ROLE))
    assert not allowed(policy, Request("iam:GetRolePolicy", ROLE))
    assert not allowed(_policy({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}),
                       Request("iam:CreateRole", ROLE))


def test_resource_arns_match_part_by_part():
    policy = _policy(_allow("iam:CreateRole", "arn:aws:iam::123456789012:role/llamapod-*"))
    assert allowed(policy, Request("iam:CreateRole", ROLE))
    assert not allowed(policy, Request("iam:CreateRole", "arn:aws:iam::123456789012:role/admin"))
    assert not allowed(policy, Request("iam:CreateRole", "arn:aws:iam::999999999999:role/llamapod-x"))
    # A wildcard in the region part does not swallow the account part.
    ec2 = _policy(_allow("ec2:DeleteVpc", "arn:aws:ec2:*:123456789012:vpc/*"))
    assert allowed(ec2, Request("ec2:DeleteVpc", "arn:aws:ec2:us-east-1:123456789012:vpc/vpc-1"))
    assert not allowed(ec2, Request("ec2:DeleteVpc", "arn:aws:ec2:us-east-1:999999999999:vpc/vpc-1"))
    # ARNs are case-sensitive.
    assert not allowed(policy, Request("iam:CreateRole", "arn:aws:iam::123456789012:role/LLAMAPOD-x"))


def test_values_of_one_key_are_alternatives_and_keys_must_all_hold():
    condition = {"StringEquals": {"iam:PassedToService": ["sagemaker.amazonaws.com", "ec2.amazonaws.com"],
                                  "aws:RequestedRegion": "us-east-1"}}
    policy = _policy(_allow("iam:PassRole", ROLE, condition))
    assert allowed(policy, Request("iam:PassRole", ROLE, {"iam:PassedToService": "ec2.amazonaws.com",
                                                          "aws:RequestedRegion": "us-east-1"}))
    assert not allowed(policy, Request("iam:PassRole", ROLE, {"iam:PassedToService": "ec2.amazonaws.com",
                                                              "aws:RequestedRegion": "eu-west-1"}))
    assert not allowed(policy, Request("iam:PassRole", ROLE, {"iam:PassedToService": "lambda.amazonaws.com",
                                                              "aws:RequestedRegion": "us-east-1"}))


@pytest.mark.parametrize("operator, present, absent", [
    ("StringEquals", ALLOW, IMPLICIT_DENY),
    ("StringLike", ALLOW, IMPLICIT_DENY),
    ("StringEqualsIfExists", ALLOW, ALLOW),        # "...IfExists": absent key -> true
    ("StringNotEquals", IMPLICIT_DENY, ALLOW),     # negated operators hold when the key is absent
    ("ForAllValues:StringEquals", ALLOW, ALLOW),   # vacuously true for no values
    ("ForAnyValue:StringEquals", ALLOW, IMPLICIT_DENY),
])
def test_absent_keys_follow_the_documented_table(operator, present, absent):
    policy = _policy(_allow("ec2:CreateVpc", "*", {operator: {"aws:RequestTag/team": "ml"}}))
    assert decide(policy, Request("ec2:CreateVpc", "*", {"aws:RequestTag/team": "ml"})) == present
    assert decide(policy, Request("ec2:CreateVpc", "*", {})) == absent


def test_null_tests_presence():
    must_have = _policy(_allow("ec2:DeleteVpc", "*", {"Null": {"aws:ResourceTag/llamapod:cluster": "false"}}))
    assert allowed(must_have, Request("ec2:DeleteVpc", "*", {"aws:ResourceTag/llamapod:cluster": "c1"}))
    assert not allowed(must_have, Request("ec2:DeleteVpc", "*", {}))


def test_like_and_arn_operators():
    like = _policy(_allow("s3:GetObject", "*", {"StringLike": {"aws:userid": "AIDA*:alice?"}}))
    assert allowed(like, Request("s3:GetObject", "*", {"aws:userid": "AIDAXYZ:alice1"}))
    assert not allowed(like, Request("s3:GetObject", "*", {"aws:userid": "AIDAXYZ:alice12"}))
    arn = _policy(_allow("iam:AttachRolePolicy", ROLE,
                         {"ArnEquals": {"iam:PolicyARN": "arn:aws:iam::aws:policy/ReadOnlyAccess"}}))
    assert allowed(arn, Request("iam:AttachRolePolicy", ROLE, {"iam:PolicyARN": "arn:aws:iam::aws:policy/ReadOnlyAccess"}))
    assert not allowed(arn, Request("iam:AttachRolePolicy", ROLE,
                                    {"iam:PolicyARN": "arn:aws:iam::aws:policy/AdministratorAccess"}))


def test_policy_variables_take_the_request_values():
    policy = _policy(_allow("s3:GetObject", "arn:aws:s3:::b/*",
                            {"StringEquals": {"aws:ResourceAccount": "${aws:PrincipalAccount}"}}))
    ok = {"aws:ResourceAccount": "111111111111", "aws:PrincipalAccount": "111111111111"}
    other = {"aws:ResourceAccount": "222222222222", "aws:PrincipalAccount": "111111111111"}
    assert allowed(policy, Request("s3:GetObject", "arn:aws:s3:::b/k", ok))
    assert not allowed(policy, Request("s3:GetObject", "arn:aws:s3:::b/k", other))


def test_a_permissions_boundary_caps_what_identity_policies_allow():
    admin = _policy(_allow())
    boundary = _policy(_allow("s3:*"))
    assert allowed(admin, Request("s3:GetObject", "arn:aws:s3:::b/k"), boundary)
    assert not allowed(admin, Request("iam:CreateUser", "arn:aws:iam::1:user/u"), boundary)
    # The boundary grants nothing by itself.
    assert not allowed(_policy(_allow("ec2:*")), Request("s3:GetObject", "arn:aws:s3:::b/k"), boundary)


def test_unknown_operators_are_refused_not_guessed():
    policy = _policy(_allow("s3:GetObject", "*", {"DateGreaterThan": {"aws:CurrentTime": "2020-01-01T00:00:00Z"}}))
    with pytest.raises(NotImplementedError):
        decide(policy, Request("s3:GetObject", "*", {"aws:CurrentTime": "2030-01-01T00:00:00Z"}))

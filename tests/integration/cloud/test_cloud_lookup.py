"""Reading AWS one way: a missing resource is None in every service llamapod looks things up in,
and a listing is every page, against the emulator."""

from __future__ import annotations

import json

import pytest

from fixtures.aws import _raw
from llamapod.cloud.lookup import call_or_none, is_missing, paginate, paginate_or_empty
from llamapod.cloud.session import AwsSession
from llamapod.errors import CloudError


def test_every_service_answers_a_missing_resource_with_none(aws_gaps, cluster_name):
    session = AwsSession(region="us-east-1")
    missing = {
        "sagemaker": ("describe_cluster", {"ClusterName": cluster_name}),
        "fsx": ("describe_file_systems", {"FileSystemIds": ["fs-0123456789abcdef0"]}),
        "iam": ("get_role", {"RoleName": f"llamapod-{cluster_name}"}),
        "cloudformation": ("describe_stacks", {"StackName": f"llamapod-{cluster_name}-network"}),
        "s3": ("head_bucket", {"Bucket": f"sagemaker-llamapod-{cluster_name}"}),
        "logs": ("delete_log_group", {"logGroupName": f"/aws/sagemaker/Clusters/{cluster_name}/abc"}),
    }
    for service, (op, request) in missing.items():
        assert call_or_none(session.client(service), op, **request) is None, f"{service} {op}"
    assert paginate_or_empty(session.client("iam"), "list_role_tags", "Tags", RoleName=f"llamapod-{cluster_name}") == []


def test_what_exists_is_answered_and_other_failures_still_raise(aws_warm, cluster_name):
    session = AwsSession(region="us-east-1")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "sagemaker.amazonaws.com"}}]}
    name = f"llamapod-{cluster_name}"
    _raw(aws_warm, "iam").create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust),
                                      Tags=[{"Key": "team", "Value": "ml"}])
    iam = session.client("iam")
    assert call_or_none(iam, "get_role", RoleName=name)["Role"]["RoleName"] == name
    assert paginate_or_empty(iam, "list_role_tags", "Tags", RoleName=name) == [{"Key": "team", "Value": "ml"}]
    with pytest.raises(CloudError) as info:  # a malformed request is not a missing resource
        call_or_none(iam, "get_role", RoleName="")
    assert info.value.code == "ParamValidation"
    _raw(aws_warm, "iam").delete_role(RoleName=name)


def test_a_listing_walks_every_page(aws_warm, cluster_name):
    session = AwsSession(region="us-east-1")
    iam = session.client("iam")
    trust = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Service": "sagemaker.amazonaws.com"}}]})
    path = f"/{cluster_name}/"
    names = [f"llamapod-{cluster_name}-{i}" for i in range(5)]
    for name in names:
        _raw(aws_warm, "iam").create_role(RoleName=name, Path=path, AssumeRolePolicyDocument=trust)
    requests = []
    iam.meta.events.register("before-call.iam.ListRoles", lambda **_: requests.append(1))
    try:
        roles = paginate(iam, "list_roles", "Roles", PathPrefix=path, PaginationConfig={"PageSize": 2})
    finally:
        iam.meta.events.unregister("before-call.iam.ListRoles")
    assert sorted(role["RoleName"] for role in roles) == names
    assert len(requests) == 3  # 2 + 2 + 1: every page was asked for
    for name in names:
        _raw(aws_warm, "iam").delete_role(RoleName=name)


def test_a_failure_on_a_page_is_that_operations_cloud_error(aws_warm, cluster_name):
    session = AwsSession(region="us-east-1")
    with pytest.raises(CloudError) as info:
        paginate(session.client("cloudformation"), "describe_stacks", "Stacks", StackName=f"x{cluster_name}")
    assert (info.value.op, info.value.code) == ("describe_stacks", "ValidationError")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("service, code, message, missing", [
    ("cloudformation", "ValidationError", "Stack with id llamapod-x-network does not exist", True),
    ("cloudformation", "ValidationError", "Template format error: unresolved resource dependencies", False),
    ("sagemaker", "ResourceNotFound", "Cluster x not found", True),
    ("sagemaker", "ValidationException", "Could not find cluster 'x'", True),
    ("sagemaker", "ValidationException", "Value 'x_' at 'clusterName' failed to satisfy constraint", False),
    ("iam", "NoSuchEntity", "The role with name x cannot be found.", True),
    ("s3", "NoSuchEntity", "", False),  # IAM's word for missing means nothing to S3
    ("s3", "404", "Not Found", True),
    ("fsx", "FileSystemNotFound", "File system fs-1 was not found", True),
    ("fsx", "AccessDenied", "not found in your permissions", False),
])
def test_missing_is_each_services_own_answer(service, code, message, missing):
    assert is_missing(CloudError("op", code, message), service) is missing

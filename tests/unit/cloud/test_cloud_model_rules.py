"""The stand-in holds every request to the whole service model, as the services do
(tests/fixtures/aws_model.py): patterns, maxima, enums and list sizes that botocore's
client-side validation skips are refused before a request reaches the emulator."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError

from fixtures.aws_model import ModelRules, violations


def _client(service: str):
    client = boto3.client(service, region_name="us-east-1", endpoint_url="http://127.0.0.1:9",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    ModelRules().install(client)
    return client


def test_a_cluster_name_outside_the_pattern_is_refused_like_sagemaker_refuses_it():
    with pytest.raises(ClientError) as caught:
        _client("sagemaker").describe_cluster(ClusterName="my_cluster")
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert "regular expression pattern" in caught.value.response["Error"]["Message"]


@pytest.mark.parametrize("service,operation,params,found", [
    # SageMaker ClusterThreadsPerCore: 1-2; ClusterInstanceGroupName pattern.
    ("sagemaker", "CreateCluster", {"ClusterName": "a", "InstanceGroups": [
        {"InstanceGroupName": "g_1", "InstanceType": "ml.c5.xlarge", "InstanceCount": 1, "ThreadsPerCore": 3,
         "ExecutionRole": "arn:aws:iam::123456789012:role/r",
         "LifeCycleConfig": {"SourceS3Uri": "s3://sagemaker-b/src", "OnCreate": "on_create.sh"}}]}, 2),
    # IAM roleNameType: at most 64.
    ("iam", "CreateRole", {"RoleName": "r" * 65, "AssumeRolePolicyDocument": "{}"}, 1),
    # IAM compares tag keys ignoring case.
    ("iam", "TagRole", {"RoleName": "r", "Tags": [{"Key": "Team", "Value": "a"}, {"Key": "team", "Value": "b"}]}, 1),
    # FSx Tags: at most 50, keys distinct.
    ("fsx", "TagResource", {"ResourceARN": "arn:aws:fsx:us-east-1:123456789012:file-system/fs-0123456789abcdef0",
                            "Tags": [{"Key": "Name", "Value": str(i % 2)} for i in range(51)]}, 2),
    # S3: 50 tags on a bucket (a limit of the service, not of its model).
    ("s3", "PutBucketTagging", {"Bucket": "b", "Tagging": {"TagSet": [{"Key": f"k{i}", "Value": ""}
                                                                       for i in range(51)]}}, 1),
    # An enum: FSx DeploymentType.
    ("fsx", "CreateFileSystem", {"FileSystemType": "LUSTRE", "SubnetIds": ["subnet-0123456789abcdef0"],
                                 "LustreConfiguration": {"DeploymentType": "PERSISTENT_3"}}, 1),
])
def test_each_kind_of_constraint_is_enforced(service, operation, params, found):
    assert len(violations(service, operation, params)) == found


def test_a_valid_request_passes():
    assert violations("sagemaker", "DescribeCluster", {"ClusterName": "ml-4-g5-48x-cluster"}) == []


def test_stack_parameters_are_held_to_the_templates_constraints():
    from llamapod.cloud import plan
    from llamapod.config.cluster import spec_from_table

    spec = spec_from_table({})
    params = {"StackName": "s", "TemplateBody": plan.network_template(),
              "Parameters": plan.network_parameters(spec, "use1-az4")}
    assert violations("cloudformation", "CreateStack", params) == []
    bad = [p if p["ParameterKey"] != "AvailabilityZoneId" else {**p, "ParameterValue": "us-east-1a"}
           for p in params["Parameters"]]
    assert violations("cloudformation", "CreateStack", {**params, "Parameters": bad}) == [
        "Parameter 'AvailabilityZoneId' must match pattern [a-z]{2,5}[0-9]+-az[0-9]+"]

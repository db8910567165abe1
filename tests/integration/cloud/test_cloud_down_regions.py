"""A cluster of the same name in another region is not this one's.

S3's ListBuckets and IAM answer for every region, and llamapod tags a bucket and a role
``llamapod:cluster=<name>`` whatever the region. `down` in one region must neither delete nor
count the bucket and role of the same-named cluster in another (they are still in use there).
"""

from __future__ import annotations

import json

import boto3

from fixtures.aws import _raw
from llamapod.cloud import plan
from llamapod.cloud.down import leftovers, naming_spec, take_inventory
from llamapod.cloud.session import AwsSession


def test_down_leaves_the_same_named_cluster_of_another_region_alone(aws_warm, cluster_name):
    session = AwsSession(region="us-east-1")
    west = naming_spec(cluster_name, "us-west-2")
    tags = plan.resource_tags(west)
    s3 = boto3.client("s3", endpoint_url=aws_warm, region_name="us-west-2", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    bucket = plan.lifecycle_bucket_name(west, session.account_id)
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tags})
    iam = _raw(aws_warm, "iam")
    role = plan.execution_role_name(west)
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(plan.execution_role_trust_policy(
        session.account_id)), Tags=tags)
    try:
        inventory = take_inventory(session, cluster_name, None)
        assert (inventory.buckets, inventory.roles) == ([], [])
        found = {item.id for item in leftovers(session, cluster_name)}
        assert bucket not in found and role not in found
    finally:
        iam.delete_role(RoleName=role)
        s3.delete_bucket(Bucket=bucket)

"""init -> plan -> up -> status -> down against the AWS emulator, with the seed's cluster.

The emulator is moto's HTTP server; what it lacks (cluster Creating -> InService, FSx
Lifecycle and MountName, stack creation time, CloudFormation deleting route tables/NAT/
IGW/endpoints, bucket-policy Conditions) is injected at the botocore level by
``tests/fixtures/aws.py`` (``aws_gaps``), faithful to the documented APIs. Waits run on a
virtual clock, so the minutes AWS takes pass instantly.
"""

from __future__ import annotations

import json

from llamapod.cloud import plan
from llamapod.config.cluster import load_cluster_spec

from fixtures.aws import NOTHING, ONE_CLUSTER, CallLog, _mount_name, _raw, counts, install_on_sessions, resources_for

SEED_GROUP_KEYS = {"InstanceGroupName", "InstanceType", "InstanceCount", "LifeCycleConfig", "ExecutionRole",
                   "ThreadsPerCore"}


def test_init_plan_up_status_down_with_the_seed_cluster(aws_gaps, cluster_name, run_cli, tmp_path, monkeypatch):
    calls = CallLog()
    install_on_sessions(monkeypatch, calls.install)
    monkeypatch.chdir(tmp_path)
    name, endpoint = cluster_name, aws_gaps.endpoint
    code, _, err = run_cli("init", "--name", name)
    assert code == 0, err
    code, _, err = run_cli("plan", "--out", "plan")
    assert code == 0, err
    planned = json.loads((tmp_path / "plan" / "cluster-config.json").read_text())

    code, out, err = run_cli("up")
    assert code == 0, err
    found = resources_for(endpoint, name)
    assert counts(found) == ONE_CLUSTER

    # The cluster-config sent is the seed's (and exactly what `plan` wrote, placeholders filled in).
    sent = aws_gaps.requests["CreateCluster"]
    assert len(sent) == 1
    request = sent[0]
    stack = _raw(endpoint, "cloudformation").describe_stacks(StackName=f"llamapod-{name}-network")["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert request["VpcConfig"] == {"SecurityGroupIds": [outputs["SecurityGroupId"]],
                                    "Subnets": [outputs["PrivateSubnetId"]]}
    planned["VpcConfig"] = request["VpcConfig"]
    assert request == planned
    bucket = found["bucket"][0]
    role_arn = _raw(endpoint, "iam").get_role(RoleName=found["role"][0])["Role"]["Arn"]
    groups = [(g["InstanceGroupName"], g["InstanceType"], g["InstanceCount"]) for g in request["InstanceGroups"]]
    assert groups == [("controller-machine", "ml.c5.xlarge", 1), ("worker-group-1", "ml.g5.48xlarge", 4)]
    for group in request["InstanceGroups"]:
        assert SEED_GROUP_KEYS <= set(group)
        assert group["LifeCycleConfig"] == {"SourceS3Uri": f"s3://{bucket}/src", "OnCreate": "on_create.sh"}
        assert group["ExecutionRole"] == role_arn and group["ThreadsPerCore"] == 1
    assert {"Key": "llamapod:cluster", "Value": name} in request["Tags"]

    # provisioning_parameters.json: the seed's shape, with the FSx names from the create response.
    fs_id = found["file_system"][0]
    fsx_request = aws_gaps.requests["CreateFileSystem"][0]
    assert fsx_request["SubnetIds"] == [outputs["PrivateSubnetId"]]
    s3 = _raw(endpoint, "s3")
    params = json.loads(s3.get_object(Bucket=bucket, Key="src/provisioning_parameters.json")["Body"].read())
    assert params == {"version": "1.0.0", "workload_manager": "slurm", "controller_group": "controller-machine",
                      "worker_groups": [{"instance_group_name": "worker-group-1", "partition_name": "ml.g5.48xlarge"}],
                      "fsx_dns_name": f"{fs_id}.fsx.us-east-1.amazonaws.com",
                      "fsx_mountname": _mount_name(fs_id), "cluster_user": "ubuntu"}
    # The file system was asked for with the cluster's idempotency token and the reference's metadata mode.
    assert fsx_request["ClientRequestToken"] == plan.fsx_client_token(load_cluster_spec(None, {"name": name}),
                                                                      stack["StackId"])
    assert fsx_request["LustreConfiguration"]["MetadataConfiguration"] == {"Mode": "AUTOMATIC"}
    # HyperPod's log group exists, untagged, as HyperPod creates it.
    (log_group,) = found["log_group"]
    assert log_group == f"/aws/sagemaker/Clusters/{name}/{request_arn_id(endpoint, name)}"
    assert s3.head_object(Bucket=bucket, Key="src/on_create.sh")["ContentLength"] > 0
    # The bucket is secure by default: public access blocked, encrypted, TLS-only policy as sent.
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values())
    assert s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    (policy,) = aws_gaps.requests["PutBucketPolicy"]
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}

    # Live progress and the way to use the cluster.
    assert f"cluster {name}: Creating (nodes: 5 Pending)" in err
    assert f"cluster {name}: InService (nodes: 5 Running)" in err
    assert f"FSx {fs_id}: AVAILABLE" in err
    assert f"  llamapod ssh --cluster {name}" in out
    assert f"  llamapod down {name}" in out

    code, out, err = run_cli("status", name, "--json")
    assert code == 0, err
    status = json.loads(out)
    assert (status["status"], status["node_counts"], status["fsx"]["state"]) == ("InService", {"Running": 5},
                                                                                  "AVAILABLE")
    assert [(g["name"], g["current"]) for g in status["instance_groups"]] == [("controller-machine", 1),
                                                                              ("worker-group-1", 4)]
    assert status["hourly_usd"] == round(0.238 + 4 * 20.36, 2)

    # A second `up` finds everything and creates nothing.
    code, out, err = run_cli("up")
    assert code == 0, err
    assert len(aws_gaps.requests["CreateCluster"]) == 1 and len(aws_gaps.requests["CreateStack"]) == 1
    assert len(aws_gaps.requests["CreateFileSystem"]) == 1

    calls.operations.clear()
    code, out, err = run_cli("down", name, "--yes")
    assert code == 0, err
    listed = [line.split("  ")[0] for line in out.splitlines()[1:]]
    assert listed == ["HyperPod cluster", "FSx for Lustre file system", "S3 bucket (all versions)",
                      "CloudWatch log group (HyperPod's node logs)",
                      "CloudFormation stack (VPC, subnets, NAT, security group)", "IAM role (and its policies)"]
    assert log_group in out
    assert (f"✓ deleted cluster {name}: nothing tagged llamapod:cluster={name} or made by HyperPod for it is left "
            f"in us-east-1") in err
    assert counts(resources_for(endpoint, name)) == NOTHING
    assert not (tmp_path / "llamapod-home" / "clusters" / f"{name}.json").exists()
    # The role goes last: HyperPod needs it to remove the nodes' network interfaces, which keep
    # the VPC from deletion until they are gone.
    deletes = [op for op in calls.operations if op.startswith("Delete") and op != "DeleteObjects"]
    assert deletes == ["DeleteCluster", "DeleteFileSystem", "DeleteBucket", "DeleteLogGroup", "DeleteStack",
                       "DeleteRolePolicy", "DeleteRolePolicy", "DeleteRole"]


def request_arn_id(endpoint: str, name: str) -> str:
    """The id at the end of the cluster's ARN (12 characters on AWS; the name in the emulator)."""
    return _raw(endpoint, "sagemaker").describe_cluster(ClusterName=name)["ClusterArn"].rsplit("/", 1)[-1]

"""The requests `up` sends, built by llamapod.cloud.plan, checked against botocore's service model
(client-side parameter validation: the same check boto3 runs before sending) and the seed's shapes."""

from __future__ import annotations

import functools
import json
import re

import botocore.session
import pytest
from botocore.validate import ParamValidator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.aws_model import violations
from llamapod.errors import ConfigError
from llamapod.cloud import plan
from llamapod.config.cluster import hyperpod_instance_types, spec_from_table

ACCOUNT = "123456789012"
SUBNET = "subnet-0123456789abcdef0"
SG = "sg-0123456789abcdef0"


@functools.lru_cache(maxsize=None)
def _input_shape(service: str, operation: str):
    return botocore.session.get_session().get_service_model(service).operation_model(operation).input_shape


def _validate(service: str, operation: str, params: dict) -> str:
    report = ParamValidator().validate(params, _input_shape(service, operation))
    return report.generate_report()


@pytest.fixture(scope="module")
def seed():
    return spec_from_table({})


def _cluster_request(spec):
    return plan.cluster_request(spec, bucket=plan.lifecycle_bucket_name(spec, ACCOUNT),
                                role_arn=plan.execution_role_arn(spec, ACCOUNT), subnet_id=SUBNET, sg_id=SG,
                                tags=plan.resource_tags(spec))


def test_cluster_request_is_the_seeds_cluster_config(seed):
    request = _cluster_request(seed)
    bucket = plan.lifecycle_bucket_name(seed, ACCOUNT)
    role = f"arn:aws:iam::{ACCOUNT}:role/{plan.execution_role_name(seed)}"
    lifecycle = {"SourceS3Uri": f"s3://{bucket}/src", "OnCreate": "on_create.sh"}
    assert request == {
        "ClusterName": "ml-4-g5-48x-cluster",
        "InstanceGroups": [
            {"InstanceGroupName": "controller-machine", "InstanceType": "ml.c5.xlarge", "InstanceCount": 1,
             "LifeCycleConfig": lifecycle, "ExecutionRole": role, "ThreadsPerCore": 1},
            {"InstanceGroupName": "worker-group-1", "InstanceType": "ml.g5.48xlarge", "InstanceCount": 4,
             "LifeCycleConfig": lifecycle, "ExecutionRole": role, "ThreadsPerCore": 1},
        ],
        "VpcConfig": {"SecurityGroupIds": [SG], "Subnets": [SUBNET]},
        "Tags": [{"Key": "llamapod:cluster", "Value": "ml-4-g5-48x-cluster"}],
        "NodeRecovery": "Automatic",
    }
    assert _validate("sagemaker", "CreateCluster", request) == ""


def test_a_full_cluster_request_is_valid_for_the_service_model():
    spec = spec_from_table({
        "name": "big", "login": {"name": "login", "instance_type": "ml.m5.4xlarge"},
        "workers": [{"name": "g5", "instance_type": "ml.g5.48xlarge", "count": 2, "partition": "gpu"},
                    {"name": "p5", "instance_type": "ml.p5.48xlarge", "count": 1}],
        "cluster_user": "alice", "shared_users": [{"name": "bob", "uid": 2001}], "containers": True,
        "ebs_volume_gb": 500, "deep_health_checks": ["InstanceStress", "InstanceConnectivity"],
        "node_recovery": "None", "threads_per_core": 2, "tags": {"team": "ml"},
    })
    request = _cluster_request(spec)
    assert _validate("sagemaker", "CreateCluster", request) == ""
    groups = {g["InstanceGroupName"]: g for g in request["InstanceGroups"]}
    assert list(groups) == ["controller-machine", "login", "g5", "p5"]
    # Deep health checks only on accelerator groups, and the connectivity check only where the
    # group has 2 or more instances to connect; the EBS volume on every group.
    assert "OnStartDeepHealthChecks" not in groups["controller-machine"]
    assert "OnStartDeepHealthChecks" not in groups["login"]
    assert groups["g5"]["OnStartDeepHealthChecks"] == ["InstanceStress", "InstanceConnectivity"]
    assert groups["p5"]["OnStartDeepHealthChecks"] == ["InstanceStress"]
    assert all(g["InstanceStorageConfigs"] == [{"EbsVolumeConfig": {"VolumeSizeInGB": 500}}] for g in groups.values())
    assert request["Tags"] == [{"Key": "llamapod:cluster", "Value": "big"}, {"Key": "team", "Value": "ml"}]
    assert json.loads(plan.provisioning_file(spec, "fs-1.fsx.us-east-1.amazonaws.com", "abcd")) == {
        "version": "1.0.0", "workload_manager": "slurm", "controller_group": "controller-machine",
        "login_group": "login",
        "worker_groups": [{"instance_group_name": "g5", "partition_name": "gpu"},
                          {"instance_group_name": "p5", "partition_name": "ml.p5.48xlarge"}],
        "fsx_dns_name": "fs-1.fsx.us-east-1.amazonaws.com", "fsx_mountname": "abcd",
        "cluster_user": "alice", "shared_users": [{"name": "bob", "uid": 2001}], "containers": True,
    }


def test_provisioning_parameters_are_the_seeds(seed):
    assert json.loads(plan.provisioning_file(seed, "fs-0123.fsx.us-east-1.amazonaws.com", "xyzab")) == {
        "version": "1.0.0",
        "workload_manager": "slurm",
        "controller_group": "controller-machine",
        "worker_groups": [{"instance_group_name": "worker-group-1", "partition_name": "ml.g5.48xlarge"}],
        "fsx_dns_name": "fs-0123.fsx.us-east-1.amazonaws.com",
        "fsx_mountname": "xyzab",
        "cluster_user": "ubuntu",
    }


def test_provisioning_file_refuses_what_the_nodes_would_refuse(seed):
    from llamapod.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        plan.provisioning_file(seed, "fs-0123.fsx.us-east-1.amazonaws.com\n/dev/sda /", "xyzab")
    assert info.value.message.startswith("provisioning_parameters.json would break the node contract: "
                                         "fsx_dns_name must be a DNS host name")


def test_fsx_request_is_valid_and_persistent_2(seed):
    token = plan.fsx_client_token(seed, "arn:aws:cloudformation:us-east-1:123456789012:stack/x/1234")
    request = plan.fsx_request(seed, SUBNET, SG, plan.resource_tags(seed), token)
    assert _validate("fsx", "CreateFileSystem", request) == ""
    assert request["StorageCapacity"] == 1200
    # The reference's FSx templates give PERSISTENT_2 automatic metadata IOPS.
    assert request["LustreConfiguration"] == {"DeploymentType": "PERSISTENT_2", "DataCompressionType": "LZ4",
                                              "PerUnitStorageThroughput": 250,
                                              "MetadataConfiguration": {"Mode": "AUTOMATIC"}}
    assert request["ClientRequestToken"] == token and re.fullmatch(r"[A-Za-z0-9_.-]{1,63}", token)
    scratch = spec_from_table({"fsx": {"deployment_type": "SCRATCH_2", "capacity_gib": 2400}})
    request = plan.fsx_request(scratch, SUBNET, SG, [])
    assert _validate("fsx", "CreateFileSystem", request) == ""
    assert "PerUnitStorageThroughput" not in request["LustreConfiguration"]
    assert "MetadataConfiguration" not in request["LustreConfiguration"]
    assert "ClientRequestToken" not in request


def test_fsx_token_is_the_same_for_every_run_on_one_network_and_new_for_a_new_one(seed):
    stack = "arn:aws:cloudformation:us-east-1:123456789012:stack/llamapod-x-network/1111"
    again = plan.fsx_client_token(seed, stack)
    assert plan.fsx_client_token(seed, stack) == again
    assert plan.fsx_client_token(seed, stack.replace("1111", "2222")) != again
    assert plan.fsx_client_token(spec_from_table({"name": "other"}), stack) != again


def test_network_parameters_name_every_template_parameter(seed):
    import yaml  # cfn-lint's dependency; the template uses no custom tags beyond !Ref/!Sub/!GetAtt

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    template = yaml.load(plan.network_template(), Loader=Loader)
    params = plan.network_parameters(seed, "use1-az4")
    assert {p["ParameterKey"] for p in params} == set(template["Parameters"])
    assert {"ParameterKey": "AvailabilityZoneId", "ParameterValue": "use1-az4"} in params
    assert _validate("cloudformation", "CreateStack", {"StackName": plan.network_stack_name(seed),
                                                       "TemplateBody": plan.network_template(),
                                                       "Parameters": params}) == ""


@pytest.mark.parametrize("name", ["a", "ml-4-g5-48x-cluster", "A" * 63, "x-" * 31 + "y", "9lives"])
def test_names_follow_the_services_rules(name):
    spec = spec_from_table({"name": name})
    bucket = plan.lifecycle_bucket_name(spec, ACCOUNT)
    assert bucket.startswith("sagemaker-llamapod-") and len(bucket) <= 63
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*[a-z0-9]", bucket)
    assert bucket == plan.lifecycle_bucket_name(spec, ACCOUNT)  # deterministic: re-runs find it
    role = plan.execution_role_name(spec)
    assert len(role) <= 64 and re.fullmatch(r"[\w+=,.@-]+", role)
    stack = plan.network_stack_name(spec)
    assert re.fullmatch(r"[a-zA-Z][-a-zA-Z0-9]{0,127}", stack)


def test_bucket_names_differ_per_account_region_and_cluster():
    a = spec_from_table({"name": "Train"})
    b = spec_from_table({"name": "train"})
    c = spec_from_table({"name": "Train", "region": "us-west-2"})
    names = {plan.lifecycle_bucket_name(a, ACCOUNT), plan.lifecycle_bucket_name(b, ACCOUNT),
             plan.lifecycle_bucket_name(c, ACCOUNT), plan.lifecycle_bucket_name(a, "210987654321")}
    assert len(names) == 4


def test_hourly_cost_sums_known_prices(seed):
    assert plan.hourly_cost(seed) == pytest.approx(0.238 + 4 * 20.36)
    unknown = spec_from_table({"workers": [{"name": "w", "instance_type": "ml.r7i.large"}]})
    assert plan.hourly_cost(unknown) is None


def test_artifacts_with_account_are_exact(seed, tmp_path):
    files = plan.write_artifacts(seed, tmp_path, account=ACCOUNT, az_id="use1-az4")
    names = sorted(f.name for f in files)
    assert names == sorted([
        "cluster-config.json", "provisioning_parameters.json", "fsx-request.json", "network.yaml",
        "network-parameters.json", "execution-role-trust-policy.json",
        "execution-role-policy-llamapod-network-interfaces.json",
        "execution-role-policy-llamapod-lifecycle-read.json", "bucket-policy.json", "operator-policy.json", "operator-policy-network.json", "operator-policy-cluster.json",
        "plan.json"])
    config = json.loads((tmp_path / "cluster-config.json").read_text())
    assert config == _cluster_request(seed) | {"VpcConfig": {"SecurityGroupIds": [plan.PLACEHOLDER_SG],
                                                             "Subnets": [plan.PLACEHOLDER_SUBNET]}}
    assert (tmp_path / "network.yaml").read_text() == plan.network_template()
    summary = json.loads((tmp_path / "plan.json").read_text())
    assert summary["names"]["lifecycle_bucket"] == plan.lifecycle_bucket_name(seed, ACCOUNT)
    assert summary["availability_zone_id"] == "use1-az4"
    assert set(summary["placeholders"]) == {"VpcConfig.Subnets", "VpcConfig.SecurityGroupIds", "fsx_dns_name",
                                            "fsx_mountname", "ClientRequestToken"}
    params = json.loads((tmp_path / "provisioning_parameters.json").read_text())
    assert params["fsx_dns_name"] == plan.PLACEHOLDER_FSX_DNS


def test_artifacts_without_account_mark_it(seed, tmp_path):
    plan.write_artifacts(seed, tmp_path, account=None, az_id=None)
    summary = json.loads((tmp_path / "plan.json").read_text())
    assert summary["account"] == "<account-id>"
    assert {"account", "AvailabilityZoneId"} <= set(summary["placeholders"])
    config = json.loads((tmp_path / "cluster-config.json").read_text())
    role = config["InstanceGroups"][0]["ExecutionRole"]
    assert role == f"arn:aws:iam::<account-id>:role/{plan.execution_role_name(seed)}"
    assert "<digest: needs the account id>" in config["InstanceGroups"][0]["LifeCycleConfig"]["SourceS3Uri"]


# ---- property: every valid spec gives requests the service model accepts -------------

_names = st.from_regex(r"[a-zA-Z0-9](-{0,2}[a-zA-Z0-9]){0,20}", fullmatch=True)
_fsx = st.sampled_from([
    {"deployment_type": "PERSISTENT_2", "capacity_gib": 1200, "throughput_per_tib": 125},
    {"deployment_type": "PERSISTENT_2", "capacity_gib": 4800, "throughput_per_tib": 1000},
    {"deployment_type": "PERSISTENT_1", "capacity_gib": 2400, "throughput_per_tib": 50},
    {"deployment_type": "SCRATCH_2", "capacity_gib": 1200},
    {"deployment_type": "SCRATCH_1", "capacity_gib": 3600, "compression": "NONE"},
])


@st.composite
def valid_tables(draw):
    types = list(hyperpod_instance_types())
    workers = [{"name": f"w{i}", "instance_type": draw(st.sampled_from(types)), "count": draw(st.integers(1, 64))}
               for i in range(draw(st.integers(1, 3)))]
    table = {"name": draw(_names), "workers": workers, "fsx": draw(_fsx),
             "threads_per_core": draw(st.sampled_from([1, 2])),
             "node_recovery": draw(st.sampled_from(["Automatic", "None"])),
             "deep_health_checks": draw(st.sampled_from([[], ["InstanceStress"],
                                                         ["InstanceStress", "InstanceConnectivity"]]))}
    if "InstanceConnectivity" in table["deep_health_checks"]:
        # Only valid with an accelerator group of 2 or more (the config refuses it otherwise).
        workers[0].update(instance_type="ml.g5.48xlarge", count=max(2, workers[0]["count"]))
    if draw(st.booleans()):
        table["login"] = {"name": "login", "instance_type": draw(st.sampled_from(types))}
    if draw(st.booleans()):
        table["ebs_volume_gb"] = draw(st.integers(1, 16384))
    return table


def _requests(spec) -> list[tuple[str, str, dict]]:
    """Every request `up` builds from the spec, as (service, operation, parameters)."""
    tags = plan.resource_tags(spec)
    bucket = plan.lifecycle_bucket_name(spec, ACCOUNT)
    stack_id = f"arn:aws:cloudformation:{spec.region}:{ACCOUNT}:stack/{plan.network_stack_name(spec)}/0f1e2d3c"
    requests = [
        ("sagemaker", "CreateCluster", _cluster_request(spec)),
        ("fsx", "CreateFileSystem", plan.fsx_request(spec, SUBNET, SG, tags, plan.fsx_client_token(spec, stack_id))),
        ("cloudformation", "CreateStack", {"StackName": plan.network_stack_name(spec),
                                           "TemplateBody": plan.network_template(),
                                           "Parameters": plan.network_parameters(spec, "use1-az4"), "Tags": tags,
                                           "OnFailure": "ROLLBACK"}),
        ("iam", "CreateRole", {"RoleName": plan.execution_role_name(spec), "Tags": tags,
                               "AssumeRolePolicyDocument": json.dumps(plan.execution_role_trust_policy(ACCOUNT))}),
        ("s3", "PutBucketTagging", {"Bucket": bucket, "Tagging": {"TagSet": tags}}),
    ]
    for name, document in plan.execution_role_policies(spec, ACCOUNT, bucket, spec.region, "aws").items():
        requests.append(("iam", "PutRolePolicy", {"RoleName": plan.execution_role_name(spec), "PolicyName": name,
                                                  "PolicyDocument": json.dumps(document)}))
    return requests


def test_the_most_tags_a_config_takes_fit_every_service():
    # 48 of the user's, one of them Name (the file system gets llamapod's Name, once), with keys
    # and values as long as the config allows: every request stays within 50 distinct keys.
    tags = {"Name": "mine", **{f"{i:02d}" + "k" * 126: "v" * 256 for i in range(47)}}
    spec = spec_from_table({"name": "A" * 63, "tags": tags})
    for service, operation, params in _requests(spec):
        assert violations(service, operation, params) == [], (service, operation)
    fsx_tags = plan.fsx_request(spec, SUBNET, SG, plan.resource_tags(spec))["Tags"]
    assert [t["Value"] for t in fsx_tags if t["Key"] == "Name"] == [plan.fsx_name(spec)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=valid_tables())
def test_valid_specs_give_requests_the_service_model_accepts(table):
    spec = spec_from_table(table)
    assert _validate("sagemaker", "CreateCluster", _cluster_request(spec)) == ""
    assert _validate("fsx", "CreateFileSystem", plan.fsx_request(spec, SUBNET, SG, plan.resource_tags(spec))) == ""
    # And every constraint botocore does not check on the client (patterns, maxima, enums).
    for service, operation, params in _requests(spec):
        assert violations(service, operation, params) == [], (service, operation)
    bucket = plan.lifecycle_bucket_name(spec, ACCOUNT)
    assert len(bucket) <= 63 and bucket == bucket.lower()


def test_plan_rewrites_only_its_own_folder(seed, tmp_path):
    """A folder of the user's with a plan.json of its own is refused, untouched; plan's own is rewritten."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "plan.json").write_text("my notes")
    with pytest.raises(ConfigError, match="holds files that are not an earlier llamapod plan"):
        plan.write_artifacts(seed, theirs, account=ACCOUNT, az_id=None)
    assert [p.name for p in theirs.iterdir()] == ["plan.json"] and (theirs / "plan.json").read_text() == "my notes"

    ours = tmp_path / "ours"
    plan.write_artifacts(seed, ours, account=ACCOUNT, az_id=None)
    plan.write_artifacts(seed, ours, account=ACCOUNT, az_id="use1-az4")
    assert json.loads((ours / "plan.json").read_text())["availability_zone_id"] == "use1-az4"

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        plan.write_artifacts(seed, tmp_path / "a-file", account=ACCOUNT, az_id=None)

"""What ``up`` will create, as pure functions of the cluster spec.

Nothing here writes to AWS: every request ``up`` sends (network stack parameters, FSx
request, execution role documents, bucket policy, create_cluster arguments,
provisioning_parameters.json) is built here from one ClusterSpec, so ``plan`` can show and
write exactly what ``up`` will send, and tests can validate each request against
botocore's service model.

Names are deterministic (a function of account, region and cluster name), so a re-run of
``up`` or ``down`` finds what an earlier run created.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from llamapod.aws_names import cluster_tag, partition_of
from llamapod.cloud.operator_policy import operator_policy, operator_policy_parts
from llamapod.cloud.policies import (  # noqa: F401  (re-exported: the plan's public surface)
    BUCKET_PREFIX, ROLE_PREFIX, STACK_PREFIX, bucket_policy, execution_role_policies,
    execution_role_trust_policy, managed_policy_arns)
from llamapod.config.cluster import LIFECYCLE_PREFIX, ClusterSpec
from llamapod.errors import ConfigError
from llamapod.instances import has_accelerators
from llamapod.lifecycle import provisioning

ON_CREATE = "on_create.sh"
FSX_LUSTRE_VERSION = "2.15"

# Values that exist only once AWS has created something: `plan` writes these markers
# and lists them, `up` fills them in.
PLACEHOLDER_ACCOUNT = "<account-id>"
PLACEHOLDER_SUBNET = "<PrivateSubnetId: output of the network stack>"
PLACEHOLDER_SG = "<SecurityGroupId: output of the network stack>"
PLACEHOLDER_FSX_DNS = "<DNSName of the FSx file system: returned by create_file_system>"
PLACEHOLDER_FSX_MOUNT = "<MountName of the FSx file system: returned by create_file_system>"


def _digest(*parts: str, length: int) -> str:
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:length]


def _trim(text: str, length: int) -> str:
    return text[:length].rstrip("-")


def network_stack_name(spec: ClusterSpec) -> str:
    # Stack names must start with a letter; the prefix guarantees it (cluster names may not).
    return f"{STACK_PREFIX}{spec.name}-network"


def execution_role_name(spec: ClusterSpec) -> str:
    """IAM role names are global to the account (<= 64): the region is in the digest."""
    return f"{ROLE_PREFIX}{_trim(spec.name, 40)}-exec-{_digest(spec.region, spec.name, length=8)}"


def execution_role_arn(spec: ClusterSpec, account: str) -> str:
    return f"arn:{partition_of(spec.region)}:iam::{account}:role/{execution_role_name(spec)}"


def lifecycle_bucket_name(spec: ClusterSpec, account: str) -> str:
    """``sagemaker-llamapod-<name>-<digest>``: unique per account, region and cluster, <= 63 chars.

    HyperPod only reads lifecycle scripts from buckets named ``sagemaker-*``. Bucket names
    are global and lowercase, so the digest (of account, region and the exact name) keeps
    two clusters or accounts apart; being deterministic, a re-run finds the same bucket.
    """
    digest = _digest(account, spec.region, spec.name, length=10)
    room = 63 - len(BUCKET_PREFIX) - 1 - len(digest)
    readable = _trim(spec.name.lower(), room)
    return f"{BUCKET_PREFIX}{readable}-{digest}" if readable else f"{BUCKET_PREFIX}{digest}"


def _bucket_or_placeholder(spec: ClusterSpec, account: str | None) -> str:
    if account:
        return lifecycle_bucket_name(spec, account)
    return f"{BUCKET_PREFIX}{spec.name.lower()}-<digest: needs the account id>"


def lifecycle_s3_uri(bucket: str) -> str:
    return f"s3://{bucket}/{LIFECYCLE_PREFIX}"


def fsx_name(spec: ClusterSpec) -> str:
    return f"llamapod-{spec.name}"


def resource_tags(spec: ClusterSpec) -> list[dict[str, str]]:
    """Tags on everything llamapod creates; ``llamapod:cluster`` is how ``down`` finds it all."""
    tags = [cluster_tag(spec.name)]
    tags.extend({"Key": key, "Value": value} for key, value in sorted(spec.tags.items()))
    return tags


# ---- requests -------------------------------------------------------------------


def network_template() -> str:
    return resources.files("llamapod.cloud").joinpath("templates/network.yaml").read_text(encoding="utf-8")


def network_parameters(spec: ClusterSpec, az_id: str) -> list[dict[str, str]]:
    """Parameters of the network stack; ``az_id`` must be an AZ ID (use1-az4), not a name."""
    values = {
        "ClusterName": spec.name,
        "AvailabilityZoneId": az_id,
        "VpcCidr": spec.network.vpc_cidr,
        "PublicSubnetCidr": spec.network.public_subnet_cidr,
        "PrivateSubnetCidr": spec.network.private_subnet_cidr,
    }
    return [{"ParameterKey": key, "ParameterValue": value} for key, value in values.items()]


def fsx_client_token(spec: ClusterSpec, network_stack_id: str) -> str:
    """FSx's idempotency token for the cluster's file system.

    Two ``up`` runs on one name send the same token, so FSx creates one file system and
    answers both with it. The network stack's ID (a fresh UUID each time the stack is
    created, the same for every run that finds it) is part of it, so an ``up`` after a
    ``down`` asks for a new file system instead of the deleted one. FSx allows 1-63 of
    ``[A-za-z0-9_.-]`` (botocore's FSx model, CreateFileSystem ClientRequestToken).
    """
    return f"llamapod-{_digest(spec.region, spec.name, network_stack_id, length=40)}"


def fsx_request(spec: ClusterSpec, subnet_id: str, sg_id: str, tags: list[dict[str, str]],
                client_token: str | None = None) -> dict[str, Any]:
    """Keyword arguments of ``fsx.create_file_system`` for the cluster's /fsx."""
    lustre: dict[str, Any] = {
        "DeploymentType": spec.fsx.deployment_type,
        "DataCompressionType": spec.fsx.compression,
    }
    if spec.fsx.throughput_per_tib is not None:
        lustre["PerUnitStorageThroughput"] = spec.fsx.throughput_per_tib
    if spec.fsx.deployment_type == "PERSISTENT_2":
        # As the reference's FSx templates set it (awsome-distributed-training
        # 1.architectures/5.sagemaker-hyperpod/3.FSxLustre.yaml): metadata IOPS scale with the
        # capacity. Only PERSISTENT_2 takes a MetadataConfiguration (FSx API reference).
        lustre["MetadataConfiguration"] = {"Mode": "AUTOMATIC"}
    request: dict[str, Any] = {
        "FileSystemType": "LUSTRE",
        "FileSystemTypeVersion": FSX_LUSTRE_VERSION,
        "StorageCapacity": spec.fsx.capacity_gib,
        "StorageType": "SSD",
        "SubnetIds": [subnet_id],
        "SecurityGroupIds": [sg_id],
        "LustreConfiguration": lustre,
        # One Name: FSx refuses a request whose tags repeat a key, and llamapod's Name wins here as
        # the template's resource-level Name does over a stack tag on the network's resources.
        "Tags": [*(t for t in tags if t["Key"] != "Name"), {"Key": "Name", "Value": fsx_name(spec)}],
    }
    if client_token:
        request["ClientRequestToken"] = client_token
    return request


def _instance_group(spec: ClusterSpec, group: Any, *, bucket: str, role_arn: str) -> dict[str, Any]:
    request: dict[str, Any] = {
        "InstanceGroupName": group.name,
        "InstanceType": group.instance_type,
        "InstanceCount": group.count,
        "LifeCycleConfig": {"SourceS3Uri": lifecycle_s3_uri(bucket), "OnCreate": ON_CREATE},
        "ExecutionRole": role_arn,
        "ThreadsPerCore": spec.threads_per_core,
    }
    if spec.ebs_volume_gb is not None:
        request["InstanceStorageConfigs"] = [{"EbsVolumeConfig": {"VolumeSizeInGB": spec.ebs_volume_gb}}]
    checks = deep_health_checks_for(spec, group)
    if checks:
        request["OnStartDeepHealthChecks"] = checks
    return request


def deep_health_checks_for(spec: ClusterSpec, group: Any) -> list[str]:
    """The deep health checks a group gets of those ``spec`` asks for.

    They stress GPUs/Trainium and their interconnect: CPU groups have neither. The
    instance-connectivity check tests the links between the group's instances, so
    HyperPod needs at least 2 of them (SageMaker developer guide, "Deep health checks").
    """
    if not has_accelerators(group.instance_type):
        return []
    return [c for c in spec.deep_health_checks if c != "InstanceConnectivity" or group.count >= 2]


def cluster_request(spec: ClusterSpec, *, bucket: str, role_arn: str, subnet_id: str, sg_id: str,
                    tags: list[dict[str, str]]) -> dict[str, Any]:
    """Keyword arguments of ``sagemaker.create_cluster``: the seed's cluster-config.json, plus tags."""
    return {
        "ClusterName": spec.name,
        "InstanceGroups": [_instance_group(spec, g, bucket=bucket, role_arn=role_arn) for g in spec.instance_groups],
        "VpcConfig": {"SecurityGroupIds": [sg_id], "Subnets": [subnet_id]},
        "Tags": list(tags),
        "NodeRecovery": spec.node_recovery,
    }


def provisioning_parameters(spec: ClusterSpec, fsx_dns: str, fsx_mountname: str) -> provisioning.ProvisioningParameters:
    """provisioning_parameters.json, read on every node to configure Slurm, /fsx and the users."""
    accounting = None
    if spec.accounting is not None:
        accounting = provisioning.Accounting(**spec.accounting.model_dump())
    return provisioning.ProvisioningParameters(
        controller_group=spec.controller.name,
        login_group=spec.login.name if spec.login is not None else None,
        worker_groups=tuple(provisioning.WorkerGroup(g.name, g.partition) for g in spec.workers),
        fsx_dns_name=fsx_dns,
        fsx_mountname=fsx_mountname,
        cluster_user=spec.cluster_user,
        shared_users=tuple(provisioning.SharedUser(u.name, u.uid) for u in spec.shared_users),
        containers=spec.containers,
        accounting=accounting,
    )


def provisioning_file(spec: ClusterSpec, fsx_dns: str, fsx_mountname: str) -> str:
    """The text ``up`` uploads, checked against the contract the nodes read it with."""
    try:
        return provisioning.dumps(provisioning_parameters(spec, fsx_dns, fsx_mountname))
    except provisioning.ProvisioningError as exc:
        raise ConfigError(f"provisioning_parameters.json would break the node contract: {exc.problems[0]}",
                          "fix the [cluster] settings named, then re-run", problems=exc.problems) from None


def provisioning_preview(spec: ClusterSpec) -> dict[str, Any]:
    """What ``plan`` shows: the file with markers for the FSx names, every other value checked."""
    params = provisioning_parameters(spec, PLACEHOLDER_FSX_DNS, PLACEHOLDER_FSX_MOUNT)
    found = provisioning.problems(params, fsx_known=False)
    if found:
        raise ConfigError(f"provisioning_parameters.json would break the node contract: {found[0]}",
                          "fix the [cluster] settings named, then re-run", problems=found)
    return params.to_dict()


# ---- cost -----------------------------------------------------------------------


def cost_lines(spec: ClusterSpec) -> list[tuple[str, str, int, float | None]]:
    """(group, instance type, count, estimated USD/hour for the group or None if unknown)."""
    from llamapod.instances import instance_info

    lines = []
    for group in spec.instance_groups:
        price = instance_info(group.instance_type).hourly_usd
        lines.append((group.name, group.instance_type, group.count, None if price is None else price * group.count))
    return lines


def hourly_cost(spec: ClusterSpec) -> float | None:
    """Estimated on-demand USD/hour of all instances; None when a type's price is unknown."""
    total = 0.0
    for *_, cost in cost_lines(spec):
        if cost is None:
            return None
        total += cost
    return total


# ---- the whole plan ---------------------------------------------------------------


@dataclass
class Resource:
    kind: str       # "CloudFormation stack", "FSx for Lustre", ...
    name: str
    detail: str


@dataclass
class Plan:
    spec: ClusterSpec
    account: str                   # PLACEHOLDER_ACCOUNT when the caller could not be looked up
    az_id: str | None              # None when the AZ is not resolved yet
    resources: list[Resource] = field(default_factory=list)
    placeholders: dict[str, str] = field(default_factory=dict)  # artifact field -> why unknown


def build_plan(spec: ClusterSpec, account: str | None, az_id: str | None) -> Plan:
    acct = account or PLACEHOLDER_ACCOUNT
    partition = partition_of(spec.region)
    bucket = _bucket_or_placeholder(spec, account)
    fsx = spec.fsx
    throughput = f", {fsx.throughput_per_tib} MB/s/TiB" if fsx.throughput_per_tib else ""
    groups = ", ".join(f"{g.name} {g.count} x {g.instance_type}" for g in spec.instance_groups)
    plan = Plan(spec=spec, account=acct, az_id=az_id)
    plan.resources = [
        Resource("CloudFormation stack", network_stack_name(spec),
                 f"VPC {spec.network.vpc_cidr}, private subnet {spec.network.private_subnet_cidr} and public "
                 f"subnet {spec.network.public_subnet_cidr} in {az_id or 'an AZ chosen by `up`'}, internet + NAT "
                 f"gateway, security group (all traffic within itself, Lustre 988/1018-1023), S3 endpoint"),
        Resource("FSx for Lustre", fsx_name(spec),
                 f"{fsx.capacity_gib} GiB {fsx.deployment_type}{throughput}, {fsx.compression} compression, "
                 f"mounted at /fsx"),
        Resource("IAM role", execution_role_name(spec),
                 f"trusted by sagemaker.amazonaws.com for account {acct}; {', '.join(managed_policy_arns(partition))}; "
                 f"inline {', '.join(execution_role_policies(spec, acct, bucket, spec.region, partition))}"),
        Resource("S3 bucket", bucket,
                 f"public access blocked, encrypted, TLS only; lifecycle scripts and provisioning_parameters.json "
                 f"under {lifecycle_s3_uri(bucket)}/"),
        Resource("HyperPod cluster", spec.name,
                 f"{groups}; ThreadsPerCore {spec.threads_per_core}; node recovery {spec.node_recovery}"),
    ]
    if account is None:
        plan.placeholders["account"] = ("the account id could not be looked up (no credentials or endpoint); "
                                        "the bucket name and role ARN contain it")
    if az_id is None:
        plan.placeholders["AvailabilityZoneId"] = "the AZ could not be resolved; `up` resolves it"
    plan.placeholders["VpcConfig.Subnets"] = "exists once the network stack is created"
    plan.placeholders["VpcConfig.SecurityGroupIds"] = "exists once the network stack is created"
    plan.placeholders["fsx_dns_name"] = "exists once the FSx file system is requested"
    plan.placeholders["fsx_mountname"] = "exists once the FSx file system is requested"
    plan.placeholders["ClientRequestToken"] = ("FSx's idempotency token, derived from the cluster name and the "
                                               "network stack's ID once the stack exists")
    return plan


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


# Marks a folder as plan's own, so a later plan may rewrite its files (and no other folder's).
PLAN_MARKER = ".llamapod-plan"


def _plan_folder(out: Path) -> Path:
    """``out``, created, empty or holding an earlier plan: plan's file names (plan.json,
    network.yaml, ...) are common, and a user's own files of those names are not plan's to replace."""
    if out.is_dir() and any(out.iterdir()) and not (out / PLAN_MARKER).is_file():
        raise ConfigError(f"{out} holds files that are not an earlier llamapod plan",
                          "pass --out with a new or empty folder (or an earlier plan's folder)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{out} is a file, not a folder", "pass --out with a folder path") from None
    (out / PLAN_MARKER).write_text("written by `llamapod plan`; safe to delete with this folder\n", encoding="utf-8")
    return out


def write_artifacts(spec: ClusterSpec, out_dir: str | Path, *, account: str | None = None,
                    az_id: str | None = None) -> list[Path]:
    """Write every document ``up`` will send into ``out_dir``; returns the files written.

    Values that only exist after creation (subnet, security group, FSx DNS and mount
    names; the account when it cannot be looked up) are written as ``<...>`` markers and
    listed in plan.json under "placeholders".
    """
    out = _plan_folder(Path(out_dir))
    plan = build_plan(spec, account, az_id)
    acct = plan.account
    partition = partition_of(spec.region)
    bucket = _bucket_or_placeholder(spec, account)
    tags = resource_tags(spec)
    role_arn = execution_role_arn(spec, acct)
    written = [
        _write_json(out / "cluster-config.json",
                    cluster_request(spec, bucket=bucket, role_arn=role_arn, subnet_id=PLACEHOLDER_SUBNET,
                                    sg_id=PLACEHOLDER_SG, tags=tags)),
        _write_json(out / provisioning.FILE_NAME, provisioning_preview(spec)),
        _write_json(out / "fsx-request.json", fsx_request(spec, PLACEHOLDER_SUBNET, PLACEHOLDER_SG, tags)),
    ]
    template = out / "network.yaml"
    template.write_text(network_template(), encoding="utf-8")
    written.append(template)
    written.append(_write_json(out / "network-parameters.json",
                               network_parameters(spec, az_id or "<AZ ID: resolved by `up`>")))
    written.append(_write_json(out / "execution-role-trust-policy.json",
                               execution_role_trust_policy(acct, partition)))
    for name, document in execution_role_policies(spec, acct, bucket, spec.region, partition).items():
        written.append(_write_json(out / f"execution-role-policy-{name}.json", document))
    written.append(_write_json(out / "bucket-policy.json", bucket_policy(bucket, partition)))
    written.append(_write_json(out / "operator-policy.json", operator_policy(acct if account else "*", partition)))
    for part, document in operator_policy_parts(acct if account else "*", partition).items():
        written.append(_write_json(out / f"operator-policy-{part}.json", document))
    summary = {
        "cluster": spec.name,
        "region": spec.region,
        "account": acct,
        "availability_zone_id": az_id,
        "estimated_hourly_usd": hourly_cost(spec),
        "resources": [{"kind": r.kind, "name": r.name, "detail": r.detail} for r in plan.resources],
        "names": {"network_stack": network_stack_name(spec), "execution_role": execution_role_name(spec),
                  "lifecycle_bucket": bucket, "lifecycle_s3_uri": lifecycle_s3_uri(bucket),
                  "managed_policies": managed_policy_arns(partition)},
        "placeholders": plan.placeholders,
    }
    written.append(_write_json(out / "plan.json", summary))
    return written

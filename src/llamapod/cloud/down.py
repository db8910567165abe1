"""``llamapod down``: find everything a cluster owns, delete it in order, prove nothing is left.

Resources are found twice over: from the state file and by the tag
``llamapod:cluster=<name>`` (per service, and through the Resource Groups Tagging API),
so teardown works with the state file lost or after an ``up`` that died half-way.
Order: the cluster (its nodes hold network interfaces in the subnet and mount FSx),
then FSx, the bucket, the role, and last the network stack. "Not found" is success
everywhere, so ``down`` can be interrupted and re-run too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from llamapod.cloud import bucket as buckets
from llamapod.cloud import hyperpod, iam, network, progress, storage
from llamapod.cloud.ledger import Ledger, console_link, tagged_resources
from llamapod.cloud.progress import Clock, Reporter, Waiter
from llamapod.cloud.session import call


@dataclass
class Inventory:
    """What ``down`` will delete, by kind, in deletion order."""

    name: str
    region: str
    clusters: list[str] = field(default_factory=list)
    file_systems: list[str] = field(default_factory=list)
    buckets: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    stacks: list[str] = field(default_factory=list)  # stack IDs
    stack_names: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str]]:
        return ([("HyperPod cluster", c) for c in self.clusters]
                + [("FSx for Lustre file system", f) for f in self.file_systems]
                + [("S3 bucket (all versions)", b) for b in self.buckets]
                + [("IAM role (and its policies)", r) for r in self.roles]
                + [("CloudFormation stack (VPC, subnets, NAT, security group)", self.stack_names.get(s, s))
                   for s in self.stacks])

    @property
    def empty(self) -> bool:
        return not self.rows()


@dataclass(frozen=True)
class Leftover:
    kind: str
    id: str
    arn: str
    link: str


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def naming_spec(name: str, region: str):
    """A spec carrying just what llamapod's resource names derive from (name and region).

    ``down`` must work without the llamapod.toml that made the cluster: names are
    functions of the cluster's name, region and account only.
    """
    from llamapod.config.cluster import ClusterSpec

    return ClusterSpec(name=name, region=region)


def take_inventory(session, name: str, ledger: Ledger | None) -> Inventory:
    """Everything that exists for ``name``: recorded in the ledger, named after it, or tagged for it."""
    from llamapod.cloud import plan

    recorded = ledger.resources if ledger is not None else {}
    spec = naming_spec(name, session.region)
    inv = Inventory(name, session.region)

    cluster_names = [c.get("ClusterName", name) for c in hyperpod.find_clusters(session, name)]
    if "cluster" in recorded and hyperpod.find_cluster(session, recorded["cluster"]["name"]) is not None:
        cluster_names.append(recorded["cluster"]["name"])
    inv.clusters = _unique(cluster_names)

    fs_ids = [fs["FileSystemId"] for fs in storage.find_file_systems(session, name)]
    if "fsx" in recorded and storage.describe(session, recorded["fsx"]["id"]) is not None:
        fs_ids.append(recorded["fsx"]["id"])
    inv.file_systems = _unique(fs_ids)

    candidates = _unique([recorded.get("bucket", {}).get("name", ""),
                          plan.lifecycle_bucket_name(spec, session.account_id)])
    inv.buckets = _unique(buckets.find_buckets(session, name, candidates))

    roles = iam.find_roles(session, spec)
    if "role" in recorded and iam.get_role(session, recorded["role"]["name"]) is not None:
        roles.append(recorded["role"]["name"])
    inv.roles = _unique(roles)

    stacks = network.find_stacks(session, spec)
    if "network" in recorded:
        stack = network.describe_stack(session, recorded["network"].get("stack_id") or recorded["network"]["stack_name"])
        if stack is not None:
            stacks.append(stack)
    inv.stacks = _unique([s["StackId"] for s in stacks])
    inv.stack_names = {s["StackId"]: s["StackName"] for s in stacks}
    return inv


def tear_down(session, inv: Inventory, ledger: Ledger | None, *, clock: Clock | None = None,
              reporter: Reporter | None = None) -> list[Leftover]:
    """Delete the inventory in order; returns what is still tagged for the cluster afterwards."""
    clock = clock or progress.default_clock()
    reporter = reporter or Reporter(clock)
    waiter = Waiter(clock, threading.Event(), reporter)

    def forget(kind: str) -> None:
        if ledger is not None:
            ledger.forget(kind)

    for name in inv.clusters:
        reporter.line(f"cluster {name}: deleting")
        hyperpod.delete_cluster(session, name, waiter)
    forget("cluster")
    for fs_id in inv.file_systems:
        reporter.line(f"FSx {fs_id}: deleting")
        storage.delete_file_system(session, fs_id, waiter)
    forget("fsx")
    for bucket in inv.buckets:
        reporter.line(f"bucket {bucket}: emptying and deleting")
        buckets.empty_and_delete(session, bucket)
    forget("bucket")
    for role in inv.roles:
        reporter.line(f"role {role}: deleting")
        iam.delete_role(session, role)
    forget("role")
    for stack_id in inv.stacks:
        reporter.line(f"network stack {inv.stack_names.get(stack_id, stack_id)}: deleting")
        network.delete_network(session, stack_id, waiter)
    forget("network")

    left = leftovers(session, inv.name)
    if not left and ledger is not None:
        ledger.remove_file()
    return left


def leftovers(session, name: str) -> list[Leftover]:
    """Everything still tagged (or named) for the cluster, by every lookup llamapod has."""
    region = session.region
    spec = naming_spec(name, region)
    found: dict[str, Leftover] = {}

    def add(kind: str, rid: str, arn: str) -> None:
        found.setdefault(arn, Leftover(kind, rid, arn, console_link(arn, region)))

    for resource in tagged_resources(session, name):
        if resource.service == "cloudformation" and network.describe_stack(session, resource.arn) is None:
            continue  # a deleted stack stays visible by ARN for 90 days; it costs nothing
        if resource.kind == "ec2:natgateway" and _nat_gateway_deleted(session, resource.resource_id):
            continue  # deleted NAT gateways stay listed (State "deleted") for about an hour
        add(resource.kind, resource.resource_id, resource.arn)
    for cluster in hyperpod.find_clusters(session, name):
        add("sagemaker:cluster", cluster["ClusterName"], cluster["ClusterArn"])
    for fs in storage.find_file_systems(session, name):
        add("fsx:file-system", fs["FileSystemId"], fs.get("ResourceARN") or _arn(session, "fsx", f"file-system/{fs['FileSystemId']}"))
    for bucket in buckets.find_buckets(session, name, []):
        add("s3:bucket", bucket, f"arn:{session.partition}:s3:::{bucket}")
    for role in iam.find_roles(session, spec):
        add("iam:role", role, f"arn:{session.partition}:iam::{session.account_id}:role/{role}")
    for stack in network.find_stacks(session, spec):
        add("cloudformation:stack", stack["StackName"], stack["StackId"])
    for kind, rid in _tagged_network(session, name):
        add(f"ec2:{kind}", rid, _arn(session, "ec2", f"{kind}/{rid}"))
    return sorted(found.values(), key=lambda item: (item.kind, item.id))


def _nat_gateway_deleted(session, nat_id: str) -> bool:
    gateways = call(session.client("ec2"), "describe_nat_gateways", NatGatewayIds=[nat_id]).get("NatGateways", [])
    return all(g.get("State") == "deleted" for g in gateways)


def _arn(session, service: str, resource: str) -> str:
    return f"arn:{session.partition}:{service}:{session.region}:{session.account_id}:{resource}"


def _tagged_network(session, name: str) -> list[tuple[str, str]]:
    """VPCs, subnets and security groups carrying the tag, asked of EC2 directly."""
    ec2 = session.client("ec2")
    filters = [{"Name": "tag:llamapod:cluster", "Values": [name]}]
    vpcs = call(ec2, "describe_vpcs", Filters=filters).get("Vpcs", [])
    subnets = call(ec2, "describe_subnets", Filters=filters).get("Subnets", [])
    groups = call(ec2, "describe_security_groups", Filters=filters).get("SecurityGroups", [])
    return ([("vpc", v["VpcId"]) for v in vpcs] + [("subnet", s["SubnetId"]) for s in subnets]
            + [("security-group", g["GroupId"]) for g in groups])

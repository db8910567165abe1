"""``llamapod down``: find everything a cluster owns, delete it in order, prove nothing is left.

Resources are found twice over: from the state file and by the tag
``llamapod:cluster=<name>`` (per service, and through the Resource Groups Tagging API),
so teardown works with the state file lost or after an ``up`` that died half-way; what
HyperPod makes without that tag (its CloudWatch log group, network interfaces in the
subnet) is found by name or by the cluster's VPC.
Order: the cluster (its nodes hold network interfaces in the subnet and mount FSx), then
FSx, the bucket, HyperPod's log group, the network stack, and last the execution role:
HyperPod removes the nodes' network interfaces with that role, and until they are gone
the VPC cannot be deleted. "Not found" is success everywhere, so ``down`` can be
interrupted and re-run too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from llamapod.aws_names import CLUSTER_TAG, has_cluster_tag
from llamapod.cloud import bucket as buckets
from llamapod.cloud import hyperpod, iam, logs, network, progress, storage
from llamapod.cloud.ledger import Ledger, console_link, tagged_resources
from llamapod.cloud.lock import cluster_lock
from llamapod.cloud.progress import Clock, Reporter, Waiter
from llamapod.cloud.lookup import paginate
from llamapod.cloud.session import call


@dataclass
class Inventory:
    """What ``down`` will delete, by kind, in deletion order."""

    name: str
    region: str
    clusters: list[str] = field(default_factory=list)
    file_systems: list[str] = field(default_factory=list)
    buckets: list[str] = field(default_factory=list)
    log_groups: list[str] = field(default_factory=list)
    stacks: list[str] = field(default_factory=list)  # stack IDs
    stack_names: dict[str, str] = field(default_factory=dict)
    roles: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str]]:
        return ([("HyperPod cluster", c) for c in self.clusters]
                + [("FSx for Lustre file system", f) for f in self.file_systems]
                + [("S3 bucket (all versions)", b) for b in self.buckets]
                + [("CloudWatch log group (HyperPod's node logs)", g) for g in self.log_groups]
                + [("CloudFormation stack (VPC, subnets, NAT, security group)", self.stack_names.get(s, s))
                   for s in self.stacks]
                + [("IAM role (and its policies)", r) for r in self.roles])

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
    functions of the cluster's name, region and account only. Built without the
    ``[cluster]`` rules: a region newer than this botocore's list must still be cleaned up.
    """
    from llamapod.config.cluster import ClusterSpec

    return ClusterSpec.model_construct(name=name, region=region)


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
    inv.log_groups = [g["logGroupName"] for g in logs.find_log_groups(session, name, not_of=_strangers(session, name,
                                                                                                       recorded))]

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


def _strangers(session, name: str, recorded: dict) -> set[str]:
    """Ids of a live cluster of this name that llamapod did not make: its logs are not ours."""
    cluster = hyperpod.find_cluster(session, name)
    if cluster is None or hyperpod.find_clusters(session, name) or "cluster" in recorded:
        return set()
    return {logs.cluster_id(cluster["ClusterArn"])}


def tear_down(session, inv: Inventory, ledger: Ledger | None, *, clock: Clock | None = None,
              reporter: Reporter | None = None) -> list[Leftover]:
    """Delete the inventory in order; returns what of the cluster is still there afterwards.

    One run per cluster at a time (``cloud/lock.py``): an ``up`` or ``down`` already working
    on it makes this one stop with a message before it deletes anything.
    """
    with cluster_lock(inv.name, "down"):
        return _tear_down(session, inv, ledger, clock=clock, reporter=reporter)


def _tear_down(session, inv: Inventory, ledger: Ledger | None, *, clock: Clock | None,
               reporter: Reporter | None) -> list[Leftover]:
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
    for group in inv.log_groups:
        reporter.line(f"log group {group}: deleting")
        logs.delete_log_group(session, group)
    for stack_id in inv.stacks:
        reporter.line(f"network stack {inv.stack_names.get(stack_id, stack_id)}: deleting")
        network.delete_network(session, stack_id, waiter)
    forget("network")
    # Last: HyperPod releases the nodes' network interfaces in the subnet with this role; deleted
    # earlier, those interfaces could stay and keep the VPC (and its NAT gateway) from deletion.
    for role in inv.roles:
        reporter.line(f"role {role}: deleting")
        iam.delete_role(session, role)
    forget("role")

    left = leftovers(session, inv.name)
    if not left and ledger is not None:
        ledger.remove_file()
    return left


def leftovers(session, name: str) -> list[Leftover]:
    """Everything of the cluster still there, by every lookup llamapod has: tagged resources, and
    what HyperPod makes untagged (its log group; network interfaces in the cluster's VPC)."""
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
    # By its name too, as the inventory finds it: a bucket an interrupted `up` created but had not
    # tagged yet (CreateBucket, then PutBucketTagging) is in no tag lookup, and it bills storage.
    from llamapod.cloud import plan

    for bucket in buckets.find_buckets(session, name, [plan.lifecycle_bucket_name(spec, session.account_id)]):
        add("s3:bucket", bucket, f"arn:{session.partition}:s3:::{bucket}")
    for role in iam.find_roles(session, spec):
        add("iam:role", role, f"arn:{session.partition}:iam::{session.account_id}:role/{role}")
    for stack in network.find_stacks(session, spec):
        add("cloudformation:stack", stack["StackName"], stack["StackId"])
    for group in logs.find_log_groups(session, name, not_of=_strangers(session, name, {})):
        add("logs:log-group", group["logGroupName"], group.get("arn", "").removesuffix(":*")
            or _arn(session, "logs", f"log-group:{group['logGroupName']}"))
    for kind, rid in _network_leftovers(session, name):
        add(f"ec2:{kind}", rid, _arn(session, "ec2", f"{kind}/{rid}"))
    return sorted(found.values(), key=lambda item: (item.kind, item.id))


def _nat_gateway_deleted(session, nat_id: str) -> bool:
    gateways = call(session.client("ec2"), "describe_nat_gateways", NatGatewayIds=[nat_id]).get("NatGateways", [])
    return all(g.get("State") == "deleted" for g in gateways)


def _arn(session, service: str, resource: str) -> str:
    return f"arn:{session.partition}:{service}:{session.region}:{session.account_id}:{resource}"


def _network_leftovers(session, name: str) -> list[tuple[str, str]]:
    """Every network resource the stack makes, asked of EC2 directly: by the tag, and, for what
    carries no tag (network interfaces HyperPod and FSx put in the subnet, the S3 endpoint),
    by the tagged VPCs they live in."""
    ec2 = session.client("ec2")
    filters = [{"Name": f"tag:{CLUSTER_TAG}", "Values": [name]}]
    vpcs = [v["VpcId"] for v in paginate(ec2, "describe_vpcs", "Vpcs", Filters=filters)]
    found = [("vpc", v) for v in vpcs]
    found += [("subnet", s["SubnetId"]) for s in paginate(ec2, "describe_subnets", "Subnets", Filters=filters)]
    found += [("security-group", g["GroupId"])
              for g in paginate(ec2, "describe_security_groups", "SecurityGroups", Filters=filters)]
    found += [("route-table", t["RouteTableId"])
              for t in paginate(ec2, "describe_route_tables", "RouteTables", Filters=filters)]
    found += [("internet-gateway", g["InternetGatewayId"])
              for g in paginate(ec2, "describe_internet_gateways", "InternetGateways", Filters=filters)]
    # DescribeAddresses is not paginated: it answers every matching address at once.
    found += [("elastic-ip", a["AllocationId"]) for a in call(ec2, "describe_addresses", Filters=filters).get(
        "Addresses", [])]
    # NAT gateways: tags read from each (the emulator ignores tag filters here); deleted ones cost nothing.
    found += [("natgateway", g["NatGatewayId"]) for g in paginate(ec2, "describe_nat_gateways", "NatGateways")
              if has_cluster_tag(g.get("Tags"), name) and g.get("State") not in ("deleted", "deleting")]
    if vpcs:
        in_vpcs = [{"Name": "vpc-id", "Values": vpcs}]
        found += [("vpc-endpoint", e["VpcEndpointId"])
                  for e in paginate(ec2, "describe_vpc_endpoints", "VpcEndpoints", Filters=in_vpcs)
                  if e.get("State", "").lower() not in ("deleted", "deleting")]
        found += [("network-interface", i["NetworkInterfaceId"])
                  for i in paginate(ec2, "describe_network_interfaces", "NetworkInterfaces", Filters=in_vpcs)]
    return found

"""The ``[cluster]`` table of ``llamapod.toml``: what HyperPod cluster to build.

Validation happens here, once, before anything is created, and reports every problem
at once (ParallelCluster-style), each phrased as the rule to follow. Which instance
types, regions and enum values are valid is read from botocore's own data (the same
data the AWS SDK validates requests with), never from a list kept in this project.

The defaults reproduce the seed guide: us-east-1, a ``controller-machine`` group of one
ml.c5.xlarge, a ``worker-group-1`` group of four ml.g5.48xlarge, ThreadsPerCore 1 and a
1200 GiB PERSISTENT_2 FSx for Lustre file system.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llamapod import validate
from llamapod.errors import ConfigError
from llamapod.instances import has_accelerators
from llamapod.lifecycle import provisioning

# Matched with fullmatch (see llamapod.validate): a trailing newline is not part of a name.
# The ClusterName / InstanceGroupName pattern of the SageMaker API (1-63 characters).
NAME_RE = validate.CLUSTER_NAME
REGION_RE = validate.REGION
AZ_NAME_RE = re.compile(r"(?P<region>[a-z]{2}(-[a-z]+)+-\d+)[a-z]")
AZ_ID_RE = re.compile(r"[a-z]{2,5}\d+-az\d+")
PARTITION_RE = validate.SLURM_NAME
USER_RE = validate.LINUX_USER

DEFAULT_NAME = "ml-4-g5-48x-cluster"
DEFAULT_REGION = "us-east-1"
DEFAULT_CONTROLLER = {"name": "controller-machine", "instance_type": "ml.c5.xlarge", "count": 1}
DEFAULT_WORKER = {"name": "worker-group-1", "instance_type": "ml.g5.48xlarge", "count": 4}
LIFECYCLE_PREFIX = "src"  # the seed uploads lifecycle scripts to s3://<bucket>/src
MAX_GROUP_INSTANCES = 6758  # InstanceCount's maximum in the SageMaker service model

# FSx for Lustre storage rules (FSx API reference, CreateFileSystem StorageCapacity):
# SSD deployment types take 1200, 2400, then multiples of 2400; SCRATCH_1 takes multiples of 3600.
FSX_THROUGHPUT = {"PERSISTENT_2": (125, 250, 500, 1000), "PERSISTENT_1": (50, 100, 200)}
FSX_DEPLOYMENT_TYPES = ("PERSISTENT_2", "PERSISTENT_1", "SCRATCH_2", "SCRATCH_1")
FSX_COMPRESSION = ("LZ4", "NONE")

RESERVED_TAG_PREFIXES = ("aws:", "llamapod:")


class InstanceGroupSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    instance_type: str
    count: int = 1


class WorkerGroupSpec(InstanceGroupSpec):
    # Slurm partition the group's nodes join; the seed names it after the instance type.
    partition: str


class FsxSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    capacity_gib: int = 1200
    deployment_type: Literal["PERSISTENT_2", "PERSISTENT_1", "SCRATCH_2", "SCRATCH_1"] = "PERSISTENT_2"
    throughput_per_tib: int | None = 250  # MB/s per TiB; None for scratch file systems
    compression: Literal["LZ4", "NONE"] = "LZ4"


class NetworkSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    vpc_cidr: str = "10.1.0.0/16"
    public_subnet_cidr: str = "10.1.0.0/24"
    # Large on purpose: every EFA interface of every node takes an address here.
    private_subnet_cidr: str = "10.1.128.0/17"


class SharedUserSpec(BaseModel):
    """A user besides the cluster user, with a fixed uid so files on /fsx have one owner everywhere."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    uid: int


class AccountingSpec(BaseModel):
    """Slurm accounting: slurmdbd on the controller against this MySQL/MariaDB database."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    storage_host: str
    storage_user: str
    storage_pass: str = Field(repr=False)
    storage_port: int = 3306
    storage_loc: str = "slurm_acct_db"


class ClusterSpec(BaseModel):
    """A validated ``[cluster]`` table. Build it with ``load_cluster_spec``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = DEFAULT_NAME
    region: str = DEFAULT_REGION
    availability_zone: str | None = None  # a name (us-east-1a) or an ID (use1-az4)
    controller: InstanceGroupSpec = InstanceGroupSpec(**DEFAULT_CONTROLLER)
    login: InstanceGroupSpec | None = None
    workers: tuple[WorkerGroupSpec, ...] = (WorkerGroupSpec(**DEFAULT_WORKER, partition="ml.g5.48xlarge"),)
    threads_per_core: int = 1
    ebs_volume_gb: int | None = None  # extra EBS volume per node (mounted at /opt/sagemaker)
    deep_health_checks: tuple[str, ...] = ()
    node_recovery: Literal["Automatic", "None"] = "Automatic"
    fsx: FsxSpec = FsxSpec()
    network: NetworkSpec = NetworkSpec()
    tags: dict[str, str] = Field(default_factory=dict)
    cluster_user: str = "ubuntu"
    shared_users: tuple[SharedUserSpec, ...] = ()
    containers: bool = False  # Docker, enroot and pyxis data off the root volume
    accounting: AccountingSpec | None = None

    @property
    def instance_groups(self) -> list[InstanceGroupSpec]:
        """Every group in create_cluster order: controller, login (if any), workers."""
        groups: list[InstanceGroupSpec] = [self.controller]
        if self.login is not None:
            groups.append(self.login)
        groups.extend(self.workers)
        return groups

    @property
    def availability_zone_kind(self) -> Literal["id", "name"] | None:
        if self.availability_zone is None:
            return None
        return "id" if AZ_ID_RE.fullmatch(self.availability_zone) else "name"

    def instance_counts(self) -> dict[str, int]:
        """Instances requested per type, summed over groups (what quotas are checked against)."""
        counts: dict[str, int] = {}
        for group in self.instance_groups:
            counts[group.instance_type] = counts.get(group.instance_type, 0) + group.count
        return counts

    @property
    def total_instances(self) -> int:
        return sum(group.count for group in self.instance_groups)

    @property
    def instance_types(self) -> list[str]:
        """Every group's type, once each: the network's AZ must offer all of them."""
        return sorted({group.instance_type for group in self.instance_groups})


# ---- facts read from botocore ----------------------------------------------------


def _read_botocore_facts() -> dict[str, list[str]]:
    import botocore.session

    session = botocore.session.get_session()
    model = session.get_service_model("sagemaker")
    regions: set[str] = set()
    for partition in ("aws", "aws-cn", "aws-us-gov"):
        regions.update(session.get_available_regions("sagemaker", partition_name=partition))
    return {
        "instance_types": list(model.shape_for("ClusterInstanceType").enum),
        "deep_health_checks": list(model.shape_for("DeepHealthCheckType").enum),
        "regions": sorted(regions),
    }


@lru_cache(maxsize=None)
def botocore_facts() -> dict[str, list[str]]:
    """What botocore's data says about HyperPod, cached per botocore version.

    Reading it means parsing the SageMaker service model and the endpoint data (megabytes
    of JSON, most of a second); the installed botocore only changes with its version, so
    the few hundred bytes llamapod needs are kept under the cache folder.
    """
    import json
    from importlib.metadata import version

    from llamapod.paths import cache_dir

    path = cache_dir() / f"botocore-facts-{version('botocore')}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    facts = _read_botocore_facts()
    try:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(facts), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # a read-only home only costs the next run the same parse
    return facts


def hyperpod_instance_types() -> tuple[str, ...]:
    """Instance types HyperPod accepts: the ClusterInstanceType enum of the service model."""
    return tuple(botocore_facts()["instance_types"])


def deep_health_check_types() -> tuple[str, ...]:
    return tuple(botocore_facts()["deep_health_checks"])


def known_regions() -> frozenset[str]:
    """Regions where botocore's endpoint data lists SageMaker, across public partitions."""
    return frozenset(botocore_facts()["regions"])


def partition_of(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


# ---- validation -----------------------------------------------------------------

_TOP_KEYS = ("name", "region", "availability_zone", "controller", "login", "workers", "threads_per_core",
             "ebs_volume_gb", "deep_health_checks", "node_recovery", "fsx", "network", "tags", "cluster_user",
             "shared_users", "containers", "accounting")
_GROUP_KEYS = ("name", "instance_type", "count")
_WORKER_KEYS = _GROUP_KEYS + ("partition",)
_FSX_KEYS = ("capacity_gib", "deployment_type", "throughput_per_tib", "compression")
_NETWORK_KEYS = ("vpc_cidr", "public_subnet_cidr", "private_subnet_cidr")
_SHARED_USER_KEYS = ("name", "uid")
_ACCOUNTING_KEYS = ("storage_host", "storage_user", "storage_pass", "storage_port", "storage_loc")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _got(value: Any) -> str:
    text = repr(value)
    if len(text) <= 60:
        return f" (got {text})"
    size = f", {len(value)} characters" if isinstance(value, str) else ""
    return f" (got {text[:40]}...{size})"


def _closest(value: Any, choices: tuple[str, ...] | list[str]) -> str:
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


def _key_path(where: str, key: Any) -> str:
    # A quoted TOML key may hold anything, a newline included: shown as repr it stays on one line.
    plain = isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_-]+", key)
    return f"{where}.{key}" if plain else f"{where}[{key!r}]"


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, text: str) -> None:
        self.items.append(text)

    def unknown_keys(self, table: dict, known: tuple[str, ...], where: str) -> None:
        for key in table:
            if key not in known:
                hint = _closest(str(key), list(known))
                self.add(f"{_key_path(where, key)} is not a setting llamapod knows (known: {', '.join(known)}){hint}")


def _check_table(value: Any, where: str, problems: _Problems) -> dict | None:
    if isinstance(value, dict):
        return value
    problems.add(f"{where} must be a table ([{where}]){_got(value)}")
    return None


def _check_name(value: Any, where: str, problems: _Problems) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= 63 or not NAME_RE.fullmatch(value):
        problems.add(f"{where} must be 1-63 letters, digits or hyphens, starting and ending with a letter "
                     f"or digit{_got(value)}")


def _check_instance_type(value: Any, where: str, problems: _Problems) -> None:
    valid = hyperpod_instance_types()
    if not isinstance(value, str) or value not in valid:
        hint = _closest(value, valid)
        if isinstance(value, str) and not value.startswith("ml.") and f"ml.{value}" in valid:
            hint = f"; did you mean ml.{value}?"
        problems.add(f"{where} must be an instance type HyperPod offers, e.g. ml.g5.48xlarge "
                     f"(got {value!r}{hint})")


def _check_count(value: Any, where: str, problems: _Problems, *, exactly: int | None = None) -> None:
    if exactly is not None:
        if not _is_int(value) or value != exactly:
            problems.add(f"{where} must be {exactly}: Slurm runs one controller node{_got(value)}")
        return
    if not _is_int(value) or not 1 <= value <= MAX_GROUP_INSTANCES:
        problems.add(f"{where} must be a whole number from 1 to {MAX_GROUP_INSTANCES}{_got(value)}")


def _check_group(raw: Any, where: str, problems: _Problems, *, worker: bool, controller: bool = False) -> dict | None:
    table = _check_table(raw, where, problems)
    if table is None:
        return None
    problems.unknown_keys(table, _WORKER_KEYS if worker else _GROUP_KEYS, where)
    for key in ("name", "instance_type"):
        if key not in table:
            problems.add(f"{where}.{key} must be set")
    if "name" in table:
        _check_name(table["name"], f"{where}.name", problems)
    if "instance_type" in table:
        _check_instance_type(table["instance_type"], f"{where}.instance_type", problems)
    _check_count(table.get("count", 1), f"{where}.count", problems, exactly=1 if controller else None)
    if worker and "partition" in table:
        partition = table["partition"]
        if not isinstance(partition, str) or not PARTITION_RE.fullmatch(partition):
            problems.add(f"{where}.partition must be 1-64 letters, digits, dots, hyphens or underscores, "
                         f"starting with a letter or digit{_got(partition)}")
    return table


def _check_region(value: Any, problems: _Problems) -> None:
    if not isinstance(value, str) or not REGION_RE.fullmatch(value):
        problems.add(f"cluster.region must be an AWS region code such as us-east-1{_got(value)}")
    elif value not in known_regions():
        hint = _closest(value, sorted(known_regions()))
        problems.add(f"cluster.region must be a region where SageMaker is available, e.g. us-east-1 "
                     f"(got {value!r}{hint})")


def _check_availability_zone(value: Any, region: Any, problems: _Problems) -> None:
    if value is None:
        return
    if isinstance(value, str) and AZ_ID_RE.fullmatch(value):
        return
    match = AZ_NAME_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        problems.add("cluster.availability_zone must be an AZ name such as us-east-1a or an AZ ID such as "
                     f"use1-az4{_got(value)}")
    elif isinstance(region, str) and match.group("region") != region:
        problems.add(f"cluster.availability_zone must be in cluster.region {region}{_got(value)}")


def _check_fsx(raw: Any, problems: _Problems) -> None:
    table = _check_table(raw, "cluster.fsx", problems)
    if table is None:
        return
    problems.unknown_keys(table, _FSX_KEYS, "cluster.fsx")
    deployment = table.get("deployment_type", "PERSISTENT_2")
    if deployment not in FSX_DEPLOYMENT_TYPES:
        problems.add(f"cluster.fsx.deployment_type must be one of {', '.join(FSX_DEPLOYMENT_TYPES)}"
                     f"{_got(deployment)}")
        deployment = None
    capacity = table.get("capacity_gib", 1200)
    if deployment == "SCRATCH_1":
        if not _is_int(capacity) or capacity <= 0 or not (capacity in (1200, 2400) or capacity % 3600 == 0):
            problems.add(f"cluster.fsx.capacity_gib must be 1200, 2400 or a multiple of 3600 for SCRATCH_1"
                         f"{_got(capacity)}")
    elif not _is_int(capacity) or capacity <= 0 or not (capacity == 1200 or capacity % 2400 == 0):
        kind = deployment or "this deployment type"
        problems.add(f"cluster.fsx.capacity_gib must be 1200 or a multiple of 2400 for {kind}{_got(capacity)}")
    default_throughput = 250 if deployment == "PERSISTENT_2" else None
    throughput = table.get("throughput_per_tib", default_throughput)
    if deployment in FSX_THROUGHPUT:
        allowed = FSX_THROUGHPUT[deployment]
        if throughput not in allowed or not _is_int(throughput):
            problems.add(f"cluster.fsx.throughput_per_tib must be one of {', '.join(map(str, allowed))} "
                         f"for {deployment}{_got(throughput)}")
    elif deployment is not None and table.get("throughput_per_tib") is not None:
        problems.add(f"cluster.fsx.throughput_per_tib must not be set for {deployment} "
                     f"(only PERSISTENT file systems take it){_got(throughput)}")
    compression = table.get("compression", "LZ4")
    if compression not in FSX_COMPRESSION:
        problems.add(f"cluster.fsx.compression must be LZ4 or NONE{_got(compression)}")


def _parse_network(value: Any, where: str, problems: _Problems) -> ipaddress.IPv4Network | None:
    try:
        network = ipaddress.IPv4Network(value, strict=True) if isinstance(value, str) else None
    except ValueError:
        network = None
    if network is None or not 16 <= network.prefixlen <= 28:
        problems.add(f"{where} must be an IPv4 CIDR block from /16 to /28 with no host bits set, "
                     f"e.g. 10.1.0.0/16{_got(value)}")
        return None
    return network


def _check_network(raw: Any, problems: _Problems) -> None:
    table = _check_table(raw, "cluster.network", problems)
    if table is None:
        return
    problems.unknown_keys(table, _NETWORK_KEYS, "cluster.network")
    defaults = NetworkSpec()
    vpc = _parse_network(table.get("vpc_cidr", defaults.vpc_cidr), "cluster.network.vpc_cidr", problems)
    public = _parse_network(table.get("public_subnet_cidr", defaults.public_subnet_cidr),
                            "cluster.network.public_subnet_cidr", problems)
    private = _parse_network(table.get("private_subnet_cidr", defaults.private_subnet_cidr),
                             "cluster.network.private_subnet_cidr", problems)
    for subnet, key in ((public, "public_subnet_cidr"), (private, "private_subnet_cidr")):
        if vpc is not None and subnet is not None and not subnet.subnet_of(vpc):
            problems.add(f"cluster.network.{key} must lie inside cluster.network.vpc_cidr {vpc} (got '{subnet}')")
    if public is not None and private is not None and public.overlaps(private):
        problems.add(f"cluster.network.public_subnet_cidr and private_subnet_cidr must not overlap "
                     f"(got '{public}' and '{private}')")


TAG_PUNCTUATION = "_.:/=+-@"


def tag_text_ok(text: str) -> bool:
    """The character set SageMaker, IAM and FSx accept in tag keys and values:
    ``[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*`` (the Tag Key/Value patterns of their service models).

    Python's ``re`` has no \\p{...} classes, so the Unicode categories are asked of unicodedata:
    letters (L*), separators (Z*, e.g. a space) and numbers (N*).
    """
    return all(unicodedata.category(c)[0] in "LZN" or c in TAG_PUNCTUATION for c in text)


def _check_tags(raw: Any, problems: _Problems) -> None:
    table = _check_table(raw, "cluster.tags", problems)
    if table is None:
        return
    allowed = f"letters, digits, spaces and {' '.join(TAG_PUNCTUATION)}"
    for key, value in table.items():
        if (not isinstance(key, str) or not 1 <= len(key) <= 128 or key.lower().startswith(RESERVED_TAG_PREFIXES)
                or not tag_text_ok(key)):
            problems.add(f"cluster.tags keys must be 1-128 {allowed} and not start with aws: or llamapod: "
                         f"(got {key!r})")
        # 1, not 0: CloudFormation's stack tags refuse an empty value (TagValue, min 1).
        if not isinstance(value, str) or not 1 <= len(value) <= 256 or not tag_text_ok(value):
            problems.add(f"cluster.tags.{key} must be 1-256 {allowed}{_got(value)}")


def _check_scalars(table: dict, problems: _Problems) -> None:
    threads = table.get("threads_per_core", 1)
    if not _is_int(threads) or threads not in (1, 2):
        problems.add(f"cluster.threads_per_core must be 1 or 2 (1 turns hyperthreading off){_got(threads)}")
    if "ebs_volume_gb" in table:
        ebs = table["ebs_volume_gb"]
        if not _is_int(ebs) or not 1 <= ebs <= 16384:
            problems.add(f"cluster.ebs_volume_gb must be a whole number of GB from 1 to 16384{_got(ebs)}")
    checks = table.get("deep_health_checks", [])
    valid_checks = deep_health_check_types()
    if not isinstance(checks, list) or any(c not in valid_checks for c in checks) or len(set(map(str, checks))) != len(checks):
        problems.add(f"cluster.deep_health_checks must be a list of distinct values from "
                     f"{', '.join(valid_checks)}{_got(checks)}")
    _check_connectivity_checks(table, checks, problems)
    recovery = table.get("node_recovery", "Automatic")
    if recovery not in ("Automatic", "None"):
        problems.add(f"cluster.node_recovery must be Automatic or None{_got(recovery)}")
    user = table.get("cluster_user", "ubuntu")
    rule = provisioning.rule_problem("user", user)
    if rule:
        problems.add(f"cluster.cluster_user must be {rule}{_got(user)}")
    containers = table.get("containers", False)
    if not isinstance(containers, bool):
        problems.add(f"cluster.containers must be true or false{_got(containers)}")


def _check_connectivity_checks(table: dict, checks: Any, problems: _Problems) -> None:
    """InstanceConnectivity tests links between a group's instances: HyperPod needs 2 or more
    (SageMaker developer guide, "Deep health checks"). ``plan`` asks for it only on accelerator
    groups of 2 or more; a cluster with none of those could never run it."""
    if not isinstance(checks, list) or "InstanceConnectivity" not in checks:
        return
    workers = table.get("workers", [DEFAULT_WORKER])
    groups = [g for g in (workers if isinstance(workers, list) else []) if isinstance(g, dict)]
    login = table.get("login")
    if isinstance(login, dict):
        groups.append(login)
    eligible = [g for g in groups if isinstance(g.get("instance_type"), str) and has_accelerators(g["instance_type"])
                and _is_int(g.get("count", 1)) and g.get("count", 1) >= 2]
    if not eligible:
        problems.add("cluster.deep_health_checks: InstanceConnectivity needs a GPU or Trainium group of at least "
                     "2 instances, and no group has that; remove it or raise a group's count")


def _check_shared_users(raw: Any, cluster_user: Any, problems: _Problems) -> None:
    """Same rules as the nodes apply (llamapod.lifecycle.provisioning), checked before anything is created."""
    if not isinstance(raw, list):
        problems.add(f"cluster.shared_users must be a list of {{name, uid}} tables{_got(raw)}")
        return
    names, uids = [cluster_user], []
    for i, entry in enumerate(raw):
        where = f"cluster.shared_users[{i}]"
        table = _check_table(entry, where, problems)
        if table is None:
            continue
        problems.unknown_keys(table, _SHARED_USER_KEYS, where)
        name, uid = table.get("name"), table.get("uid")
        rule = provisioning.rule_problem("user", name)
        if rule:
            problems.add(f"{where}.name must be {rule}{_got(name)}")
        elif name in names:
            problems.add(f"{where}.name must differ from cluster.cluster_user and the other shared users{_got(name)}")
        rule = provisioning.uid_problem(uid)
        if rule:
            problems.add(f"{where}.uid must be {rule}{_got(uid)}")
        elif uid in uids:
            problems.add(f"{where}.uid must differ from the other shared users' uids{_got(uid)}")
        names.append(name)
        uids.append(uid)


def _check_accounting(raw: Any, problems: _Problems) -> None:
    if raw is None:
        return
    table = _check_table(raw, "cluster.accounting", problems)
    if table is None:
        return
    problems.unknown_keys(table, _ACCOUNTING_KEYS, "cluster.accounting")
    for key in ("storage_host", "storage_user", "storage_pass"):
        if key not in table:
            problems.add(f"cluster.accounting.{key} must be set")
    # The node applies the same rules before writing slurmdbd.conf (llamapod.lifecycle.provisioning).
    acct = provisioning.Accounting(storage_host=table.get("storage_host", "x"),
                                   storage_user=table.get("storage_user", "x"),
                                   storage_pass=table.get("storage_pass", "x"),
                                   storage_port=table.get("storage_port", provisioning.DEFAULT_STORAGE_PORT),
                                   storage_loc=table.get("storage_loc", provisioning.DEFAULT_STORAGE_LOC))
    for key, rule in provisioning.accounting_rules(acct):
        value = getattr(acct, key)
        got = " (got a value that breaks it)" if key == "storage_pass" else _got(value)
        problems.add(f"cluster.accounting.{key} must be {rule}{got}")


def validate_cluster_table(table: Any) -> list[str]:
    """Every problem in a raw ``[cluster]`` table, each phrased as the rule to follow."""
    problems = _Problems()
    if not isinstance(table, dict):
        problems.add(f"cluster must be a table ([cluster]){_got(table)}")
        return problems.items
    problems.unknown_keys(table, _TOP_KEYS, "cluster")
    _check_name(table.get("name", DEFAULT_NAME), "cluster.name", problems)
    region = table.get("region", DEFAULT_REGION)
    _check_region(region, problems)
    _check_availability_zone(table.get("availability_zone"), region, problems)

    group_names: list[Any] = []
    controller = _check_group(table.get("controller", DEFAULT_CONTROLLER), "cluster.controller", problems,
                              worker=False, controller=True)
    if controller is not None:
        group_names.append(controller.get("name"))
    if table.get("login") is not None:
        login = _check_group(table["login"], "cluster.login", problems, worker=False)
        if login is not None:
            group_names.append(login.get("name"))
    workers = table.get("workers", [DEFAULT_WORKER])
    if not isinstance(workers, list) or not workers:
        problems.add("cluster.workers must be a non-empty list of worker groups ([[cluster.workers]])"
                     f"{_got(workers)}")
    else:
        for i, raw in enumerate(workers):
            worker = _check_group(raw, f"cluster.workers[{i}]", problems, worker=True)
            if worker is not None:
                group_names.append(worker.get("name"))
    seen: set[str] = set()
    for name in group_names:
        if isinstance(name, str) and name in seen:
            problems.add(f"instance group names must be unique across controller, login and workers "
                         f"(got {name!r} twice)")
        if isinstance(name, str):
            seen.add(name)

    _check_scalars(table, problems)
    _check_shared_users(table.get("shared_users", []), table.get("cluster_user", "ubuntu"), problems)
    _check_accounting(table.get("accounting"), problems)
    _check_fsx(table.get("fsx", {}), problems)
    _check_network(table.get("network", {}), problems)
    _check_tags(table.get("tags", {}), problems)
    return problems.items


# ---- building the spec ------------------------------------------------------------


def apply_overrides(table: dict, overrides: dict[str, Any]) -> dict:
    """Flags on top of the file. ``worker_type``/``workers`` set the first worker group."""
    merged = dict(table)
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("worker_type", "workers"):
            groups = merged.get("workers", [dict(DEFAULT_WORKER)])
            if isinstance(groups, list) and groups and isinstance(groups[0], dict):
                first = dict(groups[0])
                first["instance_type" if key == "worker_type" else "count"] = value
                merged["workers"] = [first] + list(groups[1:])
        else:
            merged[key] = value
    return merged


def spec_from_table(table: Any) -> ClusterSpec:
    """Validate a raw table and build the spec; ConfigError lists every problem."""
    problems = validate_cluster_table(table)
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise ConfigError(f"the [cluster] settings have {count}: {problems[0]}"
                          if len(problems) == 1 else f"the [cluster] settings have {count}",
                          "fix them in llamapod.toml (or the flags), then re-run", problems=problems)
    workers = []
    for raw in table.get("workers", [DEFAULT_WORKER]):
        worker = dict(raw)
        worker.setdefault("partition", worker["instance_type"])
        workers.append(WorkerGroupSpec(**worker))
    fsx = dict(table.get("fsx", {}))
    if fsx.get("deployment_type", "PERSISTENT_2") not in FSX_THROUGHPUT:
        fsx["throughput_per_tib"] = None
    fields = {k: v for k, v in table.items() if k not in ("workers", "fsx", "controller", "login", "network",
                                                         "deep_health_checks", "shared_users", "accounting")}
    return ClusterSpec(
        **fields,
        controller=InstanceGroupSpec(**table.get("controller", DEFAULT_CONTROLLER)),
        login=InstanceGroupSpec(**table["login"]) if table.get("login") is not None else None,
        workers=tuple(workers),
        deep_health_checks=tuple(table.get("deep_health_checks", ())),
        fsx=FsxSpec(**fsx),
        network=NetworkSpec(**table.get("network", {})),
        shared_users=tuple(SharedUserSpec(**user) for user in table.get("shared_users", [])),
        accounting=AccountingSpec(**table["accounting"]) if table.get("accounting") is not None else None,
    )


def load_cluster_spec(path: str | Path | None, overrides: dict[str, Any] | None = None) -> ClusterSpec:
    """The ``[cluster]`` table of ``path`` (the seed's defaults when None) with ``overrides``.

    The region is, in order: ``overrides["region"]`` (--region), the file's ``region``,
    ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, then us-east-1.

    ``overrides`` maps top-level keys (``name``, ``region``, ``availability_zone``, ...) to
    values from flags; ``worker_type`` and ``workers`` set the first worker group's instance
    type and count. None values are ignored.
    """
    from llamapod.config.files import load_table

    table = load_table(path, "cluster") if path is not None else {}
    if "region" not in table:
        # The standard AWS settings come between the file and the seed's us-east-1.
        env_region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if env_region:
            table = {**table, "region": env_region}
    return spec_from_table(apply_overrides(table, overrides or {}))

"""What the cluster looks like and which part of it this node is (standard library only)."""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from node_system import StepError, read_json
from provisioning import (
    DEFAULT_CLUSTER_USER,
    FILE_NAME,
    Accounting,
    ProvisioningError,
    ProvisioningParameters,
    SharedUser,
    from_dict,
)

log = logging.getLogger("llamapod.lifecycle")

ROLES = ("controller", "login", "worker")


@dataclass(frozen=True)
class Node:
    group: str
    name: str
    address: str
    role: str
    partition: str | None = None

    @property
    def slurm_name(self) -> str:
        """EC2's host-name scheme (ip-10-1-2-3): what HyperPod nodes call themselves."""
        return "ip-" + self.address.replace(".", "-")


@dataclass(frozen=True)
class Cluster:
    name: str
    nodes: tuple[Node, ...]
    fsx_dns_name: str
    fsx_mountname: str
    partitions: tuple[tuple[str, str], ...]  # (partition, group), in the order given
    cluster_user: str = DEFAULT_CLUSTER_USER
    shared_users: tuple[SharedUser, ...] = ()
    containers: bool = False
    accounting: Accounting | None = None
    extras: dict = field(default_factory=dict)

    @property
    def controller(self) -> Node:
        return next(n for n in self.nodes if n.role == "controller")

    def node_at(self, address: str) -> Node | None:
        return next((n for n in self.nodes if n.address == address), None)


def _require(mapping: dict, key: str, kind: type, where: str, source: Path):
    value = mapping.get(key)
    if not isinstance(value, kind) or (kind is str and not value):
        wanted = "a non-empty string" if kind is str else ("a list" if kind is list else f"a {kind.__name__}")
        raise StepError(f"{source}: {where}{key} must be {wanted}, found {value!r}")
    return value


def load_parameters(path: Path) -> ProvisioningParameters:
    """provisioning_parameters.json, checked against the contract `llamapod up` wrote it with."""
    try:
        params = from_dict(read_json(path, FILE_NAME))
    except ProvisioningError as exc:
        raise StepError(f"{path}: " + "; ".join(exc.problems)) from None
    if params.unknown_keys:
        log.warning("%s: ignoring keys llamapod does not know: %s", path, ", ".join(params.unknown_keys))
    return params


def load_cluster(resource_config: Path, provisioning_parameters: Path) -> Cluster:
    """Read both HyperPod files; every shape problem becomes one StepError naming file and key."""
    resources = read_json(resource_config, "resource_config.json")
    params = load_parameters(provisioning_parameters)
    partitions = [(w.partition, w.group) for w in params.worker_groups]
    worker_partition = {group: partition for partition, group in partitions}

    cluster_config = resources.get("ClusterConfig") or {}
    cluster_name = cluster_config.get("ClusterName") if isinstance(cluster_config, dict) else None
    groups = _require(resources, "InstanceGroups", list, "", resource_config)
    nodes: list[Node] = []
    for gi, group in enumerate(groups):
        if not isinstance(group, dict):
            raise StepError(f"{resource_config}: InstanceGroups[{gi}] must be an object")
        group_name = _require(group, "Name", str, f"InstanceGroups[{gi}].", resource_config)
        if group_name == params.controller_group:
            role, partition = "controller", None
        elif group_name == params.login_group:
            role, partition = "login", None
        elif group_name in worker_partition:
            role, partition = "worker", worker_partition[group_name]
        else:
            raise StepError(
                f"{resource_config}: instance group {group_name!r} is neither the controller group "
                f"({params.controller_group!r}), the login group, nor a worker group in {FILE_NAME}")
        for ii, instance in enumerate(group.get("Instances") or []):  # HyperPod sends null for empty groups
            where = f"InstanceGroups[{gi}].Instances[{ii}]."
            if not isinstance(instance, dict):
                raise StepError(f"{resource_config}: {where[:-1]} must be an object")
            address = _require(instance, "CustomerIpAddress", str, where, resource_config)
            try:
                ipaddress.IPv4Address(address)
            except ValueError:
                raise StepError(f"{resource_config}: {where}CustomerIpAddress {address!r} is not an IPv4 address") from None
            name = instance.get("InstanceName") or f"{group_name}-{ii + 1}"
            nodes.append(Node(group_name, name, address, role, partition))

    controllers = [n for n in nodes if n.role == "controller"]
    if len(controllers) != 1:
        raise StepError(
            f"{resource_config}: the controller group {params.controller_group!r} must have exactly one instance, "
            f"found {len(controllers)}")
    name = cluster_name if isinstance(cluster_name, str) and cluster_name else "llamapod"
    return Cluster(
        name=name,
        nodes=tuple(nodes),
        fsx_dns_name=params.fsx_dns_name,
        fsx_mountname=params.fsx_mountname,
        partitions=tuple(partitions),
        cluster_user=params.cluster_user,
        shared_users=params.shared_users,
        containers=params.containers,
        accounting=params.accounting,
    )


def local_addresses(fib_trie: Path = Path("/proc/net/fib_trie")) -> set[str]:
    """IPv4 addresses assigned to this network namespace, from the kernel's routing trie.

    /proc/net is per network namespace, so each test "node" sees only its own addresses.
    """
    try:
        text = fib_trie.read_text()
    except OSError:
        return set()
    found: set[str] = set()
    previous = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped == "/32 host LOCAL":
            match = re.search(r"(\d+\.\d+\.\d+\.\d+)", previous)
            if match:
                found.add(match.group(1))
        previous = stripped
    return found


def this_node(cluster: Cluster, address: str | None, resource_config: Path) -> Node:
    if address:
        node = cluster.node_at(address)
        if node is None:
            known = ", ".join(n.address for n in cluster.nodes)
            raise StepError(f"this node's address {address} is not in {resource_config} (known: {known})")
        return node
    mine = local_addresses()
    matches = [n for n in cluster.nodes if n.address in mine]
    if not matches:
        known = ", ".join(n.address for n in cluster.nodes) or "none"
        local = ", ".join(sorted(mine - {"127.0.0.1"})) or "none"
        raise StepError(
            f"none of this node's addresses ({local}) is in {resource_config} (known: {known})")
    return matches[0]


def cluster_name_for_slurm(name: str) -> str:
    """Slurm cluster names are lowercase alphanumerics (it lowercases them and warns otherwise)."""
    cleaned = re.sub(r"[^a-z0-9]", "", name.lower())
    return cleaned[:40] or "llamapod"

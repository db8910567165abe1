"""``llamapod status``: the cluster, its nodes, FSx, age and cost so far, as one dict."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from llamapod import validate
from llamapod.cloud import hyperpod, storage
from llamapod.cloud.ledger import Ledger
from llamapod.instances import instance_info


def cluster_status(session, name: str, ledger: Ledger | None, now: datetime | None = None) -> dict[str, Any]:
    """Everything ``status`` shows; raises ClusterStateError if the cluster does not exist."""
    validate.cluster_state_name(name)
    now = now or datetime.now(timezone.utc)
    cluster = hyperpod.describe_cluster(session, name)
    nodes = hyperpod.list_nodes(session, name)
    created = cluster.get("CreationTime")
    age_s = (now - created).total_seconds() if isinstance(created, datetime) else None
    groups = [_group(g) for g in cluster.get("InstanceGroups", [])]
    return {
        "name": name,
        "region": session.region,
        "arn": cluster["ClusterArn"],
        "status": cluster.get("ClusterStatus"),
        "failure_message": cluster.get("FailureMessage") or None,
        "created": created.isoformat() if isinstance(created, datetime) else None,
        "age_s": age_s,
        "instance_groups": groups,
        "nodes": [{"id": n["InstanceId"], "group": n["InstanceGroupName"], "status": n["Status"]} for n in nodes],
        "node_counts": hyperpod.node_counts(nodes),
        "fsx": _fsx(session, name, ledger),
        "hourly_usd": _hourly(groups),
        "cost_so_far_usd": _cost_so_far(groups, age_s),
    }


def _group(group: dict[str, Any]) -> dict[str, Any]:
    return {"name": group.get("InstanceGroupName"), "instance_type": group.get("InstanceType"),
            "current": group.get("CurrentCount", 0), "target": group.get("TargetCount", 0)}


def _fsx(session, name: str, ledger: Ledger | None) -> dict[str, Any] | None:
    recorded = ledger.get("fsx") if ledger is not None else None
    fs = storage.describe(session, recorded["id"]) if recorded else None
    if fs is None:
        tagged = storage.find_file_systems(session, name)
        fs = tagged[0] if tagged else None
    if fs is None:
        return None
    return {"id": fs["FileSystemId"], "state": fs.get("Lifecycle"), "dns_name": fs.get("DNSName"),
            "mount_name": fs.get("LustreConfiguration", {}).get("MountName"),
            "capacity_gib": fs.get("StorageCapacity")}


def _hourly(groups: list[dict[str, Any]]) -> float | None:
    """Instances running now at on-demand list price (None if a type has no known price)."""
    total = 0.0
    for group in groups:
        price = instance_info(group["instance_type"] or "").hourly_usd
        if price is None:
            return None
        total += price * group["current"]
    return round(total, 2)


def _cost_so_far(groups: list[dict[str, Any]], age_s: float | None) -> float | None:
    # An estimate: target counts times list price since creation (nodes that were still
    # booting are billed too). FSx, NAT and S3 are extra and small next to GPU nodes.
    if age_s is None:
        return None
    total = 0.0
    for group in groups:
        price = instance_info(group["instance_type"] or "").hourly_usd
        if price is None:
            return None
        total += price * max(group["current"], group["target"])
    return round(total * age_s / 3600.0, 2)


def status_lines(status: dict[str, Any]) -> list[str]:
    """The human summary shown above the node table."""
    from llamapod.cloud.progress import format_elapsed

    age = format_elapsed(status["age_s"]) if status["age_s"] is not None else "unknown"
    lines = [f"cluster {status['name']} ({status['region']}): {status['status']}, age {age}"]
    if status.get("failure_message"):
        lines.append(f"  failure: {status['failure_message']}")
    counts = ", ".join(f"{n} {s}" for s, n in status["node_counts"].items()) or "none"
    lines.append(f"  nodes: {counts}")
    fsx = status["fsx"]
    lines.append(f"  FSx: {fsx['id']} {fsx['state']} ({fsx['dns_name']})" if fsx else "  FSx: none found")
    hourly = f"${status['hourly_usd']:.2f}/h" if status["hourly_usd"] is not None else "unknown price"
    so_far = f"${status['cost_so_far_usd']:.2f}" if status["cost_so_far_usd"] is not None else "unknown"
    lines.append(f"  cost: {hourly} for instances now; about {so_far} so far (list prices, estimate)")
    return lines

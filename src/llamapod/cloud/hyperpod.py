"""The HyperPod cluster: create, wait with node counts, describe, list nodes, delete.

boto3 has no waiters for HyperPod clusters, so every wait here polls
``describe_cluster`` with a deadline.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from llamapod.aws_names import has_cluster_tag
from llamapod.cloud.ledger import Ledger
from llamapod.cloud.lookup import call_or_none, paginate, paginate_or_empty
from llamapod.cloud.progress import Waiter, stopped_deleting
from llamapod.cloud.session import call
from llamapod.errors import CloudError, ClusterStateError

CLUSTER_POLL_S = 20.0
CLUSTER_CREATE_TIMEOUT_S = 90 * 60
CLUSTER_DELETE_TIMEOUT_S = 45 * 60
ROLE_PROPAGATION_S = 120.0  # a new IAM role can take this long before SageMaker may assume it


def find_cluster(session, name: str) -> dict[str, Any] | None:
    return call_or_none(session.client("sagemaker"), "describe_cluster", ClusterName=name)


def describe_cluster(session, name: str) -> dict[str, Any]:
    """``describe_cluster``'s answer; a missing cluster is a ClusterStateError with what to do."""
    cluster = find_cluster(session, name)
    if cluster is None:
        raise ClusterStateError(f"there is no HyperPod cluster named {name} in {session.region}",
                                "create it with `llamapod up`, or pass --region if it is elsewhere")
    return cluster


def list_nodes(session, name: str, *, with_ips: bool = False) -> list[dict[str, Any]]:
    """Every node: InstanceId, InstanceGroupName, Status, LaunchTime (and PrivateIp with ``with_ips``)."""
    client = session.client("sagemaker")
    nodes = [{"InstanceId": summary["InstanceId"], "InstanceGroupName": summary["InstanceGroupName"],
              "InstanceType": summary.get("InstanceType"),
              "Status": summary.get("InstanceStatus", {}).get("Status", "Unknown"),
              "LaunchTime": summary.get("LaunchTime")}
             for summary in paginate(client, "list_cluster_nodes", "ClusterNodeSummaries", ClusterName=name)]
    if with_ips:
        for node in nodes:
            detail = call(client, "describe_cluster_node", ClusterName=name, NodeId=node["InstanceId"])
            ip = detail.get("NodeDetails", {}).get("PrivatePrimaryIp")
            if ip:
                node["PrivateIp"] = ip
    return nodes


def node_counts(nodes: list[dict[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(node["Status"] for node in nodes).items()))


def failure_hint(message: str) -> str:
    """What to do about the reasons HyperPod clusters fail most often."""
    text = message.lower()
    if "quota" in text or "resourcelimitexceeded" in text or "limit" in text:
        return "`llamapod doctor` shows which quota is short; request an increase in Service Quotas, " \
               "then `llamapod down` and `llamapod up` again"
    if "capacity" in text:
        return "AWS has no capacity for this instance type in the chosen availability zone: set " \
               "cluster.availability_zone to another zone (or try later), then `llamapod down` and `llamapod up`"
    if "lifecycle" in text or "on_create" in text or "script" in text:
        return "a node's lifecycle script failed: read its log in CloudWatch (/aws/sagemaker/Clusters/...), " \
               "then `llamapod down` and `llamapod up` again"
    return "fix the cause named above, then run `llamapod down` and `llamapod up` again"


def _raise_if_failed(name: str, cluster: dict[str, Any]) -> None:
    if cluster.get("ClusterStatus") == "Failed":
        message = cluster.get("FailureMessage") or "no failure message was given"
        raise ClusterStateError(f"cluster {name} failed: {message}", failure_hint(message))


def ensure_cluster(session, request: dict[str, Any], ledger: Ledger, waiter: Waiter) -> str:
    """Create the cluster unless it exists; returns its ARN (does not wait for InService)."""
    name = request["ClusterName"]
    cluster = find_cluster(session, name)
    if cluster is not None and cluster.get("ClusterStatus") == "Deleting":
        wait_deleted(session, name, waiter)
        cluster = None
    if cluster is None:
        arn = _create(session, request, waiter)
        waiter.reporter.line(f"cluster {name}: create requested")
    else:
        if not has_cluster_tag(_tags(session, cluster["ClusterArn"]), name) and ledger.get("cluster") is None:
            raise ClusterStateError(f"a HyperPod cluster named {name} already exists and was not made by llamapod",
                                    "choose another cluster.name in llamapod.toml")
        arn = cluster["ClusterArn"]
    ledger.record("cluster", name=name, arn=arn)
    if cluster is not None:
        _raise_if_failed(name, cluster)
    return arn


def _create(session, request: dict[str, Any], waiter: Waiter) -> str:
    client = session.client("sagemaker")
    deadline = waiter.clock.now() + ROLE_PROPAGATION_S
    while True:
        try:
            return call(client, "create_cluster", **request)["ClusterArn"]
        except CloudError as exc:
            if exc.code == "ResourceInUse" or "already exists" in exc.aws_message.lower():
                return describe_cluster(session, request["ClusterName"])["ClusterArn"]
            # IAM is eventually consistent: a role created seconds ago may not be assumable yet.
            role_not_ready = exc.code == "ValidationException" and "role" in exc.aws_message.lower()
            if not role_not_ready or waiter.clock.now() >= deadline:
                raise
            waiter.clock.sleep(10.0, waiter.cancel)


def _tags(session, arn: str) -> list[dict[str, str]]:
    """The resource's tags; a resource deleted meanwhile has none."""
    return paginate_or_empty(session.client("sagemaker"), "list_tags", "Tags", ResourceArn=arn)


def wait_in_service(session, name: str, waiter: Waiter) -> dict[str, Any]:
    """Wait for InService, showing the cluster status and node counts by status."""

    def probe() -> dict[str, Any]:
        cluster = describe_cluster(session, name)
        try:
            cluster["_node_counts"] = node_counts(list_nodes(session, name))
        except CloudError:
            cluster["_node_counts"] = {}
        return cluster

    def describe(cluster: dict[str, Any]) -> str:
        counts = cluster.get("_node_counts") or {}
        nodes = ", ".join(f"{n} {status}" for status, n in counts.items())
        return f"{cluster['ClusterStatus']}" + (f" (nodes: {nodes})" if nodes else "")

    cluster = waiter.until(f"cluster {name}", probe, lambda c: c.get("ClusterStatus") == "InService",
                           timeout=CLUSTER_CREATE_TIMEOUT_S, interval=CLUSTER_POLL_S, describe=describe,
                           failed=lambda c: _raise_if_failed(name, c))
    cluster.pop("_node_counts", None)
    return cluster


def delete_cluster(session, name: str, waiter: Waiter) -> None:
    cluster = find_cluster(session, name)
    if cluster is None:
        return
    if cluster.get("ClusterStatus") != "Deleting":
        deadline = waiter.clock.now() + CLUSTER_DELETE_TIMEOUT_S
        while True:
            try:
                if call_or_none(session.client("sagemaker"), "delete_cluster", ClusterName=name) is None:
                    return
                break
            except CloudError as exc:
                # A cluster in the middle of an update refuses deletion until it settles.
                if exc.code != "ConflictException" or waiter.clock.now() >= deadline:
                    raise
                waiter.clock.sleep(CLUSTER_POLL_S, waiter.cancel)
    wait_deleted(session, name, waiter)


def wait_deleted(session, name: str, waiter: Waiter) -> None:
    """Wait until the cluster is gone. A cluster seen ``Deleting`` that then shows another status
    (``Failed``, with a ``FailureMessage``) will not go away by waiting: that is an error now,
    not a 45-minute timeout (``ClusterStatus`` in botocore's SageMaker model)."""
    failed = stopped_deleting(f"cluster {name}", lambda c: c.get("ClusterStatus"), "Deleting",
                              lambda c: c.get("FailureMessage"), "cluster")
    waiter.until(f"cluster {name} deletion", lambda: find_cluster(session, name), lambda c: c is None,
                 timeout=CLUSTER_DELETE_TIMEOUT_S, interval=CLUSTER_POLL_S,
                 describe=lambda c: "deleted" if c is None else c.get("ClusterStatus", "Unknown"), failed=failed)


def find_clusters(session, cluster_name: str) -> list[dict[str, Any]]:
    """The cluster of that name if llamapod tagged it (a same-named stranger is left alone)."""
    cluster = find_cluster(session, cluster_name)
    if cluster is None:
        return []
    return [cluster] if has_cluster_tag(_tags(session, cluster["ClusterArn"]), cluster_name) else []

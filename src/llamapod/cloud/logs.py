"""The CloudWatch log groups HyperPod writes a cluster's node logs to.

HyperPod creates ``/aws/sagemaker/Clusters/<cluster name>/<cluster id>`` itself (through the
managed policies, without llamapod's tags) and never deletes it: it outlives the cluster
and its stored logs are billed. So ``down`` finds it by that name and deletes it once the
cluster is gone. The cluster id is the last part of the cluster's ARN.
"""

from __future__ import annotations

from typing import Any

from llamapod.cloud.lookup import call_or_none, paginate

LOG_GROUP_PREFIX = "/aws/sagemaker/Clusters/"


def cluster_id(cluster_arn: str) -> str:
    return cluster_arn.rsplit("/", 1)[-1]


def log_group_name(cluster_name: str, cluster_arn: str) -> str:
    return f"{LOG_GROUP_PREFIX}{cluster_name}/{cluster_id(cluster_arn)}"


def find_log_groups(session, cluster_name: str, *, not_of: set[str] = frozenset()) -> list[dict[str, Any]]:
    """Log groups of every cluster that had this name, except those of the cluster ids ``not_of``
    (a cluster of the same name that llamapod did not make keeps its logs)."""
    prefix = f"{LOG_GROUP_PREFIX}{cluster_name}/"
    groups = paginate(session.client("logs"), "describe_log_groups", "logGroups", logGroupNamePrefix=prefix)
    return [g for g in groups if g["logGroupName"].removeprefix(prefix) not in not_of]


def delete_log_group(session, name: str) -> None:
    call_or_none(session.client("logs"), "delete_log_group", logGroupName=name)

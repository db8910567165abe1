"""The FSx for Lustre file system mounted at /fsx on every node.

Its DNS name and mount name are in the create response, long before the file system
is AVAILABLE, so ``up`` hands them to the cluster at once and waits for both in
parallel (the node-side mount retries until the file system answers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llamapod.aws_names import has_cluster_tag
from llamapod.cloud.ledger import Ledger
from llamapod.cloud.lookup import call_or_none, paginate
from llamapod.cloud.progress import Waiter, stopped_deleting
from llamapod.cloud.session import call
from llamapod.errors import ClusterStateError

FSX_POLL_S = 30.0
FSX_CREATE_TIMEOUT_S = 60 * 60
FSX_DELETE_TIMEOUT_S = 40 * 60
_BROKEN = {"FAILED", "MISCONFIGURED", "MISCONFIGURED_UNAVAILABLE"}


@dataclass(frozen=True)
class FileSystem:
    id: str
    dns_name: str
    mount_name: str
    lifecycle: str
    arn: str = ""

    @classmethod
    def from_api(cls, fs: dict[str, Any]) -> "FileSystem":
        return cls(fs["FileSystemId"], fs.get("DNSName", ""),
                   fs.get("LustreConfiguration", {}).get("MountName", ""), fs.get("Lifecycle", ""),
                   fs.get("ResourceARN", ""))


def describe(session, fs_id: str) -> dict[str, Any] | None:
    answer = call_or_none(session.client("fsx"), "describe_file_systems", FileSystemIds=[fs_id])
    found = answer["FileSystems"] if answer is not None else []
    return found[0] if found and found[0].get("Lifecycle") != "DELETED" else None


def find_file_systems(session, cluster_name: str) -> list[dict[str, Any]]:
    """File systems tagged for the cluster (describe returns their tags)."""
    return [fs for fs in paginate(session.client("fsx"), "describe_file_systems", "FileSystems")
            if has_cluster_tag(fs.get("Tags"), cluster_name) and fs.get("Lifecycle") != "DELETED"]


def ensure_file_system(session, spec, network_stack_id: str, subnet_id: str, security_group_id: str,
                       tags: list[dict[str, str]], ledger: Ledger, waiter: Waiter) -> FileSystem:
    """The cluster's file system, requested if missing (does not wait for AVAILABLE).

    The request carries a client token derived from the cluster and its network stack: two
    runs that both find nothing (another machine's ``up``, where the local lock does not
    reach) get the one file system FSx made for the first of them.
    """
    from llamapod.cloud import plan

    existing = _existing(session, spec.name, ledger)
    if existing is not None and existing.get("Lifecycle") == "DELETING":
        wait_deleted(session, existing["FileSystemId"], waiter)
        existing = None
    if existing is not None:
        fs = FileSystem.from_api(existing)
        _raise_if_broken(existing)
    else:
        request = plan.fsx_request(spec, subnet_id, security_group_id, tags,
                                   plan.fsx_client_token(spec, network_stack_id))
        fs = FileSystem.from_api(call(session.client("fsx"), "create_file_system", **request)["FileSystem"])
        waiter.reporter.line(f"FSx {fs.id}: requested ({fs.dns_name}, mount name {fs.mount_name})")
    ledger.record("fsx", id=fs.id, dns_name=fs.dns_name, mount_name=fs.mount_name, arn=fs.arn or None)
    return fs


def _existing(session, cluster_name: str, ledger: Ledger) -> dict[str, Any] | None:
    recorded = ledger.get("fsx")
    if recorded:
        fs = describe(session, recorded["id"])
        if fs is not None:
            return fs
        ledger.forget("fsx")
    tagged = find_file_systems(session, cluster_name)
    return tagged[0] if tagged else None


def _raise_if_broken(fs: dict[str, Any]) -> None:
    if fs.get("Lifecycle") in _BROKEN:
        detail = fs.get("FailureDetails", {}).get("Message") or fs["Lifecycle"]
        raise ClusterStateError(f"FSx file system {fs['FileSystemId']} is {fs['Lifecycle']}: {detail}",
                                "run `llamapod down` to remove it, fix the cause, then `llamapod up` again")


def wait_available(session, fs_id: str, waiter: Waiter) -> FileSystem:
    def probe() -> dict[str, Any]:
        fs = describe(session, fs_id)
        if fs is None:
            raise ClusterStateError(f"FSx file system {fs_id} disappeared while it was being created",
                                    "run `llamapod up` again to recreate it")
        return fs

    fs = waiter.until(f"FSx {fs_id}", probe, lambda f: f.get("Lifecycle") == "AVAILABLE",
                      timeout=FSX_CREATE_TIMEOUT_S, interval=FSX_POLL_S,
                      describe=lambda f: f.get("Lifecycle", "UNKNOWN"), failed=_raise_if_broken)
    return FileSystem.from_api(fs)


def delete_file_system(session, fs_id: str, waiter: Waiter) -> None:
    """Delete without a final backup (it would outlive ``down`` and keep billing) and wait."""
    fs = describe(session, fs_id)
    if fs is None:
        return
    if fs.get("Lifecycle") != "DELETING":
        kwargs: dict[str, Any] = {"FileSystemId": fs_id}
        if fs.get("LustreConfiguration", {}).get("DeploymentType", "").startswith("PERSISTENT"):
            kwargs["LustreConfiguration"] = {"SkipFinalBackup": True}
        call_or_none(session.client("fsx"), "delete_file_system", **kwargs)
    wait_deleted(session, fs_id, waiter)


def wait_deleted(session, fs_id: str, waiter: Waiter) -> None:
    """Wait until the file system is gone. One seen ``DELETING`` that then shows another lifecycle
    (FAILED, AVAILABLE, ... with ``FailureDetails``) will not go away by waiting: an error now,
    not a 40-minute timeout (``FileSystemLifecycle`` in botocore's FSx model)."""
    failed = stopped_deleting(f"FSx file system {fs_id}", lambda f: f.get("Lifecycle"), "DELETING",
                              lambda f: f.get("FailureDetails", {}).get("Message"), "file system")
    waiter.until(f"FSx {fs_id} deletion", lambda: describe(session, fs_id), lambda f: f is None,
                 timeout=FSX_DELETE_TIMEOUT_S, interval=FSX_POLL_S,
                 describe=lambda f: "deleted" if f is None else f.get("Lifecycle", "UNKNOWN"), failed=failed)

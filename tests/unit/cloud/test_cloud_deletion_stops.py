"""A deletion that AWS gives up on ends the wait at once, with AWS's reason.

HyperPod answers a cluster whose deletion failed with a status other than ``Deleting`` (``Failed``
and a ``FailureMessage``); FSx a file system whose deletion failed with a lifecycle other than
``DELETING`` and ``FailureDetails`` (``ClusterStatus`` and ``FileSystemLifecycle`` in botocore's
models). Waiting on would only reach the 40-45 minute deadline. Played against scripted answers
at the client level (moto never fails a deletion).
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from llamapod.cloud import hyperpod, storage
from llamapod.cloud.progress import Reporter, VirtualClock, Waiter
from llamapod.errors import ClusterStateError


class _Scripted:
    """A client whose ``op`` answers the next scripted reply on each call (the last one repeats)."""

    def __init__(self, service: str, op: str, replies: list[dict]) -> None:
        self.meta = SimpleNamespace(service_model=SimpleNamespace(service_name=service))
        self.replies = list(replies)
        self.calls = 0
        setattr(self, op, self._answer)

    def _answer(self, **_):
        self.calls += 1
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


def _waiter() -> Waiter:
    clock = VirtualClock()
    return Waiter(clock, threading.Event(), Reporter(clock, emit=lambda line: None))


def _session(client) -> SimpleNamespace:
    return SimpleNamespace(client=lambda service, *a, **k: client, region="us-east-1")


def test_a_cluster_whose_deletion_failed_is_reported_at_once():
    arn = "arn:aws:sagemaker:us-east-1:123456789012:cluster/abcdefghijkl"
    client = _Scripted("sagemaker", "describe_cluster", [
        {"ClusterName": "c", "ClusterArn": arn, "ClusterStatus": "Failed"},  # not yet seen deleting
        {"ClusterName": "c", "ClusterArn": arn, "ClusterStatus": "Deleting"},
        {"ClusterName": "c", "ClusterArn": arn, "ClusterStatus": "Failed",
         "FailureMessage": "network interfaces could not be released"}])
    with pytest.raises(ClusterStateError, match="deleting cluster c stopped: it is Failed: network interfaces"):
        hyperpod.wait_deleted(_session(client), "c", _waiter())
    assert client.calls == 3


def test_a_file_system_whose_deletion_failed_is_reported_at_once():
    fs = {"FileSystemId": "fs-0123456789abcdef0", "Lifecycle": "DELETING"}
    client = _Scripted("fsx", "describe_file_systems", [
        {"FileSystems": [fs]},
        {"FileSystems": [{**fs, "Lifecycle": "FAILED", "FailureDetails": {"Message": "in use"}}]}])
    with pytest.raises(ClusterStateError, match="deleting FSx file system fs-0123456789abcdef0 stopped: it is "
                                                "FAILED: in use"):
        storage.wait_deleted(_session(client), fs["FileSystemId"], _waiter())
    assert client.calls == 2

"""``llamapod up``: everything a HyperPod Slurm cluster needs, in dependency order.

    network stack ─┐
    execution role ├─► FSx requested ─► provisioning_parameters.json ─► create_cluster ─┬─► FSx AVAILABLE
    bucket+scripts ┘   (DNS + mount name known at once)                                 └─► cluster InService

The first three are independent and run at once; the FSx request returns its DNS and
mount name immediately, so the cluster is created without waiting for the file system
(the node-side mount retries until it is AVAILABLE). Critical path: network + the
longer of FSx and cluster, not their sum.

Every step first looks for what already exists (state file, then name or tag) and
creates only what is missing, so an interrupted ``up`` is simply run again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from llamapod.cloud import bucket as buckets
from llamapod.cloud import hyperpod, iam, network, progress, storage
from llamapod.cloud.ledger import Ledger
from llamapod.cloud.lock import cluster_lock
from llamapod.cloud.progress import Clock, Reporter, Waiter

PROVISIONING_KEY = "provisioning_parameters.json"


@dataclass(frozen=True)
class UpResult:
    name: str
    region: str
    cluster_arn: str
    cluster_status: str
    file_system: storage.FileSystem
    bucket: str
    role_arn: str
    network: network.NetworkOutputs
    elapsed_s: float


def lifecycle_prefix() -> str:
    from llamapod.config.cluster import LIFECYCLE_PREFIX

    return LIFECYCLE_PREFIX


def bring_up(session, spec, *, az_id: str | None = None, clock: Clock | None = None,
             reporter: Reporter | None = None, wait: bool = True) -> UpResult:
    """Create (or finish creating) the cluster described by ``spec``; see the module docstring.

    One run per cluster at a time (``cloud/lock.py``): a second one stops with a message.
    """
    with cluster_lock(spec.name, "up"):
        return _bring_up(session, spec, az_id=az_id, clock=clock, reporter=reporter, wait=wait)


def _bring_up(session, spec, *, az_id: str | None, clock: Clock | None, reporter: Reporter | None,
              wait: bool) -> UpResult:
    from llamapod.cloud import plan

    clock = clock or progress.default_clock()
    reporter = reporter or Reporter(clock)
    waiter = Waiter(clock, threading.Event(), reporter)
    ledger = Ledger.open(spec.name, session.region)
    tags = plan.resource_tags(spec)
    bucket_name = plan.lifecycle_bucket_name(spec, session.account_id)
    if az_id is None:
        recorded = ledger.get("network") or {}
        az_id = recorded.get("az_id") or network.resolve_az_id(session, spec.availability_zone,
                                                               spec.instance_types)

    def make_bucket() -> None:
        buckets.ensure_bucket(session, bucket_name, tags, ledger)
        from llamapod.lifecycle import upload_files

        sent = buckets.upload_files(session, bucket_name, upload_files(), lifecycle_prefix())
        reporter.line(f"bucket {bucket_name}: ready ({sent} lifecycle file(s) uploaded)")

    def make_role() -> str:
        arn = iam.ensure_role(session, spec, bucket_name, tags, ledger)
        reporter.line(f"execution role {iam.role_name(spec)}: ready")
        return arn

    first = waiter.parallel({
        "network": lambda: network.ensure_network(session, spec, az_id, tags, ledger, waiter),
        "role": make_role,
        "bucket": make_bucket,
    })
    net: network.NetworkOutputs = first["network"]  # type: ignore[assignment]
    role_arn: str = first["role"]  # type: ignore[assignment]

    fs = storage.ensure_file_system(session, spec, net.stack_id, net.subnet_id, net.security_group_id, tags, ledger,
                                    waiter)
    params = plan.provisioning_file(spec, fs.dns_name, fs.mount_name)
    buckets.put_bytes(session, bucket_name, f"{lifecycle_prefix()}/{PROVISIONING_KEY}", params.encode(),
                      "application/json")
    request = plan.cluster_request(spec, bucket=bucket_name, role_arn=role_arn, subnet_id=net.subnet_id,
                                   sg_id=net.security_group_id, tags=tags)
    cluster_arn = hyperpod.ensure_cluster(session, request, ledger, waiter)

    status = "Creating"
    if wait:
        done = waiter.parallel({
            "fsx": lambda: storage.wait_available(session, fs.id, waiter),
            "cluster": lambda: hyperpod.wait_in_service(session, spec.name, waiter),
        })
        fs = done["fsx"]  # type: ignore[assignment]
        status = done["cluster"]["ClusterStatus"]  # type: ignore[index]
        ledger.record("cluster", status=status)
    return UpResult(spec.name, session.region, cluster_arn, status, fs, bucket_name, role_arn, net,
                    reporter.elapsed())


def summary_lines(result: UpResult) -> list[str]:
    """What to run next, shown when ``up`` finishes."""
    return [
        f"cluster {result.name} is {result.cluster_status} in {result.region} "
        f"(FSx {result.file_system.id} at /fsx)",
        f"  llamapod ssh --cluster {result.name}      # a shell on the controller node",
        f"  llamapod train --cluster {result.name}    # train on the cluster",
        f"  llamapod status {result.name}             # nodes, FSx and cost so far",
        f"  llamapod down {result.name}               # delete everything, back to zero cost",
    ]

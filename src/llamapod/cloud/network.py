"""The cluster's network: one CloudFormation stack from the template llamapod ships.

The stack's name is derived from the cluster's name (never typed by hand, the seed's
trap), so a re-run finds it even without the state file. Its outputs give the private
subnet and security group the file system and the cluster are placed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llamapod.aws_names import has_cluster_tag
from llamapod.cloud.ledger import Ledger
from llamapod.cloud.lookup import call_or_none, paginate
from llamapod.cloud.progress import Waiter
from llamapod.cloud.session import call, error_code
from llamapod.errors import CloudError, ClusterStateError

STACK_POLL_S = 10.0
STACK_CREATE_TIMEOUT_S = 40 * 60
STACK_DELETE_TIMEOUT_S = 40 * 60
# ENIs that HyperPod and FSx leave in the subnet are released minutes after those
# resources are gone; until then deleting the VPC fails with a dependency violation.
ENI_DRAIN_RETRIES = 6

_DONE = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE"}
_IN_PROGRESS_SUFFIX = "_IN_PROGRESS"


def stack_name(spec) -> str:
    from llamapod.cloud import plan

    return plan.network_stack_name(spec)


@dataclass(frozen=True)
class NetworkOutputs:
    stack_id: str
    vpc_id: str
    subnet_id: str
    security_group_id: str


def describe_stack(session, name_or_id: str) -> dict[str, Any] | None:
    """The stack, or None if CloudFormation does not know it (or it is fully deleted)."""
    answer = call_or_none(session.client("cloudformation"), "describe_stacks", StackName=name_or_id)
    stacks = answer["Stacks"] if answer is not None else []
    if not stacks or stacks[0]["StackStatus"] == "DELETE_COMPLETE":
        return None
    return stacks[0]


def stack_outputs(stack: dict[str, Any]) -> NetworkOutputs:
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}

    def pick(*keys: str) -> str:
        for key in keys:
            if outputs.get(key):
                return outputs[key]
        raise ClusterStateError(f"the network stack {stack['StackName']} has no output {keys[0]}",
                                f"it was not made from llamapod's template: delete it (`llamapod down`) "
                                f"and run `llamapod up` again")

    return NetworkOutputs(stack["StackId"], pick("VpcId", "VPC"), pick("PrivateSubnetId", "PrivateSubnet"),
                          pick("SecurityGroupId", "SecurityGroup"))


def ensure_network(session, spec, az_id: str, tags: list[dict[str, str]], ledger: Ledger,
                   waiter: Waiter) -> NetworkOutputs:
    """The network stack, created if missing, waited for until complete."""
    from llamapod.cloud import plan

    name = stack_name(spec)
    stack = describe_stack(session, name)
    if stack is not None and stack["StackStatus"].startswith("DELETE"):
        wait_stack_deleted(session, stack["StackId"], waiter)
        stack = None
    if stack is None:
        stack_id = _create_stack(session, name, plan.network_template(), plan.network_parameters(spec, az_id), tags)
        ledger.record("network", stack_name=name, stack_id=stack_id, az_id=az_id)
        waiter.reporter.line(f"network stack {name}: creating")
    else:
        ledger.record("network", stack_name=name, stack_id=stack["StackId"], az_id=az_id)
    stack = _wait_stack_created(session, name, waiter)
    outputs = stack_outputs(stack)
    ledger.record("network", vpc_id=outputs.vpc_id, subnet_id=outputs.subnet_id,
                  security_group_id=outputs.security_group_id)
    return outputs


def _create_stack(session, name: str, template: str, parameters: list, tags: list[dict[str, str]]) -> str:
    client = session.client("cloudformation")
    try:
        # Stack tags propagate to every resource in it: the VPC, subnets and security
        # group carry llamapod:cluster too, which is how `down` proves they are gone.
        return call(client, "create_stack", StackName=name, TemplateBody=template, Parameters=parameters,
                    Tags=tags, OnFailure="ROLLBACK")["StackId"]
    except CloudError as exc:
        if exc.code == "AlreadyExistsException":
            stack = describe_stack(session, name)
            if stack is not None:
                return stack["StackId"]
        raise


def _wait_stack_created(session, name: str, waiter: Waiter) -> dict[str, Any]:
    seen_events: set[str] = set()

    def probe() -> dict[str, Any]:
        stack = describe_stack(session, name)
        if stack is None:
            raise ClusterStateError(f"the network stack {name} disappeared while it was being created",
                                    "run `llamapod up` again to recreate it")
        _report_new_events(session, stack, seen_events, waiter)
        return stack

    def failed(stack: dict[str, Any]) -> None:
        status = stack["StackStatus"]
        if status in _DONE or status.endswith(_IN_PROGRESS_SUFFIX):
            return
        reason = _failure_reason(session, stack)
        raise CloudError("create_stack", status, f"the network stack {name} failed: {reason}",
                         f"run `llamapod down` to remove it, fix the cause, then `llamapod up` again")

    return waiter.until(f"network stack {name}", probe, lambda s: s["StackStatus"] in _DONE,
                        timeout=STACK_CREATE_TIMEOUT_S, interval=STACK_POLL_S,
                        describe=lambda s: s["StackStatus"], failed=failed)


def _stack_events(session, stack_id: str) -> list[dict[str, Any]]:
    # One page on purpose: it holds the newest events, which is all a progress line or the
    # cause of a failure needs, and a poll should not re-read the stack's whole history.
    return call(session.client("cloudformation"), "describe_stack_events", StackName=stack_id).get("StackEvents", [])


def _report_new_events(session, stack: dict[str, Any], seen: set[str], waiter: Waiter) -> None:
    """One progress line per resource event not shown before (oldest first)."""
    try:
        events = _stack_events(session, stack["StackId"])
    except CloudError:
        return  # events are only for show: never fail a wait because they could not be read
    for event in reversed(events):
        if event["EventId"] in seen:
            continue
        seen.add(event["EventId"])
        if event["LogicalResourceId"] == stack["StackName"]:
            continue
        reason = f" ({event['ResourceStatusReason']})" if event.get("ResourceStatusReason") else ""
        waiter.reporter.line(f"  {event['LogicalResourceId']} {event['ResourceStatus']}{reason}")


def _failure_reason(session, stack: dict[str, Any]) -> str:
    """The first resource failure CloudFormation recorded: the cause, not the rollback."""
    try:
        events = _stack_events(session, stack["StackId"])
    except CloudError:
        events = []
    for event in reversed(events):
        if event["ResourceStatus"].endswith("FAILED") and event.get("ResourceStatusReason"):
            return f"{event['LogicalResourceId']}: {event['ResourceStatusReason']}"
    return stack.get("StackStatusReason") or stack["StackStatus"]


def delete_network(session, stack_ref: str, waiter: Waiter) -> None:
    """Delete the stack and wait; dependency failures are retried while ENIs drain."""
    for attempt in range(ENI_DRAIN_RETRIES + 1):
        stack = describe_stack(session, stack_ref)
        if stack is None:
            return
        if not stack["StackStatus"].startswith("DELETE_IN_PROGRESS"):
            try:
                call(session.client("cloudformation"), "delete_stack", StackName=stack["StackId"])
            except CloudError as exc:
                if exc.code != "DependencyViolation" or attempt == ENI_DRAIN_RETRIES:
                    raise
                waiter.reporter.line(f"network stack: {exc.aws_message}; waiting for network interfaces to drain")
                waiter.clock.sleep(60.0, waiter.cancel)
                continue
        final = wait_stack_deleted(session, stack["StackId"], waiter)
        if final is None:
            return
        reason = _failure_reason(session, final)
        if attempt == ENI_DRAIN_RETRIES or "depend" not in reason.lower():
            raise CloudError("delete_stack", final["StackStatus"], f"the network stack could not be deleted: {reason}",
                             "delete what the message names in the console, then run `llamapod down` again")
        waiter.reporter.line(f"network stack: {reason}; retrying once network interfaces drain")
        waiter.clock.sleep(60.0, waiter.cancel)


def wait_stack_deleted(session, stack_id: str, waiter: Waiter) -> dict[str, Any] | None:
    """Wait until the stack is gone (None) or its deletion failed (the stack)."""
    stack = waiter.until(
        "network stack deletion", lambda: describe_stack(session, stack_id),
        lambda s: s is None or s["StackStatus"] == "DELETE_FAILED",
        timeout=STACK_DELETE_TIMEOUT_S, interval=STACK_POLL_S,
        describe=lambda s: "deleted" if s is None else s["StackStatus"])
    return stack


def find_stacks(session, spec) -> list[dict[str, Any]]:
    """Live stacks tagged for the cluster, plus the one named after it (tags may be missing)."""
    cluster_name, own_name = spec.name, stack_name(spec)
    found: dict[str, dict[str, Any]] = {}
    for stack in paginate(session.client("cloudformation"), "describe_stacks", "Stacks"):
        if stack["StackStatus"] == "DELETE_COMPLETE":
            continue
        if has_cluster_tag(stack.get("Tags"), cluster_name) or stack["StackName"] == own_name:
            found[stack["StackId"]] = stack
    return list(found.values())


def resolve_az_id(session, availability_zone: str | None, instance_types: list[str]) -> str:
    """An AZ ID for the private subnet: the one given (name or ID), else one offering every type."""
    ec2 = session.client("ec2")
    zones = call(ec2, "describe_availability_zones",
                 Filters=[{"Name": "zone-type", "Values": ["availability-zone"]}])["AvailabilityZones"]
    by_name = {z["ZoneName"]: z["ZoneId"] for z in zones}
    ids = sorted(by_name.values())
    if availability_zone:
        if availability_zone in ids:
            return availability_zone
        if availability_zone in by_name:
            return by_name[availability_zone]
        raise ClusterStateError(f"availability zone {availability_zone} is not in region {session.region} "
                                f"(zones: {', '.join(sorted(by_name))})",
                                "set cluster.availability_zone to one of them, or remove it to let llamapod pick")
    offered = set(ids)
    for instance_type in instance_types:
        zones_for_type = _zones_offering(ec2, instance_type)
        if zones_for_type is not None:  # None: the API cannot tell, so it rules nothing out
            offered &= zones_for_type
    for zone_id in ids:
        if zone_id in offered:
            return zone_id
    raise ClusterStateError(f"no availability zone in {session.region} offers all of {', '.join(instance_types)}",
                            "choose instance types offered together, or another region "
                            "(`llamapod doctor` shows which zones offer which)")


def _zones_offering(ec2, instance_type: str) -> set[str] | None:
    """AZ IDs offering the EC2 type behind an ``ml.`` type; None when the API cannot tell."""
    ec2_type = instance_type.removeprefix("ml.")
    try:
        page = call(ec2, "describe_instance_type_offerings", LocationType="availability-zone-id",
                    Filters=[{"Name": "instance-type", "Values": [ec2_type]}])
    except CloudError as exc:
        if error_code(exc.__cause__) in ("InvalidParameterValue", "UnsupportedOperation"):
            return None
        raise
    zones = {o["Location"] for o in page.get("InstanceTypeOfferings", [])}
    return zones or None

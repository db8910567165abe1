"""``llamapod doctor``: what would make ``up`` fail, found before anything is created.

Each check ends ``ok``, ``fail`` (with exactly what to request or change) or ``unknown``
(the endpoint cannot answer: an API it does not offer, as with an emulator, or a look-up
the caller may not make). Unknown checks warn and do not block ``up`` unless ``--strict``.

Checks: credentials and account (STS), region (EC2 availability zones), an availability
zone that offers every instance type (EC2 instance-type offerings by AZ ID), SageMaker
service quotas looked up by quota *name* against the requested counts, and the operator
permissions llamapod needs (IAM policy simulation of the caller).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from llamapod.aws_names import CLUSTER_TAG, partition_of
from llamapod.cloud import operator_policy as operator, policies
from llamapod.cloud.operator_policy import operator_policy
from llamapod.cloud.session import lookup_retries
from llamapod.config.cluster import ClusterSpec
from llamapod.errors import CloudError

Status = Literal["ok", "fail", "unknown"]

PER_CLUSTER_QUOTA = "Maximum number instances allowed per SageMaker HyperPod cluster"
TOTAL_QUOTA = "Total number of instances allowed across SageMaker HyperPod clusters"
# Error codes that mean "this endpoint does not offer the API", not "the answer is no".
_UNANSWERABLE_CODES = {"NotImplemented", "NotImplementedException", "UnknownOperationException",
                       "InvalidAction", "UnsupportedOperation", "404", "500", "501"}
_DENIED_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def quota_name(instance_type: str) -> str:
    return f"{instance_type} for cluster usage"


def ec2_instance_type(instance_type: str) -> str:
    """HyperPod's ml.g5.48xlarge is EC2's g5.48xlarge."""
    return instance_type.removeprefix("ml.")


# ---- clients for look-ups -----------------------------------------------------------


def _lookup_client(session: Any, service: str, attempts: int = 3):
    """A client that gives up quickly: a look-up that cannot be answered is 'unknown', not a wait."""
    return session.client(service, retries=lookup_retries(attempts))


class _Unanswered(Exception):
    """A look-up got no usable answer; ``code`` is AWS's error code when there was one."""

    def __init__(self, reason: str, fix: str | None = None, code: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.fix = fix
        self.code = code


def _unanswered(exc: Exception, op: str, action: str) -> _Unanswered:
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return _Unanswered("no AWS credentials were found", code="NoCredentials")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code == "NoSuchEntity":
            # An assumed role's session ARN does not show the role's path, so the guess can miss.
            return _Unanswered(f"{op}: IAM does not know the principal ({code}); is it a role with a path?",
                               code=code)
        if code in _DENIED_CODES:
            return _Unanswered(f"{op} was denied ({code})", f"allow {action} (see `llamapod operator-policy`)", code)
        if code in _UNANSWERABLE_CODES or status >= 500 or status == 404:
            return _Unanswered(f"the endpoint does not answer {op} ({code})", code=code)
        return _Unanswered(f"{op} failed: {code}: {exc.response.get('Error', {}).get('Message', '')}", code=code)
    # Unparseable replies (an emulator's HTML error page), timeouts, unreachable endpoints.
    return _Unanswered(f"the endpoint does not answer {op} ({type(exc).__name__})")


def _failures() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError
    from botocore.parsers import ResponseParserError

    return ClientError, BotoCoreError, ResponseParserError


def _lookup(client, op: str, action: str, **kwargs) -> dict:
    """``client.<op>(**kwargs)``; any failure becomes _Unanswered."""
    try:
        return getattr(client, op)(**kwargs)
    except _failures() as exc:
        raise _unanswered(exc, op, action) from None


def _paginate(client, op: str, key: str, action: str, **kwargs) -> list[dict]:
    items: list[dict] = []
    try:
        for page in client.get_paginator(op).paginate(**kwargs):
            items.extend(page.get(key, []))
    except _failures() as exc:
        raise _unanswered(exc, op, action) from None
    return items


# ---- individual checks ----------------------------------------------------------


_CREDENTIAL_CODES = {"InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException", "SignatureDoesNotMatch",
                     "UnrecognizedClientException", "InvalidAccessKeyId", "AccessDenied"}


def check_credentials(session: Any, attempts: int = 3) -> Check:
    try:
        identity = _lookup(_lookup_client(session, "sts", attempts), "get_caller_identity", "sts:GetCallerIdentity")
    except _Unanswered as exc:
        if exc.code == "NoCredentials":
            return Check("credentials", "fail", "no AWS credentials were found",
                         "run `aws configure` or `aws sso login`, or set AWS_PROFILE / pass --profile")
        if exc.code in _CREDENTIAL_CODES:
            return Check("credentials", "fail", f"AWS rejected the credentials ({exc.code})",
                         "refresh or fix your credentials (e.g. `aws sso login`), or pick another --profile")
        return Check("credentials", "unknown", exc.reason, exc.fix)
    return Check("credentials", "ok", f"account {identity['Account']} as {identity['Arn']}",
                 data={"account": identity["Account"], "arn": identity["Arn"]})


_REGION_CODES = {"OptInRequired", "AuthFailure", "InvalidClientTokenId"}


def check_region(session: Any, spec: ClusterSpec) -> tuple[Check, list[dict]]:
    try:
        zones = _lookup(_lookup_client(session, "ec2"), "describe_availability_zones",
                        "ec2:DescribeAvailabilityZones")["AvailabilityZones"]
    except _Unanswered as exc:
        if exc.code in _REGION_CODES:
            return Check("region", "fail", f"{spec.region} is not usable from this account ({exc.code})",
                         f"enable {spec.region} under Account > AWS Regions, or set cluster.region to another"), []
        return Check("region", "unknown", f"{spec.region}: {exc.reason}", exc.fix), []
    zones = [z for z in zones if z.get("State", "available") == "available" and
             z.get("ZoneType", "availability-zone") == "availability-zone"]
    names = ", ".join(f"{z['ZoneName']} ({z['ZoneId']})" for z in zones)
    return Check("region", "ok", f"{spec.region}: {len(zones)} availability zones: {names}"), zones


def _offering_zone_ids(session: Any, instance_types: list[str]) -> dict[str, set[str]]:
    """AZ IDs offering each of ``instance_types`` (HyperPod names), in one paginated look-up."""
    by_ec2_name = {ec2_instance_type(t): t for t in instance_types}
    offers = _paginate(_lookup_client(session, "ec2"), "describe_instance_type_offerings", "InstanceTypeOfferings",
                       "ec2:DescribeInstanceTypeOfferings", LocationType="availability-zone-id",
                       Filters=[{"Name": "instance-type", "Values": sorted(by_ec2_name)}])
    zones: dict[str, set[str]] = {t: set() for t in instance_types}
    for offer in offers:
        if offer["InstanceType"] in by_ec2_name:
            zones[by_ec2_name[offer["InstanceType"]]].add(offer["Location"])
    return zones


def check_availability_zone(session: Any, spec: ClusterSpec, zones: list[dict]) -> Check:
    """The AZ of the cluster: the configured one (name or ID, resolved) or one offering every type."""
    if not zones:
        return Check("availability zone", "unknown", "the region's zones could not be listed")
    by_name = {z["ZoneName"]: z for z in zones}
    by_id = {z["ZoneId"]: z for z in zones}
    wanted = spec.availability_zone
    chosen = None
    if wanted is not None:
        chosen = by_id.get(wanted) if spec.availability_zone_kind == "id" else by_name.get(wanted)
        if chosen is None:
            known = ", ".join(f"{z['ZoneName']} ({z['ZoneId']})" for z in zones)
            return Check("availability zone", "fail", f"{wanted} is not an available zone of {spec.region}",
                         f"set cluster.availability_zone to one of: {known}")
    types = sorted({g.instance_type for g in spec.instance_groups})
    try:
        offered = _offering_zone_ids(session, types)
    except _Unanswered as exc:
        if chosen is not None:
            return Check("availability zone", "unknown",
                         f"{chosen['ZoneName']} is {chosen['ZoneId']}; whether it offers {', '.join(types)} is "
                         f"unknown: {exc.reason}", exc.fix, data=_az_data(chosen))
        return Check("availability zone", "unknown", f"no zone could be chosen: {exc.reason}", exc.fix)
    everywhere = set.intersection(*offered.values()) if offered else set()
    if chosen is not None:
        missing = [t for t in types if chosen["ZoneId"] not in offered[t]]
        if missing:
            options = [z for z in zones if z["ZoneId"] in everywhere]
            fix = (f"set cluster.availability_zone to one of: "
                   f"{', '.join(z['ZoneId'] + ' (' + z['ZoneName'] + ')' for z in options)}" if options else
                   "no zone of this region offers every type: pick other instance types or another region")
            return Check("availability zone", "fail",
                         f"{chosen['ZoneId']} ({chosen['ZoneName']}) does not offer {', '.join(missing)}", fix)
        return Check("availability zone", "ok",
                     f"{chosen['ZoneId']} ({chosen['ZoneName']}) offers {', '.join(types)}", data=_az_data(chosen))
    options = [z for z in zones if z["ZoneId"] in everywhere]
    if not options:
        return Check("availability zone", "fail", f"no zone of {spec.region} offers all of {', '.join(types)}",
                     "pick instance types offered together, or another cluster.region")
    chosen = options[0]
    return Check("availability zone", "ok",
                 f"picked {chosen['ZoneId']} ({chosen['ZoneName']}), which offers {', '.join(types)}; "
                 f"set cluster.availability_zone = \"{chosen['ZoneId']}\" to keep it", data=_az_data(chosen))


def _az_data(zone: dict) -> dict[str, str]:
    return {"az_id": zone["ZoneId"], "az_name": zone["ZoneName"]}


def _quota_url(region: str, code: str | None) -> str:
    base = f"https://{region}.console.aws.amazon.com/servicequotas/home/services/sagemaker/quotas"
    return f"{base}/{code}" if code else base


def check_quotas(session: Any, spec: ClusterSpec) -> list[Check]:
    """SageMaker quotas by name (codes differ between regions and change; names are what docs cite).

    "If the applied quota value is not available for a quota, the quota is not retrieved"
    (ListServiceQuotas, Service Quotas API reference): a quota still at its AWS default is often
    missing there. So a missing name is looked up among the defaults
    (ListAWSDefaultServiceQuotas); absent from both, it is unknown, not a failure.
    """
    client = _lookup_client(session, "service-quotas", attempts=1)  # one attempt: see check_permissions
    try:
        listed = _paginate(client, "list_service_quotas", "Quotas", "servicequotas:ListServiceQuotas",
                           ServiceCode="sagemaker")
    except _Unanswered as exc:
        return [Check("quotas", "unknown", f"SageMaker quotas could not be read: {exc.reason}", exc.fix)]
    applied = {q["QuotaName"]: q for q in listed}
    needed = [(quota_name(t), n) for t, n in sorted(spec.instance_counts().items())]
    needed += [(PER_CLUSTER_QUOTA, spec.total_instances), (TOTAL_QUOTA, spec.total_instances)]
    defaults: dict[str, dict] | _Unanswered = {}
    if any(name not in applied for name, _ in needed):
        try:
            defaults = {q["QuotaName"]: q for q in _paginate(
                client, "list_aws_default_service_quotas", "Quotas", "servicequotas:ListAWSDefaultServiceQuotas",
                ServiceCode="sagemaker")}
        except _Unanswered as exc:
            defaults = exc
    return [_quota_check(spec.region, applied, defaults, name, count) for name, count in needed]


def _quota_check(region: str, applied: dict[str, dict], defaults: "dict[str, dict] | _Unanswered", name: str,
                 needed: int) -> Check:
    label = f"quota: {name}"
    quota, source = applied.get(name), ""
    if quota is None:
        if isinstance(defaults, _Unanswered):
            return Check(label, "unknown", f"'{name}' is not among the applied quotas and the AWS defaults "
                                           f"could not be read: {defaults.reason}", defaults.fix)
        quota, source = defaults.get(name), " (the AWS default)"
    if quota is None:
        return Check(label, "unknown",
                     f"{region} lists no SageMaker quota named '{name}', applied or default",
                     f"check that the instance type is offered for HyperPod clusters in {region}: "
                     f"{_quota_url(region, None)}")
    value = int(quota.get("Value", 0))
    code = quota.get("QuotaCode")
    if value >= needed:
        return Check(label, "ok", f"{value} allowed{source}, {needed} needed", data={"value": value, "code": code})
    return Check(label, "fail", f"{value} allowed in {region}{source}, {needed} needed",
                 f"request an increase of '{name}' to at least {needed} in Service Quotas "
                 f"(Amazon SageMaker, {region}): {_quota_url(region, code)}", data={"value": value, "code": code})


def _principal_arn(caller_arn: str) -> str | None:
    """The IAM entity whose policies apply to a caller (None for the root user)."""
    parts = caller_arn.split(":", 5)
    if len(parts) < 6:
        return caller_arn
    partition, account, resource = parts[1], parts[4], parts[5]
    if resource == "root":
        return None
    if parts[2] == "sts" and resource.startswith("assumed-role/"):
        return f"arn:{partition}:iam::{account}:role/{resource.split('/')[1]}"
    return caller_arn


def _example_resources(spec: ClusterSpec, account: str) -> dict[str, tuple[list[str], list[dict]]]:
    """Per operator-policy statement: resources and context like those ``up`` will use."""
    from llamapod.cloud import plan

    p, region = partition_of(spec.region), spec.region
    role = plan.execution_role_arn(spec, account)
    bucket = plan.lifecycle_bucket_name(spec, account)
    cluster = f"arn:{p}:sagemaker:{region}:{account}:cluster/abcdefgh1234"

    def ctx(key: str, value: str) -> list[dict]:
        return [{"ContextKeyName": key, "ContextKeyValues": [value], "ContextKeyType": "string"}]

    ec2 = f"arn:{p}:ec2:{region}:{account}"
    boundary = policies.boundary_arn(account, p)
    examples = {
        "NetworkStack": ([f"arn:{p}:cloudformation:{region}:{account}:stack/{plan.network_stack_name(spec)}/"
                          "00000000-0000-0000-0000-000000000000"], []),
        "TagOnCreate": ([f"{ec2}:vpc/vpc-0123456789abcdef0"], ctx("ec2:CreateAction", "CreateVpc")),
        "NetworkResources": ([f"{ec2}:vpc/vpc-0123456789abcdef0"], ctx(f"aws:ResourceTag/{CLUSTER_TAG}", spec.name)),
        "GroupRules": ([f"{ec2}:security-group-rule/sgr-0123456789abcdef0"], []),
        "FileSystem": ([f"arn:{p}:fsx:{region}:{account}:file-system/fs-0123456789abcdef0"], []),
        "ServiceLinkedRoles": ([f"arn:{p}:iam::{account}:role/aws-service-role/{policies.HYPERPOD_SERVICE_NAME}/"
                                f"{policies.HYPERPOD_SERVICE_LINKED_ROLE}"],
                               ctx("iam:AWSServiceName", policies.HYPERPOD_SERVICE_NAME)),
        "ExecutionRole": ([role], []),
        "RolesInBoundary": ([role], ctx("iam:PermissionsBoundary", boundary)
                            + ctx("iam:PolicyARN", policies.instance_policy_arn(p))),
        "LeaveProfiles": ([f"arn:{p}:iam::{account}:instance-profile/none"], []),
        "Boundary": ([boundary], []),
        "PassRoleToSageMaker": ([role], ctx("iam:PassedToService", "sagemaker.amazonaws.com")),
        "LifecycleBucket": ([f"arn:{p}:s3:::{bucket}"], []),
        "LifecycleObjects": ([f"arn:{p}:s3:::{bucket}/src/on_create.sh"], []),
        "HyperPodCluster": ([cluster], []),
        "NodeSessions": ([cluster], []),
        "OwnSessions": ([f"arn:{p}:ssm:{region}:{account}:session/llamapod-0123456789abcdef0"], []),
    }
    # Each create statement names several resource types: one example per action, of its own type.
    for group in operator.TAGGED_CREATES.values():
        for action, kind in group.items():
            examples[action] = ([f"{ec2}:{kind}/{kind}-0123456789abcdef0"],
                                ctx(f"aws:RequestTag/{CLUSTER_TAG}", spec.name))
    return examples


def _probes(statement: dict, examples: dict) -> list[tuple[list[str], list[str], list[dict]]]:
    """(actions, resources, context) to simulate for one Allow statement of the operator policy."""
    actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
    if all(action in examples for action in actions):
        return [([action], *examples[action]) for action in actions]
    return [(actions, *examples.get(statement["Sid"], (["*"], [])))]


def check_permissions(session: Any, spec: ClusterSpec, caller_arn: str, account: str) -> Check:
    """Simulate the caller's policies for every action of the operator policy."""
    principal = _principal_arn(caller_arn)
    if principal is None:
        return Check("permissions", "ok", "the root user may do everything (an IAM user or role is safer)",
                     "attach the policy printed by `llamapod operator-policy` to a user or role and use that")
    policy = operator_policy(account, partition_of(spec.region))
    examples = _example_resources(spec, account)
    # One attempt: endpoints that lack these APIs (emulators) answer 5xx, and retrying that
    # only delays the "unknown"; a throttled real call is re-run with the next `doctor`.
    client = _lookup_client(session, "iam", attempts=1)
    denied: list[str] = []
    try:
        # Deny statements protect the boundary: what they name must stay denied.
        for statement in (s for s in policy["Statement"] if s["Effect"] == "Allow"):
            for actions, resources, context in _probes(statement, examples):
                kwargs: dict[str, Any] = {"PolicySourceArn": principal, "ActionNames": actions,
                                          "ResourceArns": resources}
                if context:
                    kwargs["ContextEntries"] = context
                for result in _paginate(client, "simulate_principal_policy", "EvaluationResults",
                                        "iam:SimulatePrincipalPolicy", **kwargs):
                    if result["EvalDecision"] != "allowed" and result["EvalActionName"] not in denied:
                        denied.append(result["EvalActionName"])
    except _Unanswered as exc:
        return Check("permissions", "unknown", f"permissions of {principal} could not be simulated: {exc.reason}",
                     exc.fix or "compare your policies with `llamapod operator-policy`")
    if denied:
        shown = ", ".join(denied[:8]) + (f" and {len(denied) - 8} more" if len(denied) > 8 else "")
        return Check("permissions", "fail", f"{principal} may not call {shown}",
                     "attach the policy printed by `llamapod operator-policy` to this user or role",
                     data={"denied": denied})
    return Check("permissions", "ok", f"{principal} may call every action llamapod uses")


# ---- running them ---------------------------------------------------------------


def run_checks(session: Any, spec: ClusterSpec) -> list[Check]:
    """Every preflight check for ``spec``, in order; never raises for an AWS answer."""
    credentials = check_credentials(session)
    checks = [credentials]
    region, zones = check_region(session, spec)
    checks.append(region)
    checks.append(check_availability_zone(session, spec, zones))
    if credentials.status == "fail":
        # Without credentials every further answer would only repeat that failure.
        return checks
    checks.extend(check_quotas(session, spec))
    if credentials.status == "ok":
        checks.append(check_permissions(session, spec, credentials.data["arn"], credentials.data["account"]))
    else:
        checks.append(Check("permissions", "unknown", "the caller is unknown, so its permissions are too"))
    return checks


def resolved_availability_zone(checks: list[Check]) -> tuple[str, str] | None:
    """(AZ ID, AZ name) the checks settled on, if any."""
    for check in checks:
        if check.name == "availability zone" and "az_id" in check.data:
            return check.data["az_id"], check.data["az_name"]
    return None


def enforce(checks: list[Check], strict: bool = False) -> None:
    """Raise when a check failed (or, with ``strict``, could not be answered); warn for unknowns."""
    from llamapod import report

    blocking = [c for c in checks if c.status == "fail" or (strict and c.status == "unknown")]
    if not strict:
        for check in checks:
            if check.status == "unknown":
                report.warn(f"{check.name}: not checked: {check.detail}")
    if not blocking:
        return
    names = ", ".join(c.name for c in blocking)
    error = CloudError("preflight", "ChecksFailed",
                       f"{len(blocking)} preflight check{'s' if len(blocking) > 1 else ''} did not pass: {names}",
                       blocking[0].fix if len(blocking) == 1 and blocking[0].fix else
                       "fix each problem listed, then re-run (`llamapod doctor` shows them all)")
    error.problems = [f"{c.name}: {c.detail}" + (f" -> {c.fix}" if c.fix else "") for c in blocking]
    raise error

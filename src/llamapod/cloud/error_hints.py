"""What to do about an AWS error answer: the one hint each class of answer gets.

``session.call_as`` turns every failed AWS request into a ``CloudError``; this module
chooses its hint from AWS's error code (and, where AWS leaves it to the text, the message):
the IAM action that was refused, the quota to raise and where, the region to enable, how
long to wait. Every hint ends with what re-running does: up and down continue where they stopped.
"""

from __future__ import annotations

import re

RERUN = "then re-run (llamapod continues where it stopped)"

DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedAccess",
                          "AuthorizationError", "Forbidden", "403"})
EXPIRED_CODES = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"})
INVALID_KEY_CODES = frozenset({"InvalidClientTokenId", "UnrecognizedClientException", "AuthFailure",
                               "SignatureDoesNotMatch", "InvalidAccessKeyId", "IncompleteSignature"})
OPT_IN_CODES = frozenset({"OptInRequired", "SubscriptionRequiredException"})
QUOTA_CODES = frozenset({"ResourceLimitExceeded", "ServiceQuotaExceededException", "ServiceQuotaExceeded",
                         "LimitExceededException", "LimitExceeded", "ServiceLimitExceeded", "VcpuLimitExceeded",
                         "AddressLimitExceeded", "VpcLimitExceeded", "NatGatewayLimitExceeded",
                         "InternetGatewayLimitExceeded", "SecurityGroupLimitExceeded", "TooManyBuckets"})
CAPACITY_CODES = frozenset({"InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientCapacityError",
                            "InsufficientCapacityException", "CapacityError", "InsufficientFreeAddressesInSubnet"})
INVALID_REQUEST_CODES = frozenset({"ValidationException", "ValidationError", "InvalidParameterValue",
                                   "InvalidParameterValueException", "InvalidParameterException", "InvalidParameter",
                                   "InvalidParameterCombination", "InvalidInput", "BadRequest",
                                   "BadRequestException", "IncompatibleParameterError", "MalformedPolicyDocument"})

# The Service Quotas console's service code for the quotas each API's limits count against.
_QUOTA_SERVICE = {"VpcLimitExceeded": "vpc", "NatGatewayLimitExceeded": "vpc", "InternetGatewayLimitExceeded": "vpc",
                  "SecurityGroupLimitExceeded": "vpc", "AddressLimitExceeded": "ec2", "TooManyBuckets": "s3"}


def iam_action(service: str | None, operation: str | None) -> str | None:
    """The IAM action a request of boto3 ``service`` needs, as a policy names it (``sagemaker:CreateCluster``)."""
    if not service or not operation:
        return None
    from llamapod.cloud.operator_policy import iam_action as action_for

    return action_for(service, operation)


def hint_for(code: str, message: str, *, action: str | None, service: str | None, region: str | None) -> str | None:
    """The fix for AWS's answer ``code`` (with ``message``) to a request needing IAM ``action``."""
    what = action or "an action llamapod needs"
    where = region or "this region"
    if code in DENIED_CODES:
        return (f"your identity lacks {what}: attach the policy `llamapod operator-policy` prints "
                f"to your user or role, {RERUN}")
    if code in EXPIRED_CODES:
        return f"your AWS session expired: refresh your credentials (e.g. `aws sso login`), {RERUN}"
    if code in INVALID_KEY_CODES:
        return (f"the access key is not valid in {where}: check AWS_PROFILE and your credentials; if {where} is an "
                f"opt-in region, enable it (AWS console: Account, AWS Regions) or pass another --region")
    if code in OPT_IN_CODES:
        return (f"{where} is not enabled for this account: enable it (AWS console: Account, AWS Regions) "
                f"or pass another --region, {RERUN}")
    if code in CAPACITY_CODES or "insufficient capacity" in message.lower():
        kind = _instance_type(message)
        return (f"AWS has no spare {kind + ' ' if kind else ''}capacity in {where} right now: retry later, "
                f"set cluster.availability_zone to another zone (or pick another region), or reserve capacity "
                f"(a SageMaker training plan), {RERUN}")
    if code in QUOTA_CODES:
        quota = _quoted(message)
        named = f" '{quota}'" if quota else ""
        console = _quota_console(_QUOTA_SERVICE.get(code, service or ""), region)
        return (f"raise the service quota{named} in Service Quotas ({console}); `llamapod doctor` compares "
                f"the cluster with your quotas; or make the cluster smaller, {RERUN}")
    if is_transient(code):
        return (f"AWS kept answering {code} to {what} after llamapod's retries: wait a few minutes, {RERUN}")
    if code in INVALID_REQUEST_CODES:
        return f"AWS refused the request as invalid: fix what its message names (llamapod.toml or flags), {RERUN}"
    return None


def is_transient(code: str) -> bool:
    from llamapod.cloud.session import TRANSIENT_CODES

    return code in TRANSIENT_CODES or code in {"500", "502", "503", "504"}


def endpoint_hint(region: str | None) -> str:
    return (f"check your network connection, the region name ({region or 'unset'}) and any proxy "
            f"(HTTPS_PROXY, NO_PROXY), {RERUN}")


def proxy_hint() -> str:
    return f"the proxy cannot be reached: fix or unset HTTPS_PROXY / HTTP_PROXY, {RERUN}"


def one_line(text: str) -> str:
    """AWS's message on one line: its line breaks and runs of spaces as single spaces."""
    return " ".join(str(text).split())


def _quoted(message: str) -> str | None:
    match = re.search(r"'([^']{3,120})'", message) or re.search(r'"([^"]{3,120})"', message)
    return match.group(1) if match else None


def _instance_type(message: str) -> str | None:
    match = re.search(r"\b(ml\.[a-z0-9-]+\.[a-z0-9]+|[a-z][a-z0-9-]*\.(?:\d*x?large|medium|small|micro|nano))\b",
                      message)
    return match.group(1) if match else None


def _quota_console(service: str, region: str | None) -> str:
    host = f"{region}.console.aws.amazon.com" if region else "console.aws.amazon.com"
    path = f"services/{service}/quotas" if service else "services"
    return f"https://{host}/servicequotas/home/{path}"

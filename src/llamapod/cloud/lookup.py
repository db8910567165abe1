"""Reading AWS the same way everywhere: a missing resource is None, a listing is every page.

``up`` and ``down`` are re-runnable because "not found" is an answer, not a failure: a
describe that finds nothing means "create it", a delete that finds nothing means "done".
What "not found" looks like differs per service, so it is written down once, here.
"""

from __future__ import annotations

from typing import Any

from llamapod.cloud.session import call, call_as
from llamapod.errors import CloudError

# The error codes each service answers for a resource that does not exist (their API
# references: SageMaker ResourceNotFound, FSx FileSystemNotFound, IAM NoSuchEntity, CloudWatch
# Logs ResourceNotFoundException; S3's HEAD requests carry no body, so only the HTTP status
# "404" names the problem there).
_MISSING_CODES: dict[str, frozenset[str]] = {
    "sagemaker": frozenset({"ResourceNotFound", "ResourceNotFoundException"}),
    "fsx": frozenset({"FileSystemNotFound"}),
    "iam": frozenset({"NoSuchEntity"}),
    "s3": frozenset({"404", "NotFound", "NoSuchBucket", "NoSuchKey"}),
    "logs": frozenset({"ResourceNotFoundException"}),
}

# Services that answer some missing resources with their generic validation error, told
# apart only by its text: CloudFormation's DescribeStacks ("Stack with id X does not exist")
# and SageMaker for a cluster name it has never seen.
_VALIDATION_CODES = {"cloudformation": "ValidationError", "sagemaker": "ValidationException"}
_MISSING_WORDS = ("not found", "could not find", "does not exist")


def service_of(client: Any) -> str:
    return client.meta.service_model.service_name


def is_missing(exc: CloudError, service: str) -> bool:
    """True if the failed call's answer means "there is no such resource" in ``service``."""
    if exc.code in _MISSING_CODES.get(service, ()):
        return True
    if exc.code == _VALIDATION_CODES.get(service):
        text = exc.aws_message.lower()
        return any(words in text for words in _MISSING_WORDS)
    return False


def call_or_none(client: Any, op: str, **kwargs: Any) -> dict[str, Any] | None:
    """``call(client, op, **kwargs)``, except that a missing resource gives None.

    For a describe, None is "it does not exist"; for a delete, "already gone", which is success.
    """
    try:
        return call(client, op, **kwargs)
    except CloudError as exc:
        if not is_missing(exc, service_of(client)):
            raise
    return None


def paginate(client: Any, op: str, key: str, **kwargs: Any) -> list[Any]:
    """Every item under ``key`` on every page of ``op``, walked by boto3's paginator; a failure
    on any page is that operation's CloudError."""
    pages = client.get_paginator(op).paginate
    return call_as(op, lambda: [item for page in pages(**kwargs) for item in page.get(key, [])], client)


def paginate_or_empty(client: Any, op: str, key: str, **kwargs: Any) -> list[Any]:
    """``paginate``, except that what belongs to a missing resource (its tags, say) is nothing."""
    try:
        return paginate(client, op, key, **kwargs)
    except CloudError as exc:
        if not is_missing(exc, service_of(client)):
            raise
    return []

"""Names llamapod and AWS must agree on: partitions, and the tags that mark what llamapod made.

Standard library only, so that config validates tags before boto3 is imported and cloud
builds ARNs and finds resources with the very same names.
"""

from __future__ import annotations

import unicodedata
from typing import Mapping, Sequence

# Every resource llamapod creates carries ``llamapod:cluster=<cluster name>``: ``down`` finds
# them by it, and the operator policy only lets llamapod change what carries it.
TAG_NAMESPACE = "llamapod:"
CLUSTER_TAG = f"{TAG_NAMESPACE}cluster"
# Tag keys a user may not set: AWS reserves aws:, and llamapod: would let a user's tag pose
# as llamapod's own.
RESERVED_TAG_PREFIXES = ("aws:", TAG_NAMESPACE)
TAG_PUNCTUATION = "_.:/=+-@"

# The public partitions HyperPod may run in (the ISO partitions are not offered).
PARTITIONS = ("aws", "aws-cn", "aws-us-gov")
_PARTITION_PREFIXES = (("cn-", "aws-cn"), ("us-gov-", "aws-us-gov"))


def partition_of(region: str) -> str:
    """The ARN partition of a region: cn-* is aws-cn, us-gov-* is aws-us-gov, every other is aws."""
    for prefix, partition in _PARTITION_PREFIXES:
        if region.startswith(prefix):
            return partition
    return "aws"


def cluster_tag(name: str) -> dict[str, str]:
    """The tag, in AWS's ``{"Key", "Value"}`` form, that marks a resource as the cluster's."""
    return {"Key": CLUSTER_TAG, "Value": name}


def has_cluster_tag(tags: Sequence[Mapping[str, str]] | None, name: str) -> bool:
    """True if an AWS tag list (``[{"Key", "Value"}]``) carries ``llamapod:cluster=<name>``."""
    return any(t.get("Key") == CLUSTER_TAG and t.get("Value") == name for t in tags or [])


def tag_text_ok(text: str) -> bool:
    """The character set SageMaker, IAM and FSx accept in tag keys and values:
    ``[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*`` (the Tag Key/Value patterns of their service models).

    Python's ``re`` has no \\p{...} classes, so the Unicode categories are asked of unicodedata:
    letters (L*), separators (Z*, e.g. a space) and numbers (N*).
    """
    return all(unicodedata.category(c)[0] in "LZN" or c in TAG_PUNCTUATION for c in text)

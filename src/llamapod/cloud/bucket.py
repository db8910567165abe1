"""The lifecycle bucket: secure by default, filled with llamapod's node scripts, emptied to delete."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from llamapod.aws_names import has_cluster_tag
from llamapod.cloud.ledger import Ledger
from llamapod.cloud.lookup import call_or_none, paginate
from llamapod.cloud.session import call
from llamapod.errors import CloudError

DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys per request


def bucket_exists(session, name: str) -> bool:
    try:
        return call_or_none(session.client("s3"), "head_bucket", Bucket=name) is not None
    except CloudError as exc:
        if exc.code in ("403", "AccessDenied"):
            # S3 answers a bare 403 both to a bucket of another account and to a caller lacking
            # s3:ListBucket on its own bucket: say both, the permission first (the likelier one).
            raise CloudError("head_bucket", "AccessDenied",
                             f"S3 refused to look up the bucket {name}: your identity lacks s3:ListBucket on it, "
                             f"or another AWS account owns that name",
                             "attach the policy `llamapod operator-policy` prints to your user or role and re-run; "
                             "if it still fails, the name is taken: choose another cluster name") from None
        raise


def ensure_bucket(session, name: str, tags: list[dict[str, str]], ledger: Ledger) -> None:
    """Create the bucket if missing, then (re-)apply its security settings and tags."""
    from llamapod.cloud import plan

    s3 = session.client("s3")
    if not bucket_exists(session, name):
        kwargs: dict[str, Any] = {"Bucket": name}
        if session.region != "us-east-1":  # us-east-1 rejects an explicit LocationConstraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": session.region}
        try:
            call(s3, "create_bucket", **kwargs)
        except CloudError as exc:
            if exc.code == "BucketAlreadyExists":
                raise CloudError("create_bucket", exc.code, f"the bucket name {name} is taken by another AWS account",
                                 "bucket names are global: choose another cluster name") from None
            if exc.code != "BucketAlreadyOwnedByYou":
                raise
    ledger.record("bucket", name=name)
    call(s3, "put_bucket_tagging", Bucket=name, Tagging={"TagSet": tags})
    for operation, arguments in security_settings(name, session.partition).items():
        call(s3, operation, Bucket=name, **arguments)


def security_settings(name: str, partition: str = "aws") -> dict[str, dict[str, Any]]:
    """Every security setting of the bucket, as the S3 calls that apply them (tests lint these with checkov).

    Access logging is deliberately off: the bucket holds llamapod's own open-source scripts
    and one JSON of non-secret names, read only by the cluster's role; a log bucket would be a
    second resource to create, secure and delete for no information worth keeping.
    """
    from llamapod.cloud import plan

    return {
        "put_public_access_block": {"PublicAccessBlockConfiguration": {
            "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True}},
        "put_bucket_encryption": {"ServerSideEncryptionConfiguration": {"Rules": [
            {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": True}]}},
        # Versioning keeps every lifecycle script a node ever booted with (they are tiny).
        "put_bucket_versioning": {"VersioningConfiguration": {"Status": "Enabled"}},
        "put_bucket_policy": {"Policy": json.dumps(plan.bucket_policy(name, partition))},
    }


def upload_files(session, bucket: str, files: list[tuple[Path, str]], prefix: str) -> int:
    """Upload each (path, key) under ``prefix``; unchanged objects are skipped. Returns the count sent."""
    sent = 0
    for path, key in files:
        if put_bytes(session, bucket, f"{prefix}/{key}".lstrip("/"), path.read_bytes()):
            sent += 1
    return sent


def put_bytes(session, bucket: str, key: str, body: bytes, content_type: str | None = None) -> bool:
    """Write an object unless the same bytes are already there (re-runs upload nothing)."""
    s3 = session.client("s3")
    md5 = hashlib.md5(body, usedforsecurity=False)
    try:
        head = call_or_none(s3, "head_object", Bucket=bucket, Key=key)
    except CloudError as exc:
        # S3 answers 403 instead of 404 for a missing key to callers without s3:ListBucket;
        # put_object below fails clearly if the permission problem is real.
        if exc.code != "403":
            raise
        head = None
    if head is not None and head.get("ETag", "").strip('"') == md5.hexdigest():
        return False
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": body,
                              "ContentMD5": base64.b64encode(md5.digest()).decode()}
    if content_type:
        kwargs["ContentType"] = content_type
    call(s3, "put_object", **kwargs)
    return True


def empty_and_delete(session, name: str) -> None:
    """Delete every object version and delete marker, then the bucket; a missing bucket is fine."""
    s3 = session.client("s3")
    # Each round lists from the start again: what the last round deleted is no longer there.
    while True:
        page = call_or_none(s3, "list_object_versions", Bucket=name, MaxKeys=DELETE_BATCH)
        if page is None:
            return
        keys = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        if not keys:
            break
        result = call_or_none(s3, "delete_objects", Bucket=name, Delete={"Objects": keys, "Quiet": True}) or {}
        if result.get("Errors"):
            first = result["Errors"][0]
            raise CloudError("delete_objects", first.get("Code", "Unknown"),
                             f"{first.get('Key')}: {first.get('Message', '')}",
                             "run `llamapod down` again; if it persists, empty the bucket in the console")
    call_or_none(s3, "delete_bucket", Bucket=name)


def find_buckets(session, cluster_name: str, candidates: list[str]) -> list[str]:
    """Buckets tagged for the cluster among llamapod's ``sagemaker-`` buckets, plus known names that exist."""
    s3 = session.client("s3")
    found = [name for name in candidates if bucket_exists(session, name)]
    # ListBuckets answers the buckets of every region, and a cluster of the same name in another
    # region tags its bucket just the same: only this region's are this cluster's (S3 API
    # reference, ListBuckets BucketRegion; each entry names its BucketRegion).
    for bucket in paginate(s3, "list_buckets", "Buckets", Prefix="sagemaker-", BucketRegion=session.region):
        name = bucket["Name"]
        if bucket.get("BucketRegion", session.region) != session.region:
            continue
        if name not in found and has_cluster_tag(_bucket_tags(s3, name), cluster_name):
            found.append(name)
    return found


def _bucket_tags(s3, name: str) -> list[dict[str, str]]:
    """The bucket's tags; none for a bucket without tags, deleted meanwhile, or not readable by this caller."""
    try:
        answer = call_or_none(s3, "get_bucket_tagging", Bucket=name)
    except CloudError as exc:
        if exc.code in ("NoSuchTagSet", "AccessDenied", "403"):
            return []
        raise
    return answer.get("TagSet", []) if answer is not None else []

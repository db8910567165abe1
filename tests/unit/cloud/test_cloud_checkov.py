"""checkov on the network template and on the lifecycle bucket's settings.

checkov lives in a virtual environment of its own (``.venv-checkov``, made by ``.ci/setup``)
because it pins boto3/botocore versions of its own. The bucket is made by API calls, not a
template, so its settings (``bucket.security_settings``, exactly what ``up`` applies) are
rendered here as the equivalent CloudFormation resources for checkov to read.
"""

from __future__ import annotations

import json
import os
import subprocess  # nosec B404: runs checkov, a fixed local executable
from pathlib import Path

import pytest

from llamapod.cloud import bucket, plan

REPO = Path(__file__).resolve().parents[3]
CHECKOV = Path(os.environ.get("LLAMAPOD_CHECKOV", REPO / ".venv-checkov" / "bin" / "checkov"))
BUCKET = "sagemaker-llamapod-demo-0123456789"

# Findings accepted, each with its reason.
ACCEPTED = {
    ("CKV_AWS_18", "AWS::S3::Bucket.LifecycleBucket"):
        "no access logging: the bucket holds llamapod's own scripts, read only by the cluster's role "
        "(see bucket.security_settings)",
}


def bucket_template(name: str) -> dict:
    """The bucket's settings as the CloudFormation resources that would apply the same ones."""
    settings = bucket.security_settings(name)
    rules = settings["put_bucket_encryption"]["ServerSideEncryptionConfiguration"]["Rules"]
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Resources": {
            "LifecycleBucket": {"Type": "AWS::S3::Bucket", "Properties": {
                "BucketName": name,
                "PublicAccessBlockConfiguration": settings["put_public_access_block"]["PublicAccessBlockConfiguration"],
                "BucketEncryption": {"ServerSideEncryptionConfiguration": [
                    {"ServerSideEncryptionByDefault": rule["ApplyServerSideEncryptionByDefault"],
                     "BucketKeyEnabled": rule["BucketKeyEnabled"]} for rule in rules]},
                "VersioningConfiguration": settings["put_bucket_versioning"]["VersioningConfiguration"],
            }},
            "LifecycleBucketPolicy": {"Type": "AWS::S3::BucketPolicy", "Properties": {
                "Bucket": {"Ref": "LifecycleBucket"},
                "PolicyDocument": json.loads(settings["put_bucket_policy"]["Policy"]),
            }},
        },
    }


def _checkov(folder: Path) -> tuple[list[tuple[str, str, str]], set[str]]:
    """(failed (check, resource, file), passed check ids) of checkov on every template in ``folder``."""
    if not CHECKOV.exists():
        if os.environ.get("CI"):
            pytest.fail(f"checkov is missing at {CHECKOV}: .ci/setup creates .venv-checkov")
        pytest.skip(f"checkov is not installed at {CHECKOV} (bash .ci/setup creates it)")
    # BC_SKIP_MAPPING and --skip-download: checkov otherwise asks its vendor's platform online.
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    done = subprocess.run([str(CHECKOV), "-d", str(folder), "--framework", "cloudformation",  # nosec B603
                           "--skip-download", "-o", "json"], capture_output=True, text=True, env=env, timeout=300)
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed, passed = [], set()
    for report in reports:
        results = report.get("results", {})
        failed += [(f["check_id"], f["resource"], Path(f["file_path"]).name) for f in results.get("failed_checks", [])]
        passed |= {p["check_id"] for p in results.get("passed_checks", [])}
    return failed, passed


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkov")
    (folder / "network.yaml").write_text(plan.network_template(), encoding="utf-8")
    (folder / "bucket.json").write_text(json.dumps(bucket_template(BUCKET), indent=1), encoding="utf-8")
    # A control that must fail: the same template with SSH open to the world.
    open_ssh = plan.network_template().replace(
        "  # Members of the group reach each other",
        "  OpenSsh:\n    Type: AWS::EC2::SecurityGroupIngress\n    Properties:\n"
        "      GroupId: !Ref ClusterSecurityGroup\n      IpProtocol: tcp\n      FromPort: 22\n      ToPort: 22\n"
        "      CidrIp: 0.0.0.0/0\n\n  # Members of the group reach each other")
    (folder / "control-open-ssh.yaml").write_text(open_ssh, encoding="utf-8")
    return _checkov(folder)


def test_network_template_and_bucket_pass_checkov(checked):
    failed, _ = checked
    ours = [(check, resource) for check, resource, name in failed if not name.startswith("control-")]
    assert sorted(set(ours) - set(ACCEPTED)) == []


def test_checkov_ran_the_checks_that_matter(checked):
    failed, passed = checked
    # Encryption, public access block (4), TLS-only policy, versioning; security group rules.
    assert {"CKV_AWS_19", "CKV_AWS_53", "CKV_AWS_54", "CKV_AWS_55", "CKV_AWS_56", "CKV_AWS_21",
            "CKV_AWS_24", "CKV_AWS_25", "CKV_AWS_260"} <= passed
    assert ("CKV_AWS_24", "AWS::EC2::SecurityGroupIngress.OpenSsh", "control-open-ssh.yaml") in failed

"""Every class of AWS error answer a user can meet: one error line naming the problem, one hint
naming the fix, an exit code that is neither success nor "internal error", and `up`/`down`
continuing where they stopped when run again.

Errors are injected at botocore's ``before-send`` (tests/fixtures/aws_faults.py) in each
service's wire format, so botocore's retries (shortened, not skipped) and llamapod's
translation see them as they would see AWS's answers. Emulator gaps and the virtual clock as
in test_cloud_up_flow.py (``aws_gaps``).
"""

from __future__ import annotations

import pytest

from fixtures.aws import NOTHING, ONE_CLUSTER, counts, install_on_sessions, resources_for
from fixtures.aws_faults import Refuse, error_answer
from llamapod.cloud.session import AwsSession, call
from llamapod.cloud.up import bring_up
from llamapod.config.cluster import load_cluster_spec
from llamapod.errors import CloudError


def _raise(factory):
    def answer(protocol):
        raise factory()
    return answer


def _answer(code, status, message, json_code=None):
    return lambda protocol: error_answer(protocol, json_code if json_code and "json" in protocol else code,
                                         status, message)


def _endpoint():
    from botocore.exceptions import EndpointConnectionError

    return EndpointConnectionError(endpoint_url="https://api.sagemaker.us-east-1.amazonaws.com/")


def _proxy():
    from botocore.exceptions import ProxyConnectionError

    return ProxyConnectionError(proxy_url="http://proxy.corp:3128", error="Connection refused")


def _sso():
    from botocore.exceptions import TokenRetrievalError

    return TokenRetrievalError(provider="sso", error_msg="Token has expired and refresh failed")


# error class: (its answer, what the error line must contain, what the hint must contain)
ERRORS = {
    "access denied": (_answer("AccessDenied", 403, "User: arn:aws:iam::123456789012:user/dev is not authorized",
                              "AccessDeniedException"),
                      "is not authorized", "lacks sagemaker:DescribeCluster: attach the policy `llamapod operator-policy`"),
    "expired token": (_answer("ExpiredToken", 400, "The security token included in the request is expired",
                              "ExpiredTokenException"), "expired", "`aws sso login`"),
    "invalid key": (_answer("InvalidClientTokenId", 403, "The security token included in the request is invalid",
                            "UnrecognizedClientException"), "invalid", "check AWS_PROFILE"),
    "sso expired": (_raise(_sso), "sign-in of this profile has expired", "`aws sso login`"),
    "throttling past the retries": (_answer("Throttling", 400, "Rate exceeded", "ThrottlingException"),
                                    "Rate exceeded", "after llamapod's retries: wait a few minutes"),
    "quota": (_answer("ResourceLimitExceeded", 400,
                      "The account-level service limit 'ml.g5.48xlarge for cluster usage' is 0 Instances"),
              "ResourceLimitExceeded", "raise the service quota 'ml.g5.48xlarge for cluster usage' in Service Quotas "
              "(https://us-east-1.console.aws.amazon.com/servicequotas/home/services/sagemaker/quotas)"),
    "insufficient capacity": (_answer("InsufficientCapacityError", 400,
                                      "We currently do not have sufficient ml.p5.48xlarge capacity"),
                              "sufficient", "no spare ml.p5.48xlarge capacity in us-east-1"),
    "region not enabled": (_answer("OptInRequired", 403, "You are not subscribed to this service"),
                           "OptInRequired", "us-east-1 is not enabled for this account"),
    "no endpoint": (_raise(_endpoint), "Could not connect", "network connection, the region name (us-east-1)"),
    "proxy": (_raise(_proxy), "proxy", "fix or unset HTTPS_PROXY"),
}


@pytest.fixture
def fast_retries(monkeypatch):
    from botocore.retries import adaptive, standard

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: 0.001)
    monkeypatch.setattr(adaptive.ClientRateLimiter, "on_sending_request", lambda self, request, **kwargs: None)


def _one_error(err: str) -> tuple[str, str]:
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    hints = [line for line in err.splitlines() if line.startswith("  hint:")]
    assert len(errors) == 1 and len(hints) == 1, err
    assert "Traceback" not in err and "internal error" not in err
    return errors[0], hints[0]


@pytest.mark.parametrize("kind", ERRORS)
def test_each_aws_error_is_one_line_with_its_fix(aws_warm, run_cli, monkeypatch, fast_retries, kind):
    answer, problem, fix = ERRORS[kind]
    refuse = Refuse("DescribeCluster", answer)
    install_on_sessions(monkeypatch, refuse.install)
    code, out, err = run_cli("status", "demo", "--region", "us-east-1")
    error, hint = _one_error(err)
    assert code not in (0, 70) and refuse.fired
    assert problem in error and fix in hint, err


# The IAM action named for a refused call of each wire protocol (and S3's actions of other names).
CALLS = [("ec2", "describe_vpcs", {}, "ec2:DescribeVpcs"),
         ("s3", "head_bucket", {"Bucket": "b"}, "s3:ListBucket"),
         ("iam", "get_role", {"RoleName": "r"}, "iam:GetRole"),
         ("cloudformation", "describe_stacks", {}, "cloudformation:DescribeStacks"),
         ("fsx", "describe_file_systems", {}, "fsx:DescribeFileSystems"),
         ("resourcegroupstaggingapi", "get_resources", {}, "tag:GetResources")]


@pytest.mark.parametrize("service,op,kwargs,action", CALLS, ids=[c[0] for c in CALLS])
def test_a_refused_call_names_its_iam_action(aws_warm, monkeypatch, service, op, kwargs, action):
    operation = "".join(part.title() for part in op.split("_"))
    install_on_sessions(monkeypatch, Refuse(operation, _answer("AccessDenied", 403, "denied\n  on two lines",
                                                               "AccessDeniedException")).install)
    with pytest.raises(CloudError) as info:
        call(AwsSession(region="us-east-1").client(service), op, **kwargs)
    assert f"lacks {action}: attach the policy `llamapod operator-policy` prints" in info.value.hint
    assert "\n" not in str(info.value)


def test_create_cluster_refusals_then_up_continues(aws_gaps, cluster_name, monkeypatch, run_cli):
    """CreateCluster refused as invalid (AWS's message passed through, on one line), for a quota,
    for capacity: each is one line; the next `up` creates nothing twice and finishes."""
    refusals = [("ValidationException", "1 validation error detected:\nValue 'x' at 'instanceGroups' failed",
                 "1 validation error detected: Value 'x' at 'instanceGroups' failed", "AWS refused the request"),
                ("ResourceLimitExceeded", "The account-level service limit 'ml.g5.48xlarge for cluster usage' is 0",
                 "ResourceLimitExceeded", "raise the service quota 'ml.g5.48xlarge for cluster usage'"),
                ("InsufficientCapacityError", "Insufficient capacity for ml.g5.48xlarge in us-east-1a",
                 "Insufficient capacity", "no spare ml.g5.48xlarge capacity")]
    for code_name, message, problem, fix in refusals:
        with monkeypatch.context() as patch:
            install_on_sessions(patch, Refuse("CreateCluster", _answer(code_name, 400, message)).install)
            code, out, err = run_cli("up", "--name", cluster_name)
        error, hint = _one_error(err)
        assert code not in (0, 70) and problem in error and fix in hint, err

    code, out, err = run_cli("up", "--name", cluster_name)
    assert code == 0, err
    assert counts(resources_for(aws_gaps.endpoint, cluster_name)) == ONE_CLUSTER
    for op in ("CreateStack", "CreateFileSystem"):
        assert len(aws_gaps.requests.get(op, [])) == 1, op


def test_down_refused_at_the_stack_then_rerun_deletes_everything(aws_gaps, cluster_name, monkeypatch, run_cli):
    bring_up(AwsSession(region="us-east-1"), load_cluster_spec(None, {"name": cluster_name}))
    with monkeypatch.context() as patch:
        install_on_sessions(patch, Refuse("DeleteStack", _answer("AccessDenied", 403, "not authorized")).install)
        code, out, err = run_cli("down", cluster_name, "--yes")
    error, hint = _one_error(err)
    assert code not in (0, 70) and "cloudformation:DeleteStack" in hint, err
    assert counts(resources_for(aws_gaps.endpoint, cluster_name))["stack"] == 1

    code, out, err = run_cli("down", cluster_name, "--yes")
    assert code == 0, err
    assert counts(resources_for(aws_gaps.endpoint, cluster_name)) == NOTHING


def test_a_bare_403_on_the_bucket_names_the_permission_before_the_name(aws_warm, monkeypatch):
    """S3's HeadBucket answers 403 with no body, for a missing s3:ListBucket as for another account's bucket."""
    from llamapod.cloud.bucket import bucket_exists

    install_on_sessions(monkeypatch, Refuse("HeadBucket", lambda protocol: error_answer(protocol, "403", 403, "")).install)
    with pytest.raises(CloudError) as info:
        bucket_exists(AwsSession(region="us-east-1"), "sagemaker-llamapod-demo")
    assert "lacks s3:ListBucket on it, or another AWS account owns that name" in info.value.message
    assert info.value.hint.startswith("attach the policy `llamapod operator-policy` prints")

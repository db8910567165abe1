"""AWS clients with one retry policy and one way of reporting failures.

Every AWS call in llamapod goes through ``AwsSession.client`` (botocore retries in
adaptive mode, so throttling backs off across the whole process) and, where a failure
should reach the user, through ``call`` which turns ``ClientError`` into a one-line
``CloudError`` naming the operation, AWS's code and what to do.
"""

from __future__ import annotations

import os
import threading
from functools import cached_property
from typing import Any

from llamapod.errors import CloudError

# Errors worth retrying on top of botocore's own retries: they mean "not yet", not "no".
TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
    "TooManyRequestsException", "ServiceUnavailable", "ServiceUnavailableException",
    "InternalError", "InternalFailure", "InternalServerError", "RequestTimeout",
    "RequestTimeoutException", "SlowDown", "PriorRequestNotComplete", "EC2ThrottledException",
})

_HINTS = {
    "ExpiredToken": "your AWS session expired: refresh your credentials (e.g. `aws sso login`) and re-run",
    "ExpiredTokenException": "your AWS session expired: refresh your credentials (e.g. `aws sso login`) and re-run",
    "InvalidClientTokenId": "the access key is not valid in this account/region: check AWS_PROFILE and credentials",
    "UnrecognizedClientException": "the access key is not valid: check AWS_PROFILE and credentials",
    "AccessDenied": "your identity lacks a permission: `llamapod operator-policy` prints the policy llamapod needs",
    "AccessDeniedException": "your identity lacks a permission: `llamapod operator-policy` prints the policy llamapod needs",
    "UnauthorizedOperation": "your identity lacks a permission: `llamapod operator-policy` prints the policy llamapod needs",
    "ResourceLimitExceeded": "a service quota is too low: `llamapod doctor` shows which, then request an increase in Service Quotas",
    "ServiceQuotaExceededException": "a service quota is too low: request an increase in the Service Quotas console",
}


class AwsSession:
    """boto3 clients for one account/region, created once per service and shared."""

    def __init__(self, region: str | None = None, profile: str | None = None, endpoint_url: str | None = None,
                 max_attempts: int = 10):
        self._region = region
        self._profile = profile
        # AWS_ENDPOINT_URL is boto3's own setting; passing it explicitly keeps tests obvious.
        self.endpoint_url = endpoint_url or os.environ.get("LLAMAPOD_AWS_ENDPOINT_URL") or None
        self._max_attempts = max_attempts
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    @cached_property
    def boto(self):
        import boto3
        from botocore.exceptions import ProfileNotFound

        try:
            session = boto3.session.Session(botocore_session=_botocore_session(), profile_name=self._profile,
                                            region_name=self._region)
            # boto3 appends its own data folder to the (shared) loader's search path each time.
            paths = session._loader.search_paths
            with _LOADERS_LOCK:
                paths[:] = list(dict.fromkeys(paths))
            return session
        except ProfileNotFound:
            raise CloudError("configure", "ProfileNotFound", f"AWS profile '{self._profile}' is not configured",
                             "use a profile listed by `aws configure list-profiles`, or drop --profile") from None

    @property
    def region(self) -> str:
        region = self._region or self.boto.region_name
        if not region:
            raise CloudError("configure", "NoRegion", "no AWS region is set",
                             "pass --region, set AWS_REGION, or set cluster.region in llamapod.toml")
        return region

    def client(self, service: str):
        with self._lock:
            if service not in self._clients:
                from botocore.config import Config

                config = Config(retries={"mode": "adaptive", "max_attempts": self._max_attempts},
                                connect_timeout=10, read_timeout=60, user_agent_extra="llamapod")
                kwargs: dict[str, Any] = {"region_name": self.region, "config": config}
                if self.endpoint_url:
                    kwargs["endpoint_url"] = self.endpoint_url
                self._clients[service] = self.boto.client(service, **kwargs)
            return self._clients[service]

    @cached_property
    def account_id(self) -> str:
        return call(self.client("sts"), "get_caller_identity")["Account"]

    @property
    def partition(self) -> str:
        return "aws-cn" if self.region.startswith("cn-") else ("aws-us-gov" if "gov" in self.region else "aws")


def _botocore_session():
    """A botocore session sharing one process-wide loader of service models.

    Parsing a service model (EC2's is megabytes of JSON) is most of what creating a
    client costs; each new session would parse them again.
    """
    import botocore.session

    session = botocore.session.get_session()
    session.register_component("data_loader", _shared_loader(os.environ.get("AWS_DATA_PATH")))
    return session


_LOADERS: dict = {}
_LOADERS_LOCK = threading.Lock()


def _shared_loader(data_path: str | None):
    from botocore.loaders import create_loader

    with _LOADERS_LOCK:
        if data_path not in _LOADERS:
            _LOADERS[data_path] = create_loader(data_path)
        return _LOADERS[data_path]


def error_code(exc: BaseException) -> str | None:
    """AWS's error code of a botocore ClientError (None for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None


def call(client, op: str, **kwargs) -> dict:
    """``client.<op>(**kwargs)``, with AWS failures turned into a CloudError."""
    from botocore.exceptions import (ClientError, EndpointConnectionError, NoCredentialsError,
                                     NoRegionError, ParamValidationError)

    try:
        return getattr(client, op)(**kwargs)
    except ClientError as exc:
        code = error_code(exc) or "Unknown"
        message = exc.response.get("Error", {}).get("Message", str(exc))
        raise CloudError(op, code, message, _HINTS.get(code)) from exc
    except NoCredentialsError:
        raise CloudError(op, "NoCredentials", "no AWS credentials were found",
                         "run `aws configure` or `aws sso login`, or set AWS_PROFILE") from None
    except NoRegionError:
        raise CloudError(op, "NoRegion", "no AWS region is set", "pass --region or set AWS_REGION") from None
    except EndpointConnectionError as exc:
        raise CloudError(op, "EndpointConnectionError", str(exc),
                         "check your network connection and the region name") from None
    except ParamValidationError as exc:
        # A request llamapod built is malformed: a bug, but say exactly what AWS would reject.
        raise CloudError(op, "ParamValidation", str(exc).replace("\n", " "),
                         "this is a llamapod bug; please report it with the command you ran") from None

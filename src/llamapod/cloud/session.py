"""AWS clients from one factory and one way of reporting failures.

Every AWS client in llamapod comes from ``AwsSession.client``, with the retry policy its
call site needs: ``PERSISTENT`` for what ``up``, ``down`` and their waits must get done
(botocore's adaptive mode, so throttling backs off across the whole process), and
``lookup_retries`` for look-ups whose failure is itself an answer (``doctor``'s "unknown").
Where a failure should reach the user, calls go through ``call``, which turns
``ClientError`` into a one-line ``CloudError`` naming the operation, AWS's code and what to do.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Literal, TypeVar

from llamapod.aws_names import partition_of
from llamapod.errors import AwsSetupError, CloudError

T = TypeVar("T")

# Errors worth retrying on top of botocore's own retries: they mean "not yet", not "no".
TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
    "TooManyRequestsException", "ServiceUnavailable", "ServiceUnavailableException",
    "InternalError", "InternalFailure", "InternalServerError", "RequestTimeout",
    "RequestTimeoutException", "SlowDown", "PriorRequestNotComplete", "EC2ThrottledException",
})

@dataclass(frozen=True)
class Retries:
    """How a client retries and how long it waits for an answer: chosen by the call site."""

    mode: Literal["adaptive", "standard"]  # botocore's retry modes
    attempts: int  # in all, the first one included
    connect_timeout_s: int
    read_timeout_s: int

    def config(self):
        from botocore.config import Config

        return Config(retries={"mode": self.mode, "total_max_attempts": self.attempts},
                      connect_timeout=self.connect_timeout_s, read_timeout=self.read_timeout_s,
                      user_agent_extra="llamapod")


# What must get done (create, delete, wait): a busy API is ridden out, not reported.
PERSISTENT = Retries("adaptive", attempts=11, connect_timeout_s=10, read_timeout_s=60)


def lookup_retries(attempts: int = 3) -> Retries:
    """For a look-up that cannot be answered is "unknown", not a wait: a few quick tries."""
    return Retries("standard", attempts, connect_timeout_s=5, read_timeout_s=20)


class AwsSession:
    """boto3 clients for one account/region, created once per service and retry policy, and shared."""

    def __init__(self, region: str | None = None, profile: str | None = None, endpoint_url: str | None = None):
        self._region = region
        self._profile = profile
        # AWS_ENDPOINT_URL is boto3's own setting; passing it explicitly keeps tests obvious.
        self.endpoint_url = endpoint_url or os.environ.get("LLAMAPOD_AWS_ENDPOINT_URL") or None
        self._clients: dict[tuple[str, Retries], Any] = {}
        self._lock = threading.Lock()

    @cached_property
    def boto(self):
        import boto3
        from botocore.exceptions import BotoCoreError

        try:
            session = boto3.session.Session(botocore_session=_botocore_session(), profile_name=self._profile,
                                            region_name=self._region)
            # Resolving the credentials now surfaces a mistyped profile, half-set environment
            # variables or a malformed ~/.aws/config as one line before any request is built.
            # No credentials at all is not an error yet: commands that can do without them
            # (plan) report it where the first request needs them.
            session.get_credentials()
        except BotoCoreError as exc:
            raise setup_error(exc, self._profile) from None
        # boto3 appends its own data folder to the (shared) loader's search path each time.
        paths = session._loader.search_paths
        with _LOADERS_LOCK:
            paths[:] = list(dict.fromkeys(paths))
        return session

    @property
    def region(self) -> str:
        from botocore.exceptions import BotoCoreError

        try:
            region = self._region or self.boto.region_name
        except BotoCoreError as exc:
            raise setup_error(exc, self._profile) from None
        if not region:
            raise AwsSetupError("NoRegion", "no AWS region is set",
                                "pass --region, set AWS_REGION, or set cluster.region in llamapod.toml")
        return region

    def client(self, service: str, retries: Retries = PERSISTENT):
        """The session's client of ``service`` with the ``retries`` policy (made once, then shared:
        creating a client costs more than a call)."""
        with self._lock:
            if (service, retries) not in self._clients:
                from botocore.exceptions import BotoCoreError

                kwargs: dict[str, Any] = {"region_name": self.region, "config": retries.config()}
                if self.endpoint_url:
                    kwargs["endpoint_url"] = self.endpoint_url
                try:
                    self._clients[(service, retries)] = self.boto.client(service, **kwargs)
                except BotoCoreError as exc:
                    raise setup_error(exc, self._profile) from None
            return self._clients[(service, retries)]

    @cached_property
    def account_id(self) -> str:
        return call(self.client("sts"), "get_caller_identity")["Account"]

    @property
    def partition(self) -> str:
        return partition_of(self.region)


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
    return call_as(op, lambda: getattr(client, op)(**kwargs), client)


def call_as(op: str, request: Callable[[], T], client: Any = None) -> T:
    """``request()``, one or more AWS requests of operation ``op`` (every page of a listing, say),
    with AWS failures turned into that operation's CloudError; ``client`` (the one sending them)
    lets the hint name the IAM action and the region."""
    from botocore.exceptions import (BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError,
                                     NoRegionError, ParamValidationError, ProxyConnectionError)

    from llamapod.cloud import error_hints

    meta = getattr(client, "meta", None)
    region = getattr(meta, "region_name", None)
    try:
        return request()
    except ClientError as exc:
        code = error_code(exc) or "Unknown"
        message = error_hints.one_line(exc.response.get("Error", {}).get("Message") or str(exc))
        service = meta.service_model.service_name if meta is not None else None
        action = error_hints.iam_action(service, getattr(exc, "operation_name", None))
        raise CloudError(op, code, message, error_hints.hint_for(code, message, action=action, service=service,
                                                                 region=region)) from exc
    except NoCredentialsError:
        raise _no_credentials(op) from None
    except NoRegionError:
        raise CloudError(op, "NoRegion", "no AWS region is set", "pass --region or set AWS_REGION") from None
    except ProxyConnectionError as exc:
        raise CloudError(op, "ProxyConnectionError", _first_line(exc), error_hints.proxy_hint()) from None
    except EndpointConnectionError as exc:
        raise CloudError(op, "EndpointConnectionError", _first_line(exc), error_hints.endpoint_hint(region)) from None
    except ParamValidationError as exc:
        # A request llamapod built is malformed: a bug, but say exactly what AWS would reject.
        raise CloudError(op, "ParamValidation", str(exc).replace("\n", " "),
                         "this is a llamapod bug; please report it with the command you ran") from None
    except BotoCoreError as exc:
        # Credentials that expire or are fetched lazily (SSO, credential_process, assumed
        # roles) fail here, at the first request; so do timeouts and dropped connections.
        known = setup_error(exc, None)
        if not isinstance(known, _UnknownSetupError):
            raise known from None
        raise CloudError(op, type(exc).__name__, _first_line(exc), error_hints.endpoint_hint(region)) from None


# ---- this machine's AWS setup -------------------------------------------------------


def _no_credentials(op: str) -> CloudError:
    if os.environ.get("AWS_SECRET_ACCESS_KEY") and not os.environ.get("AWS_ACCESS_KEY_ID"):
        # botocore ignores a lone secret key and finds nothing else: name the half that is missing.
        return CloudError(op, "NoCredentials", "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not",
                          "export AWS_ACCESS_KEY_ID as well, or unset AWS_SECRET_ACCESS_KEY to use your profile")
    return CloudError(op, "NoCredentials", "no AWS credentials were found",
                      "run `aws configure` or `aws sso login`, or set AWS_PROFILE")


class _UnknownSetupError(AwsSetupError):
    """A botocore error that is not about the local AWS setup."""


def setup_error(exc: BaseException, profile_flag: str | None) -> AwsSetupError:
    """One line naming the local AWS setting behind a botocore error, and how to fix it."""
    from botocore import exceptions as bx

    kwargs = getattr(exc, "kwargs", {}) or {}
    if isinstance(exc, bx.ProfileNotFound):
        return _profile_not_found(str(kwargs.get("profile", profile_flag)), profile_flag)
    if isinstance(exc, bx.PartialCredentialsError):
        return _partial_credentials(str(kwargs.get("provider", "")), str(kwargs.get("cred_var", "")))
    if isinstance(exc, bx.ConfigParseError):
        return _unparseable_config(str(kwargs.get("path", "")), kwargs.get("error"))
    if isinstance(exc, (bx.InvalidRegionError, bx.UnknownRegionError)):
        return AwsSetupError("InvalidRegion", f"AWS region {kwargs.get('region_name', '')!r} is not a region name",
                             "use a region name such as us-east-1 (--region, AWS_REGION or cluster.region)")
    if isinstance(exc, _botocore_classes(bx, "SSOError", "SSOTokenLoadError", "UnauthorizedSSOTokenError",
                                         "TokenRetrievalError", "LoginTokenLoadError")):
        return AwsSetupError("ExpiredToken",
                             f"the AWS sign-in of this profile has expired or is missing ({_first_line(exc)})",
                             "sign in again: `aws sso login` (add --profile NAME if you use one)")
    if isinstance(exc, _botocore_classes(bx, "CredentialRetrievalError", "InfiniteLoopConfigError",
                                         "UnknownCredentialError", "InvalidConfigError", "ConfigNotFound")):
        return AwsSetupError(type(exc).__name__, f"the AWS credentials cannot be loaded: {_first_line(exc)}",
                             "check the profile's settings with `aws configure list`, then re-run")
    return _UnknownSetupError(type(exc).__name__, _first_line(exc), None)


def _botocore_classes(module: Any, *names: str) -> tuple[type, ...]:
    # Older botocore releases lack some of these (LoginTokenLoadError is recent).
    return tuple(getattr(module, name) for name in names if hasattr(module, name))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _profile_source(profile_flag: str | None) -> str:
    if profile_flag:
        return "--profile"
    return "AWS_PROFILE" if os.environ.get("AWS_PROFILE") else "AWS_DEFAULT_PROFILE"


def _aws_files() -> tuple[str, str]:
    config = os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config"
    credentials = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"
    return config, credentials


def _known_profiles() -> list[str]:
    """Profiles this machine has (empty when the files cannot be read)."""
    from botocore.exceptions import BotoCoreError

    import botocore.session

    try:
        return sorted(botocore.session.Session().available_profiles)
    except (BotoCoreError, OSError):
        return []


def _profile_not_found(name: str, profile_flag: str | None) -> AwsSetupError:
    source = _profile_source(profile_flag)
    config, credentials = _aws_files()
    known = _known_profiles()
    choices = f"profiles here: {', '.join(known)}" if known else "no profiles are configured here"
    fix = (f"create it with `aws configure --profile {name}`" if profile_flag
           else f"unset {source} to use the default credentials, or create it with `aws configure --profile {name}`")
    return AwsSetupError("ProfileNotFound", f"AWS profile '{name}' (from {source}) is not in {config} or {credentials}",
                         f"{choices}; {fix}")


def _partial_credentials(provider: str, missing: str) -> AwsSetupError:
    config, credentials = _aws_files()
    if provider == "env":
        present = "AWS_ACCESS_KEY_ID" if missing == "AWS_SECRET_ACCESS_KEY" else "AWS_SECRET_ACCESS_KEY"
        return AwsSetupError("PartialCredentials", f"{present} is set but {missing} is not",
                             f"export {missing} as well, or unset {present} to use your profile (`aws configure`)")
    where = {"shared-credentials-file": credentials, "config-file": config}.get(provider, provider or "the profile")
    return AwsSetupError("PartialCredentials", f"the AWS credentials in {where} lack {missing}",
                         f"add {missing} to that profile (`aws configure` writes both keys)")


def _unparseable_config(path: str, detail: Any) -> AwsSetupError:
    where = _config_error_line(detail)
    variable = "AWS_SHARED_CREDENTIALS_FILE" if path.endswith("credentials") else "AWS_CONFIG_FILE"
    return AwsSetupError("ConfigParseError", f"the AWS config file {path} cannot be parsed{where}",
                         f"fix it (sections look like [profile NAME] or [default], then key = value lines), "
                         f"or point {variable} at another file")


def _config_error_line(detail: Any) -> str:
    """' (line N: 'text')' from a configparser error, when it says where."""
    lineno = getattr(detail, "lineno", None)
    line = getattr(detail, "line", None)
    errors = getattr(detail, "errors", None)
    if lineno is None and errors:
        # configparser.ParsingError keeps (line number, repr of the line) pairs.
        lineno, shown = errors[0]
        line = _unrepr(shown)
    if lineno is None:
        return ""
    text = f": {str(line).strip()!r}" if line else ""
    return f" (line {lineno}{text})"


def _unrepr(text: Any) -> str:
    import ast

    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return str(text)
    return value if isinstance(value, str) else str(text)

"""The local record of what ``up`` created, and discovery of the same by tag.

The ledger (``~/.llamapod/clusters/<name>.json``) is written the moment a resource
exists, atomically (temporary file + rename), so an interrupted ``up`` never leaves a
half-written file. It is a convenience, not the source of truth: every resource also
carries the tag ``llamapod:cluster=<name>`` and ``down`` finds it by tag when the file
is gone, or when ``up`` died between creating a resource and recording it.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from llamapod import paths, validate
from llamapod.aws_names import CLUSTER_TAG, has_cluster_tag  # noqa: F401  (re-exported)
from llamapod.errors import ConfigError
LEDGER_VERSION = 1

# The kinds of resource ``up`` creates, in creation order (``down`` walks it backwards).
KINDS = ("network", "role", "bucket", "fsx", "cluster")


def ledger_path(name: str) -> Path:
    # Checked before it becomes a path: "../../x" or "a/b" must not name a file outside the state folder.
    return paths.home() / "clusters" / f"{validate.cluster_state_name(name)}.json"


class Ledger:
    """What exists for one cluster: kind -> facts (ids, names, ARNs), saved on every change."""

    def __init__(self, name: str, region: str, resources: dict[str, dict[str, Any]] | None = None,
                 created_at: str | None = None, path: Path | None = None) -> None:
        self.name = name
        self.region = region
        self.resources: dict[str, dict[str, Any]] = resources or {}
        self.created_at = created_at or _utc_now()
        self.path = path or ledger_path(name)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, name: str) -> "Ledger | None":
        path = ledger_path(name)
        if not path.exists():
            return None
        try:
            if not path.is_file():
                raise OSError(f"{path.name} is not a regular file")
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"the state file {path} is unreadable ({exc})",
                              f"delete it: `llamapod down {name}` also finds every resource by its tag") from None
        problem = state_file_problem(data)
        if problem:
            raise ConfigError(f"the state file {path} is damaged: {problem}",
                              f"delete it: `llamapod down {name}` also finds every resource by its tag")
        return cls(data["name"], data["region"], data.get("resources") or {}, data.get("created_at"), path)

    @classmethod
    def open(cls, name: str, region: str) -> "Ledger":
        """The cluster's ledger, created (and saved) if this is the first ``up``."""
        ledger = cls.load(name)
        if ledger is None:
            ledger = cls(name, region)
            ledger.save()
        return ledger

    def get(self, kind: str) -> dict[str, Any] | None:
        with self._lock:
            record = self.resources.get(kind)
            return dict(record) if record else None

    def record(self, kind: str, **facts: Any) -> None:
        """Remember (or add facts about) a resource that now exists, and save at once."""
        with self._lock:
            entry = self.resources.setdefault(kind, {"recorded_at": _utc_now()})
            entry.update({k: v for k, v in facts.items() if v is not None})
            self._save_locked()

    def forget(self, kind: str) -> None:
        with self._lock:
            if self.resources.pop(kind, None) is not None:
                self._save_locked()

    def save(self) -> None:
        with self._lock:
            self._save_locked()

    def remove_file(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def to_dict(self) -> dict[str, Any]:
        return {"version": LEDGER_VERSION, "name": self.name, "region": self.region,
                "created_at": self.created_at, "resources": self.resources}

    def _save_locked(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(self.to_dict(), handle, indent=2, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def state_file_problem(data: Any) -> str | None:
    """What is wrong with the shape of a loaded state file (None when every field has its type).

    Checked field by field because each value reaches AWS calls and paths later on,
    where a number in place of a name would fail far from its cause.
    """
    if not isinstance(data, dict):
        return f"expected a JSON object, found {_json_type(data)}"
    for key in ("name", "region"):
        if not isinstance(data.get(key), str) or not data[key]:
            return f"'{key}' must be a non-empty string, found {_json_type(data.get(key))}"
    if data.get("created_at") is not None and not isinstance(data["created_at"], str):
        return f"'created_at' must be a string, found {_json_type(data['created_at'])}"
    resources = data.get("resources")
    if resources is None:
        return None
    if not isinstance(resources, dict):
        return f"'resources' must be an object of kind -> facts, found {_json_type(resources)}"
    for kind, facts in resources.items():
        if kind not in KINDS:
            return f"'resources' has an unknown kind '{kind}' (known: {', '.join(KINDS)})"
        problem = _facts_problem(facts)
        if problem:
            return f"resources.{kind}{problem}"
    return None


def _facts_problem(facts: Any) -> str | None:
    if not isinstance(facts, dict):
        return f" must be an object of facts, found {_json_type(facts)}"
    for key, value in facts.items():
        if isinstance(value, list):
            if not all(isinstance(item, str) for item in value):
                return f".{key} must be a list of strings"
        elif not isinstance(value, str):
            return f".{key} must be a string or a list of strings, found {_json_type(value)}"
    return None


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    if value is None:
        return "nothing (null or missing)"
    return names.get(type(value), type(value).__name__)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class TaggedResource:
    """A resource found by tag: its ARN, and a short kind for messages ("ec2:vpc", "fsx:file-system")."""

    arn: str

    @property
    def service(self) -> str:
        return self.arn.split(":")[2]

    @property
    def kind(self) -> str:
        resource = self.arn.split(":", 5)[5]
        prefix = resource.split("/")[0] if "/" in resource else resource.split(":")[0]
        return f"{self.service}:{prefix}" if self.service != "s3" else "s3:bucket"

    @property
    def resource_id(self) -> str:
        resource = self.arn.split(":", 5)[5]
        return resource.split("/")[-1] if "/" in resource else resource

    def console_link(self, region: str) -> str:
        return console_link(self.arn, region)


def tagged_resources(session, name: str) -> list[TaggedResource]:
    """Every resource the Resource Groups Tagging API knows with ``llamapod:cluster=<name>``.

    IAM is not covered by that API: ``iam.find_roles`` looks roles up itself.
    """
    from llamapod.cloud.lookup import paginate

    mappings = paginate(session.client("resourcegroupstaggingapi"), "get_resources", "ResourceTagMappingList",
                        TagFilters=[{"Key": CLUSTER_TAG, "Values": [name]}])
    return [TaggedResource(mapping["ResourceARN"]) for mapping in mappings]


_CONSOLE = "https://{region}.console.aws.amazon.com"


def console_link(arn: str, region: str) -> str:
    """Where a person looks at (and can delete) the resource behind ``arn``."""
    parts = arn.split(":", 5)
    service, resource = parts[2], parts[5]
    rid = resource.split("/")[-1]
    base = _CONSOLE.format(region=region)
    if service == "ec2":
        kind = resource.split("/")[0]
        pages = {"vpc": "vpcconsole/home#VpcDetails:VpcId=", "subnet": "vpcconsole/home#SubnetDetails:subnetId=",
                 "security-group": "ec2/home#SecurityGroup:groupId=",
                 "natgateway": "vpcconsole/home#NatGatewayDetails:natGatewayId=",
                 "internet-gateway": "vpcconsole/home#InternetGateway:internetGatewayId=",
                 "route-table": "vpcconsole/home#RouteTableDetails:RouteTableId=",
                 "vpc-endpoint": "vpcconsole/home#EndpointDetails:vpcEndpointId=",
                 "elastic-ip": "ec2/home#ElasticIpDetails:AllocationId=",
                 "network-interface": "ec2/home#NetworkInterface:networkInterfaceId="}
        return f"{base}/{pages.get(kind, 'ec2/home#Home:')}{rid}?region={region}"
    if service == "fsx":
        return f"{base}/fsx/home?region={region}#file-system-details/{rid}"
    if service == "s3":
        return f"https://s3.console.aws.amazon.com/s3/buckets/{resource}?region={region}"
    if service == "cloudformation":
        return f"{base}/cloudformation/home?region={region}#/stacks/stackinfo?stackId={arn}"
    if service == "logs":
        group = resource.removeprefix("log-group:")
        return f"{base}/cloudwatch/home?region={region}#logsV2:log-groups/log-group/{quote(group, safe='')}"
    if service == "sagemaker":
        return f"{base}/sagemaker/home?region={region}#/cluster-management/{rid}"
    if service == "iam":
        kind = resource.split("/")[0]
        return f"https://console.aws.amazon.com/iam/home#/{'roles' if kind == 'role' else 'policies'}/details/{rid}"
    return f"{base}/resource-groups/tag-editor/find-resources?region={region}"

"""The ``[cluster]`` table of ``llamapod.toml``: what HyperPod cluster to build.

The models (here, and in ``llamapod.config.cluster_tables`` for the tables inside it) are
the one schema of the table: every key, default and rule is stated once, on its field.
Validation happens once, before anything is created, and reports every problem at once
(ParallelCluster-style), each phrased as the rule to follow (``llamapod.config.problems``).
Rules that join settings (an AZ in the region, unique group names) are validators over
the settings already typed. Which instance types, regions and health checks are valid is
read from botocore's own data (``llamapod.config.hyperpod_facts``), never from a list kept
in this project.

The defaults reproduce the seed guide: us-east-1, a ``controller-machine`` group of one
ml.c5.xlarge, a ``worker-group-1`` group of four ml.g5.48xlarge, ThreadsPerCore 1 and a
1200 GiB PERSISTENT_2 FSx for Lustre file system.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, Field, ValidationError, ValidationInfo, ValidatorFunctionWrapHandler,
                      field_validator)

from llamapod import validate
from llamapod.aws_names import partition_of
from llamapod.config.cluster_tables import (MAX_USER_TAGS, AccountingSpec, ClusterName, ControllerGroupSpec,
                                            FsxSpec, InstanceGroupSpec, LinuxUser, NetworkSpec, SharedUserSpec,
                                            TagKey, TagValue, WorkerGroupSpec, TomlTable)
from llamapod.config.hyperpod_facts import deep_health_check_types, hyperpod_instance_types, known_regions
from llamapod.config.problems import broken_rule, closest, full_match, problem, problems, raise_all
from llamapod.errors import ConfigError
from llamapod.instances import has_accelerators
from llamapod.lifecycle import provisioning

# What other modules import from here: the cluster's models, how to load them, and names they use.
__all__ = ["AccountingSpec", "ClusterSpec", "ControllerGroupSpec", "DEFAULT_REGION", "FsxSpec",
           "InstanceGroupSpec", "LIFECYCLE_PREFIX", "NetworkSpec", "SharedUserSpec", "WorkerGroupSpec",
           "apply_overrides", "hyperpod_instance_types", "load_cluster_spec", "partition_of", "spec_from_table",
           "validate_cluster_table"]

AZ_NAME_RE = re.compile(r"(?P<region>[a-z]{2}(-[a-z]+)+-\d+)[a-z]")
AZ_ID_RE = re.compile(r"[a-z]{2,5}\d+-az\d+")

DEFAULT_NAME = "ml-4-g5-48x-cluster"
DEFAULT_REGION = "us-east-1"
LIFECYCLE_PREFIX = "src"  # the seed uploads lifecycle scripts to s3://<bucket>/src
REGION_OFFERED_RULE = "must be a region where SageMaker is available, e.g. us-east-1"


# ---- the cluster -----------------------------------------------------------------------


def _az_shape(zone: str) -> str:
    if not (AZ_ID_RE.fullmatch(zone) or AZ_NAME_RE.fullmatch(zone)):
        raise ValueError("neither an AZ name nor an AZ ID")
    return zone


def _seed_controller() -> ControllerGroupSpec:
    return ControllerGroupSpec(name="controller-machine", instance_type="ml.c5.xlarge", count=1)


def _seed_workers() -> tuple[WorkerGroupSpec, ...]:
    return (WorkerGroupSpec(name="worker-group-1", instance_type="ml.g5.48xlarge", count=4),)


class ClusterSpec(TomlTable):
    """A validated ``[cluster]`` table. Build it with ``load_cluster_spec``."""

    name: ClusterName = DEFAULT_NAME
    region: Annotated[str, full_match(validate.REGION)] = Field(DEFAULT_REGION, description=validate.REGION_RULE)
    availability_zone: Annotated[str, AfterValidator(_az_shape)] | None = Field(
        None, description="must be an AZ name such as us-east-1a or an AZ ID such as use1-az4")
    controller: ControllerGroupSpec = Field(default_factory=_seed_controller)
    login: InstanceGroupSpec | None = None
    workers: tuple[WorkerGroupSpec, ...] = Field(
        default_factory=_seed_workers, min_length=1, strict=False, validate_default=True,
        description="must be a non-empty list of worker groups ([[cluster.workers]])")
    threads_per_core: int = Field(1, ge=1, le=2, description="must be 1 or 2 (1 turns hyperthreading off)")
    ebs_volume_gb: int | None = Field(None, ge=1, le=16384,  # extra EBS volume per node (at /opt/sagemaker)
                                      description="must be a whole number of GB from 1 to 16384")
    deep_health_checks: tuple[str, ...] = Field((), strict=False)
    node_recovery: Literal["Automatic", "None"] = Field("Automatic", description="must be Automatic or None")
    fsx: FsxSpec = Field(default_factory=FsxSpec)
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    tags: dict[TagKey, TagValue] = Field(default_factory=dict, max_length=MAX_USER_TAGS,
                                         description=f"must be at most {MAX_USER_TAGS} tags (AWS takes 50 on a "
                                                     f"resource and llamapod adds 2)")
    cluster_user: LinuxUser = provisioning.DEFAULT_CLUSTER_USER
    shared_users: tuple[SharedUserSpec, ...] = Field((), strict=False,
                                                     description="must be a list of {name, uid} tables")
    containers: bool = Field(False, description="must be true or false")  # Docker, enroot, pyxis off the root volume
    accounting: AccountingSpec | None = None

    @field_validator("region")
    @classmethod
    def _sagemaker_offered(cls, region: str) -> str:
        if region not in known_regions():
            raise broken_rule(REGION_OFFERED_RULE, region, hint=closest(region, sorted(known_regions())))
        return region

    @field_validator("availability_zone")
    @classmethod
    def _in_the_region(cls, zone: str | None, info: ValidationInfo) -> str | None:
        match = AZ_NAME_RE.fullmatch(zone) if zone is not None else None
        region = info.data.get("region")
        if match is not None and region is not None and match.group("region") != region:
            raise broken_rule(f"must be in cluster.region {region}", zone)
        return zone

    @field_validator("workers")
    @classmethod
    def _group_names_unique(cls, workers: tuple[WorkerGroupSpec, ...],
                            info: ValidationInfo) -> tuple[WorkerGroupSpec, ...]:
        groups = [info.data.get("controller"), info.data.get("login"), *workers]
        seen: set[str] = set()
        repeats = []
        for name in (group.name for group in groups if group is not None):
            if name in seen:
                repeats.append(((), problem(f"instance group names must be unique across controller, login and "
                                            f"workers (got {name!r} twice)"), name))
            seen.add(name)
        raise_all(repeats)
        return workers

    @field_validator("deep_health_checks", mode="wrap")
    @classmethod
    def _known_and_distinct(cls, checks: Any, typed: ValidatorFunctionWrapHandler) -> tuple[str, ...]:
        # The valid checks come from botocore, so the rule is worded here, type errors included.
        known = deep_health_check_types()
        rule = f"must be a list of distinct values from {', '.join(known)}"
        try:
            found = typed(checks)
        except ValidationError:
            raise broken_rule(rule, checks) from None
        if any(check not in known for check in found) or len(set(found)) != len(found):
            raise broken_rule(rule, checks)
        return found

    @field_validator("deep_health_checks")
    @classmethod
    def _connectivity_has_a_group(cls, checks: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        """InstanceConnectivity tests links between a group's instances: HyperPod needs 2 or more
        (SageMaker developer guide, "Deep health checks"). ``plan`` asks for it only on accelerator
        groups of 2 or more; a cluster with none of those could never run it."""
        if "InstanceConnectivity" not in checks or "workers" not in info.data:
            return checks
        groups = [*info.data["workers"], *([info.data["login"]] if info.data.get("login") else [])]
        if not any(has_accelerators(g.instance_type) and g.count >= 2 for g in groups):
            raise problem("cluster.deep_health_checks: InstanceConnectivity needs a GPU or Trainium group of at "
                          "least 2 instances, and no group has that; remove it or raise a group's count")
        return checks

    @field_validator("tags")
    @classmethod
    def _keys_distinct_ignoring_case(cls, tags: dict[str, str]) -> dict[str, str]:
        """IAM tag keys are case-insensitive: CreateRole refuses two keys that differ only in case
        (IAM user guide, "Tagging IAM resources": "tag keys are case insensitive")."""
        seen: dict[str, str] = {}
        for key in tags:
            if key.lower() in seen:
                raise problem(f"cluster.tags keys must differ in more than letter case: IAM treats "
                              f"'{seen[key.lower()]}' and '{key}' as one key")
            seen[key.lower()] = key
        return tags

    @field_validator("shared_users")
    @classmethod
    def _users_distinct(cls, users: tuple[SharedUserSpec, ...], info: ValidationInfo) -> tuple[SharedUserSpec, ...]:
        names, uids, repeats = [info.data.get("cluster_user")], [], []
        for i, user in enumerate(users):
            if user.name in names:
                repeats.append(((i, "name"), broken_rule("must differ from cluster.cluster_user and the other "
                                                         "shared users", user.name), user.name))
            if user.uid in uids:
                repeats.append(((i, "uid"), broken_rule("must differ from the other shared users' uids", user.uid),
                                user.uid))
            names.append(user.name)
            uids.append(user.uid)
        raise_all(repeats)
        return users

    @property
    def instance_groups(self) -> list[InstanceGroupSpec]:
        """Every group in create_cluster order: controller, login (if any), workers."""
        groups: list[InstanceGroupSpec] = [self.controller]
        if self.login is not None:
            groups.append(self.login)
        groups.extend(self.workers)
        return groups

    @property
    def availability_zone_kind(self) -> Literal["id", "name"] | None:
        if self.availability_zone is None:
            return None
        return "id" if AZ_ID_RE.fullmatch(self.availability_zone) else "name"

    def instance_counts(self) -> dict[str, int]:
        """Instances requested per type, summed over groups (what quotas are checked against)."""
        counts: dict[str, int] = {}
        for group in self.instance_groups:
            counts[group.instance_type] = counts.get(group.instance_type, 0) + group.count
        return counts

    @property
    def total_instances(self) -> int:
        return sum(group.count for group in self.instance_groups)

    @property
    def instance_types(self) -> list[str]:
        """Every group's type, once each: the network's AZ must offer all of them."""
        return sorted({group.instance_type for group in self.instance_groups})


# ---- building the spec ------------------------------------------------------------


def validate_cluster_table(table: Any) -> list[str]:
    """Every problem in a raw ``[cluster]`` table, each phrased as the rule to follow."""
    try:
        ClusterSpec.model_validate(table)
    except ValidationError as exc:
        return problems(exc, ClusterSpec, table, root="cluster")
    return []


def spec_from_table(table: Any) -> ClusterSpec:
    """Validate a raw table and build the spec; ConfigError lists every problem."""
    try:
        return ClusterSpec.model_validate(table)
    except ValidationError as exc:
        found = problems(exc, ClusterSpec, table, root="cluster")
    count = f"{len(found)} problem{'s' if len(found) > 1 else ''}"
    raise ConfigError(f"the [cluster] settings have {count}: {found[0]}"
                      if len(found) == 1 else f"the [cluster] settings have {count}",
                      "fix them in llamapod.toml (or the flags), then re-run", problems=found)


def _seed_worker_tables() -> list[dict[str, Any]]:
    # Only what the seed sets: a partition left out still follows the instance type a flag sets.
    return [group.model_dump(exclude_unset=True) for group in _seed_workers()]


def apply_overrides(table: dict, overrides: dict[str, Any]) -> dict:
    """Flags on top of the file. ``worker_type``/``workers`` set the first worker group."""
    merged = dict(table)
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("worker_type", "workers"):
            groups = merged.get("workers", _seed_worker_tables())
            if isinstance(groups, list) and groups and isinstance(groups[0], dict):
                first = dict(groups[0])
                first["instance_type" if key == "worker_type" else "count"] = value
                merged["workers"] = [first] + list(groups[1:])
        else:
            merged[key] = value
    return merged


def load_cluster_spec(path: str | Path | None, overrides: dict[str, Any] | None = None) -> ClusterSpec:
    """The ``[cluster]`` table of ``path`` (the seed's defaults when None) with ``overrides``.

    The region is, in order: ``overrides["region"]`` (--region), the file's ``region``,
    ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, then us-east-1.

    ``overrides`` maps top-level keys (``name``, ``region``, ``availability_zone``, ...) to
    values from flags; ``worker_type`` and ``workers`` set the first worker group's instance
    type and count. None values are ignored.
    """
    from llamapod.config.files import load_table

    table = load_table(path, "cluster") if path is not None else {}
    if "region" not in table:
        # The standard AWS settings come between the file and the seed's us-east-1.
        env_region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if env_region:
            table = {**table, "region": env_region}
    return spec_from_table(apply_overrides(table, overrides or {}))

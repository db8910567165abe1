"""The tables inside ``[cluster]``: instance groups, FSx, network, users, accounting, tags.

Each model states its keys, defaults and rules once, on its fields (the rule in words is the
field's ``description``, see ``llamapod.config.problems``); a rule joining two settings of a
table is a validator over the settings already typed.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal, get_args

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError,
                      ValidationInfo, ValidatorFunctionWrapHandler, field_validator, model_validator)

from llamapod import validate
from llamapod.aws_names import RESERVED_TAG_PREFIXES, TAG_PUNCTUATION, tag_text_ok
from llamapod.config.hyperpod_facts import hyperpod_instance_types
from llamapod.config.problems import broken_rule, closest, full_match, problem, raise_all, rule_of
from llamapod.lifecycle import provisioning

MAX_GROUP_INSTANCES = 6758  # InstanceCount's maximum in the SageMaker service model
INSTANCE_TYPE_RULE = "must be an instance type HyperPod offers, e.g. ml.g5.48xlarge"
TAG_CHARACTERS = f"letters, digits, spaces and {' '.join(TAG_PUNCTUATION)}"


class TomlTable(BaseModel):
    """A table of llamapod.toml: no unknown keys, and no coercion (true is not 1, "4" is not 4)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


# ---- instance groups -------------------------------------------------------------


def _offered_by_hyperpod(value: str) -> str:
    offered = hyperpod_instance_types()
    if value not in offered:
        hint = f"; did you mean ml.{value}?" if f"ml.{value}" in offered else closest(value, offered)
        raise broken_rule(INSTANCE_TYPE_RULE, value, hint=hint)
    return value


# The ClusterName / InstanceGroupName pattern of the SageMaker API (1-63 characters).
ClusterName = Annotated[str, Field(max_length=validate.CLUSTER_NAME_MAX, description=validate.CLUSTER_NAME_RULE),
                        full_match(validate.CLUSTER_NAME)]
InstanceType = Annotated[str, Field(description=INSTANCE_TYPE_RULE), AfterValidator(_offered_by_hyperpod)]


class InstanceGroupSpec(TomlTable):
    name: ClusterName
    instance_type: InstanceType
    count: int = Field(1, ge=1, le=MAX_GROUP_INSTANCES,
                       description=f"must be a whole number from 1 to {MAX_GROUP_INSTANCES}")


class ControllerGroupSpec(InstanceGroupSpec):
    count: int = Field(1, ge=1, le=1, description="must be 1: Slurm runs one controller node")


class WorkerGroupSpec(InstanceGroupSpec):
    # Slurm partition the group's nodes join; the seed names it after the instance type.
    partition: Annotated[str, full_match(validate.SLURM_NAME)] = Field(
        # Without a valid instance type the group is refused anyway: "" is never seen.
        default_factory=lambda settings: settings.get("instance_type", ""),
        description="must be 1-64 letters, digits, dots, hyphens or underscores, starting with a letter or digit")


# ---- FSx for Lustre ----------------------------------------------------------------

FsxDeploymentType = Literal["PERSISTENT_2", "PERSISTENT_1", "SCRATCH_2", "SCRATCH_1"]
FSX_DEPLOYMENT_TYPES = get_args(FsxDeploymentType)
# MB/s per TiB each PERSISTENT type takes (FSx API reference, LustreConfiguration
# PerUnitStorageThroughput); SCRATCH types take none.
FSX_THROUGHPUT = {"PERSISTENT_2": (125, 250, 500, 1000), "PERSISTENT_1": (50, 100, 200)}
FSX_DEFAULT_THROUGHPUT = {"PERSISTENT_2": 250}  # the seed's


def _capacity_rule(kind: str, capacity: int) -> str | None:
    """The StorageCapacity rule a capacity breaks for a deployment type (FSx API reference,
    CreateFileSystem): SSD types take 1200, 2400, then multiples of 2400; SCRATCH_1 takes
    1200, 2400, then multiples of 3600."""
    if kind == "SCRATCH_1":
        fits = capacity > 0 and (capacity in (1200, 2400) or capacity % 3600 == 0)
        return None if fits else "must be 1200, 2400 or a multiple of 3600 for SCRATCH_1"
    fits = capacity > 0 and (capacity == 1200 or capacity % 2400 == 0)
    return None if fits else f"must be 1200 or a multiple of 2400 for {kind}"


def _throughput_rule(kind: str) -> str:
    allowed = FSX_THROUGHPUT.get(kind)
    if allowed is None:
        return f"must not be set for {kind} (only PERSISTENT file systems take it)"
    return f"must be one of {', '.join(map(str, allowed))} for {kind}"


class FsxSpec(TomlTable):
    capacity_gib: int = Field(1200, description="must be a whole number of GiB: 1200 or a multiple of 2400 "
                                                "(SCRATCH_1: 1200, 2400 or a multiple of 3600)")
    deployment_type: FsxDeploymentType = Field(
        "PERSISTENT_2", description=f"must be one of {', '.join(FSX_DEPLOYMENT_TYPES)}")
    throughput_per_tib: int | None = Field(  # MB/s per TiB
        default_factory=lambda settings: FSX_DEFAULT_THROUGHPUT.get(settings.get("deployment_type")),
        validate_default=True, description="must be a whole number of MB/s per TiB for a PERSISTENT deployment "
                                           "type, or unset")
    compression: Literal["LZ4", "NONE"] = Field("LZ4", description="must be LZ4 or NONE")

    @model_validator(mode="after")
    def _capacity_fits_the_deployment_type(self) -> "FsxSpec":
        rule = _capacity_rule(self.deployment_type, self.capacity_gib)
        if rule:
            raise_all([(("capacity_gib",), broken_rule(rule, self.capacity_gib), self.capacity_gib)])
        return self

    @field_validator("throughput_per_tib", mode="wrap")
    @classmethod
    def _offered_by_the_deployment_type(cls, value: Any, typed: ValidatorFunctionWrapHandler,
                                        info: ValidationInfo) -> int | None:
        kind = info.data.get("deployment_type")
        if kind is None:  # a wrong deployment type is reported as such
            return typed(value)
        try:
            throughput = typed(value)
        except ValidationError:
            raise broken_rule(_throughput_rule(kind), value) from None
        if throughput not in FSX_THROUGHPUT.get(kind, (None,)):  # SCRATCH types take none
            raise broken_rule(_throughput_rule(kind), value)
        return throughput


# ---- network -----------------------------------------------------------------------


def _cidr_block(value: str) -> str:
    network = ipaddress.IPv4Network(value, strict=True)  # its ValueError reads as the field's rule
    if not 16 <= network.prefixlen <= 28:
        raise ValueError("a VPC or subnet takes /16 to /28")
    return value


CidrBlock = Annotated[str, Field(description="must be an IPv4 CIDR block from /16 to /28 with no host bits set, "
                                             "e.g. 10.1.0.0/16"),
                      AfterValidator(_cidr_block)]


class NetworkSpec(TomlTable):
    vpc_cidr: CidrBlock = "10.1.0.0/16"
    public_subnet_cidr: CidrBlock = Field("10.1.0.0/24", validate_default=True)
    # Large on purpose: every EFA interface of every node takes an address here.
    private_subnet_cidr: CidrBlock = Field("10.1.128.0/17", validate_default=True)

    @field_validator("public_subnet_cidr", "private_subnet_cidr")
    @classmethod
    def _inside_the_vpc(cls, subnet: str, info: ValidationInfo) -> str:
        vpc = info.data.get("vpc_cidr")
        if vpc is not None and not ipaddress.IPv4Network(subnet).subnet_of(ipaddress.IPv4Network(vpc)):
            raise broken_rule(f"must lie inside cluster.network.vpc_cidr {vpc}", subnet)
        return subnet

    @field_validator("private_subnet_cidr")
    @classmethod
    def _apart_from_the_public_subnet(cls, private: str, info: ValidationInfo) -> str:
        public = info.data.get("public_subnet_cidr")
        if public is not None and ipaddress.IPv4Network(public).overlaps(ipaddress.IPv4Network(private)):
            raise problem(f"cluster.network.public_subnet_cidr and private_subnet_cidr must not overlap "
                          f"(got '{public}' and '{private}')")
        return private


# ---- users and accounting ------------------------------------------------------------

# The nodes apply the same rules before writing /etc/passwd and slurmdbd.conf
# (llamapod.lifecycle.provisioning): checked here before anything is created.
LinuxUser = Annotated[str, BeforeValidator(rule_of(lambda value: provisioning.rule_problem("user", value)))]


class SharedUserSpec(TomlTable):
    """A user besides the cluster user, with a fixed uid so files on /fsx have one owner everywhere."""

    name: LinuxUser
    uid: Annotated[int, BeforeValidator(rule_of(provisioning.uid_problem))]


class AccountingSpec(TomlTable):
    """Slurm accounting: slurmdbd on the controller against this MySQL/MariaDB database."""

    storage_host: str
    storage_user: str
    storage_pass: str = Field(repr=False)
    storage_port: int = provisioning.DEFAULT_STORAGE_PORT
    storage_loc: str = provisioning.DEFAULT_STORAGE_LOC

    @field_validator("*", mode="before")
    @classmethod
    def _as_the_node_requires(cls, value: Any, info: ValidationInfo) -> Any:
        rule = provisioning.accounting_value_problem(info.field_name, value)
        if rule:
            raise broken_rule(f"must be {rule}", value, secret=info.field_name == "storage_pass")
        return value


# ---- tags ----------------------------------------------------------------------------


def _tag_text(value: str) -> str:
    if not tag_text_ok(value):
        raise ValueError("a character outside the tag character set")
    return value


def _tag_key(key: str) -> str:
    if key.lower().startswith(RESERVED_TAG_PREFIXES):
        raise ValueError("a reserved prefix")
    return _tag_text(key)


# Every service llamapod tags takes at most 50 tags on a resource (the TagList/Tags shapes of the
# SageMaker, FSx, IAM and CloudFormation models: max 50; S3 and EC2: 50 per resource, their user
# guides). llamapod adds two of its own to some resources: llamapod:cluster everywhere, and Name on
# the file system and the network stack's resources.
MAX_USER_TAGS = 48

# The Tag Key/Value shapes of the SageMaker, IAM and FSx models; 1, not 0, for values:
# CloudFormation's stack tags refuse an empty value (TagValue, min 1).
TagKey = Annotated[str, Field(min_length=1, max_length=128,
                              description=f"must be 1-128 {TAG_CHARACTERS} and not start with "
                                          f"{' or '.join(RESERVED_TAG_PREFIXES)}"),
                   AfterValidator(_tag_key)]
TagValue = Annotated[str, Field(min_length=1, max_length=256, description=f"must be 1-256 {TAG_CHARACTERS}"),
                     AfterValidator(_tag_text)]

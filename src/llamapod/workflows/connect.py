"""From a cluster name to a Shell on one of its nodes.

For a HyperPod cluster: describe it (must be InService), list its nodes, pick one
(the controller by default), and reach it with ssh through an SSM ProxyCommand as
the cluster user, installing the user's key there on first use. The ``[remote]`` table
of llamapod.toml can instead name a host to ssh to directly (any Slurm head node, or
the test suite's sshd), in which case AWS is not consulted at all.

```toml
[remote]
host = "10.0.0.5"          # ssh here instead of through SSM
port = 22
user = "ubuntu"
identity_file = "~/.ssh/id_ed25519"
fsx_root = "/fsx"          # the shared file system the run and its environment live on
base_python = "python3"    # interpreter the cluster's virtual environment is made from
system_site_packages = false
pip_no_index = false       # install only from what base_python already has (offline)
pip_args = []              # e.g. ["--extra-index-url", "https://download.pytorch.org/whl/cu126"]
wheel = "dist/llamapod-0.1.0-py3-none-any.whl"   # optional: install this wheel instead of building one
```
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llamapod import paths, report, validate
from llamapod.config.files import default_config_path, display_path, format_validation_errors, load_table
from llamapod.errors import ClusterStateError, ConfigError
from llamapod.remote.ssh import SshAuthError, SshShell, SshTarget

log = logging.getLogger(__name__)

DEFAULT_CONTROLLER_GROUP = "controller-machine"
# HyperPod keeps Slurm here; non-interactive ssh sessions do not source the profile that adds it.
HYPERPOD_PATH = ("/opt/slurm/bin",)


class RemoteSettings(BaseModel):
    """The ``[remote]`` table.

    Strict types: in TOML ``port = true`` or ``pip_no_index = 1`` is a mistake, not a
    number or a flag. Every string that reaches ssh, a shell or ``~/.ssh/config`` is
    checked by ``llamapod.validate``.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    host: Optional[str] = Field(None, description="ssh to this host directly instead of through SSM")
    port: int = Field(22, ge=1, le=65535)
    user: Optional[str] = None
    identity_file: Optional[str] = None
    ssh_config_file: Optional[str] = None
    fsx_root: str = "/fsx"
    base_python: str = "python3"
    system_site_packages: bool = False
    pip_no_index: bool = False
    pip_args: list[str] = Field(default_factory=list)
    wheel: Optional[str] = Field(None, description="a prebuilt llamapod wheel to install instead of building one")
    controller_group: Optional[str] = None
    region: Optional[str] = None
    profile: Optional[str] = None

    @field_validator("host")
    @classmethod
    def _host(cls, value: Optional[str]) -> Optional[str]:
        return _checked(validate.host_problem, value)

    @field_validator("user")
    @classmethod
    def _user(cls, value: Optional[str]) -> Optional[str]:
        return _checked(validate.login_user_problem, value)

    @field_validator("identity_file", "ssh_config_file", "wheel", "base_python")
    @classmethod
    def _path(cls, value: Optional[str]) -> Optional[str]:
        return _checked(validate.path_problem, value)

    @field_validator("fsx_root")
    @classmethod
    def _fsx_root(cls, value: str) -> str:
        # Run folders under it appear on #SBATCH lines, which sbatch parses without quoting.
        return _checked(validate.absolute_path_problem, value)

    @field_validator("pip_args")
    @classmethod
    def _pip_args(cls, value: list[str]) -> list[str]:
        for arg in value:
            _checked(validate.text_problem, arg)
        return value

    @field_validator("controller_group")
    @classmethod
    def _group(cls, value: Optional[str]) -> Optional[str]:
        return _checked(validate.cluster_name_problem, value)

    @field_validator("region")
    @classmethod
    def _region(cls, value: Optional[str]) -> Optional[str]:
        return _checked(validate.region_problem, value)

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: Optional[str]) -> Optional[str]:
        return _checked(validate.aws_profile_problem, value)


def _checked(check, value):
    """``value`` when ``check`` finds nothing (None passes), else pydantic's ValueError with the rule."""
    problem = check(value) if value is not None else None
    if problem:
        raise ValueError(problem)
    return value


def load_remote_settings(config_path: Path | None) -> RemoteSettings:
    table = load_table(config_path, "remote")
    shown = display_path(config_path) if config_path is not None else "(none)"
    _refuse_unknown_keys(table, shown)
    try:
        return RemoteSettings(**table)
    except ValidationError as exc:
        problems = format_validation_errors(exc, "remote.")
        raise ConfigError(f"config file {shown}: the [remote] table is not valid: {problems[0]}",
                          "fix the [remote] table (see docs/remote.md)", problems=problems[1:]) from None


def _refuse_unknown_keys(table: dict[str, Any], shown: str) -> None:
    known = list(RemoteSettings.model_fields)
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            suggestion = f"; did you mean {close[0]}?" if close else ""
            name = key if str(key).isidentifier() else repr(key)
            raise ConfigError(f"config file {shown}: the [remote] table is not valid: remote.{name}: not a setting "
                              f"llamapod knows{suggestion}", f"the [remote] settings are: {', '.join(known)}")


@dataclass(frozen=True)
class Node:
    """One node of a cluster, with every name a user may call it by."""

    instance_id: str
    group: str
    status: str
    private_ip: str | None = None

    @property
    def hostname(self) -> str | None:
        # Slurm on HyperPod names nodes by their EC2 private DNS label: ip-10-1-2-3.
        return f"ip-{self.private_ip.replace('.', '-')}" if self.private_ip else None

    def names(self) -> tuple[str, ...]:
        return tuple(n for n in (self.instance_id, self.hostname, self.private_ip) if n)


@dataclass
class ClusterAccess:
    """Everything needed to reach a cluster's nodes."""

    name: str
    settings: RemoteSettings
    user: str
    controller_group: str
    cluster_arn: str | None = None
    region: str | None = None
    profile: str | None = None
    nodes: list[Node] = field(default_factory=list)
    # Instance groups as describe_cluster reports them (name, type, current count).
    groups: list[dict] = field(default_factory=list)
    login_group: str | None = None

    @property
    def via_ssm(self) -> bool:
        return self.settings.host is None

    @property
    def fsx_root(self) -> str:
        return self.settings.fsx_root

    def pick(self, node: str | None = None) -> Node:
        """The node named ``node``: an instance group (its first running node), id, hostname or IP."""
        if not self.via_ssm:
            if node in (None, self.controller_group, "controller", self.settings.host):
                return Node(instance_id=self.settings.host or "head", group=self.controller_group, status="Running")
            raise ConfigError(f"no node {validate.shown(node)} here: remote.host {self.settings.host} is the only "
                              "node llamapod reaches", "drop the node name, or remove [remote] host to reach nodes through SSM")
        wanted = node or self.controller_group
        in_group = [n for n in self.nodes if n.group == wanted]
        if in_group:
            running = [n for n in in_group if n.status == "Running"]
            return (running or in_group)[0]
        for candidate in self.nodes:
            if wanted in candidate.names():
                return candidate
        if node is None:
            groups = sorted({n.group for n in self.nodes})
            raise ConfigError(f"cluster {self.name} has no instance group '{wanted}' to use as the head node",
                              f"set remote.controller_group to one of: {', '.join(groups) or '(no nodes)'}")
        choices = sorted({n.group for n in self.nodes}) + [n.instance_id for n in self.nodes]
        raise ConfigError(f"cluster {self.name} has no node {validate.shown(node)}",
                          f"name an instance group, instance id or hostname: {', '.join(choices) or '(no nodes)'}")

    def worker_groups(self) -> list[dict]:
        """The instance groups Slurm jobs run on: all but the controller and login groups."""
        return [g for g in self.groups if g["name"] not in (self.controller_group, self.login_group)]

    def target_for(self, node: Node, *, label: str | None = None) -> SshTarget:
        known_hosts = cluster_state_dir(self.name) / "known_hosts"
        identity = identity_file(self.settings)
        where = label or f"{self.user}@{self.name}:{node.group}"
        if not self.via_ssm:
            return SshTarget(host=self.settings.host or "", port=self.settings.port, user=self.user,
                             identity_file=identity, known_hosts=known_hosts, host_key_alias=None,
                             config_file=self.settings.ssh_config_file, label=label or f"{self.user}@{self.settings.host}")
        from llamapod.cloud.access import proxy_command, ssm_target

        target = ssm_target(self.cluster_arn or "", node.group, node.instance_id)
        return SshTarget(host=target, port=22, user=self.user, identity_file=identity,
                         proxy_command=proxy_command(target, region=self.region, profile=self.profile),
                         host_key_alias=node.instance_id, known_hosts=known_hosts,
                         config_file=self.settings.ssh_config_file, extra_path=HYPERPOD_PATH, label=where)


def cluster_state_dir(name: str) -> Path:
    # The name is checked before it becomes a path: "../../x" must not reach outside the state folder.
    return paths.home() / "clusters" / validate.cluster_state_name(name)


def identity_file(settings: RemoteSettings) -> Path:
    from llamapod.cloud.access import find_or_create_identity

    if settings.identity_file:
        path = Path(settings.identity_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"remote.identity_file {path} does not exist",
                              "point it at your private key, or remove it to use ~/.ssh/id_ed25519")
        return path
    return find_or_create_identity(Path.home() / ".ssh", paths.home() / "ssh")


def _cluster_table(config_path: Path | None, name: str) -> dict[str, Any]:
    table = load_table(config_path, "cluster")
    return table if table.get("name") in (None, name) else {}


def resolve_cluster(name: str, config_path: Path | None = None, *, with_ips: bool = False) -> ClusterAccess:
    """Describe the cluster (unless [remote] names a host) and gather what reaching it needs.

    ``with_ips`` also looks up each node's private address (one call per node), for
    hostnames such as ip-10-1-2-3 in ssh config entries and node names.
    """
    validate.cluster_state_name(name)
    config_path = config_path if config_path is not None else default_config_path()
    settings = load_remote_settings(config_path)
    cluster = _cluster_table(config_path, name)
    controller = settings.controller_group or _group_name(cluster, "controller") or DEFAULT_CONTROLLER_GROUP
    user = settings.user or _cluster_setting(cluster, "cluster_user", validate.linux_user_problem) or "ubuntu"
    access = ClusterAccess(name=name, settings=settings, user=user, controller_group=controller,
                           region=settings.region or _cluster_setting(cluster, "region", validate.region_problem),
                           profile=settings.profile, login_group=_group_name(cluster, "login"))
    if access.via_ssm:
        _describe_from_aws(access, with_ips=with_ips)
    return access


def _cluster_setting(table: dict[str, Any], key: str, check, where: str = "cluster") -> Any:
    """One value of the raw [cluster] table, checked before it reaches ssh (the table itself is
    validated in full only by the commands that build a cluster)."""
    value = table.get(key)
    if value is not None:
        validate.require(check(value), value, f"{where}.{key}", f"fix {where}.{key} in llamapod.toml")
    return value


def _group_name(cluster: dict[str, Any], group: str) -> str | None:
    table = cluster.get(group)
    if not isinstance(table, dict):
        return None
    return _cluster_setting(table, "name", validate.cluster_name_problem, f"cluster.{group}")


def _describe_from_aws(access: ClusterAccess, *, with_ips: bool) -> None:
    from llamapod.cloud.hyperpod import describe_cluster, list_nodes
    from llamapod.cloud.session import AwsSession

    session = AwsSession(region=access.region, profile=access.profile)
    description = describe_cluster(session, access.name)
    status = description.get("ClusterStatus")
    if status != "InService":
        raise ClusterStateError(f"cluster {access.name} is {status}, not InService",
                                _not_in_service_hint(access.name, status))
    access.cluster_arn = description["ClusterArn"]
    access.region = session.region
    access.groups = [{"name": g.get("InstanceGroupName"), "instance_type": g.get("InstanceType"),
                      "count": g.get("CurrentCount", g.get("TargetCount", 0))}
                     for g in description.get("InstanceGroups", [])]
    access.nodes = [_node_from(entry) for entry in list_nodes(session, access.name, with_ips=with_ips)]


def _not_in_service_hint(name: str, status: str | None) -> str:
    if status in ("Creating", "Updating", "SystemUpdating", "RollingBack"):
        return f"wait for it: `llamapod status` shows progress (`llamapod up` resumes a create)"
    if status == "Failed":
        return "`llamapod status` shows AWS's failure message; `llamapod down` then `llamapod up` recreates it"
    return f"`llamapod status` shows the cluster; `llamapod up` creates {name}"


def _node_from(entry: dict) -> Node:
    status = entry.get("Status")
    if status is None:
        status = (entry.get("InstanceStatus") or {}).get("Status", "Unknown")
    ip = entry.get("PrivateIp") or entry.get("PrivatePrimaryIp")
    if ip:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            ip = None
    return Node(instance_id=entry["InstanceId"], group=entry["InstanceGroupName"], status=status, private_ip=ip)


def connect(access: ClusterAccess, node: str | None = None, *, install_key: bool = True) -> SshShell:
    """An SshShell on the node, connection checked; the user's key is installed via SSM when refused."""
    picked = access.pick(node)
    if picked.status != "Running":
        report.warn(f"node {picked.instance_id} ({picked.group}) is {picked.status}, not Running: "
                "the connection may fail (`llamapod status` shows the nodes)")
    target = access.target_for(picked)
    if access.via_ssm:
        from llamapod.cloud.access import check_ssm_tools

        check_ssm_tools()
    shell = SshShell(target, control_dir=_control_dir())
    try:
        shell.run(["true"], timeout=120)
    except SshAuthError as refused:
        if not access.via_ssm:
            pub = f"{target.identity_file}.pub"
            raise SshAuthError(refused.message, f"add {pub} to ~{access.user}/.ssh/authorized_keys on "
                               f"{access.settings.host} (e.g. `ssh-copy-id -i {pub} -p {access.settings.port} "
                               f"{access.user}@{access.settings.host}`), or set remote.identity_file") from None
        if not install_key:
            raise
        _install_key(access, picked, target)
        shell.run(["true"], timeout=120)
    return shell


def _install_key(access: ClusterAccess, node: Node, target: SshTarget) -> None:
    from llamapod.cloud.access import public_key_of, push_key_via_ssm

    report.step(f"installing your SSH key for {access.user} on {access.name} ({node.group}) through SSM")
    outcome = push_key_via_ssm(target.host, access.user, public_key_of(identity_file(access.settings)),
                               region=access.region, profile=access.profile)
    log.debug(f"key on {node.instance_id}: {outcome}")


def _control_dir() -> Path:
    # A stable place lets the next llamapod command reuse a live master connection
    # (ControlPersist); short, because Unix socket paths are limited to ~100 bytes.
    directory = paths.home() / "cm"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if len(str(directory)) > 70:
        import tempfile

        return Path(tempfile.mkdtemp(prefix="llp-ssh-"))
    return directory


def shell_for_cluster(name: str, config_path: Path | None = None, node: str | None = None) -> SshShell:
    """A Shell on the cluster's head node (or ``node``), for Slurm and file operations."""
    access = resolve_cluster(name, config_path)
    return connect(access, node)


def ssh_config_entries(access: ClusterAccess) -> list:
    """``Host`` entries for ~/.ssh/config: the cluster name for its head node, then one per node."""
    from llamapod.cloud.access import SshHostEntry

    head = access.pick(None)
    entries = [SshHostEntry((access.name, f"{access.name}-{head.group}"), _entry_options(access, head))]
    if access.via_ssm:
        for node in sorted(access.nodes, key=lambda n: (n.group, n.instance_id)):
            aliases = [f"{access.name}-{node.group}-{node.instance_id}"]
            if node.hostname:
                aliases.append(f"{access.name}-{node.hostname}")
            entries.append(SshHostEntry(tuple(aliases), _entry_options(access, node)))
    return entries


def _entry_options(access: ClusterAccess, node: Node) -> tuple[tuple[str, str], ...]:
    target = access.target_for(node)
    options = [("HostName", target.host)]
    if target.port != 22:
        options.append(("Port", str(target.port)))
    options.append(("User", target.user))
    if target.proxy_command:
        options.append(("ProxyCommand", target.proxy_command))
    if target.host_key_alias:
        options.append(("HostKeyAlias", target.host_key_alias))
    if target.known_hosts:
        options.append(("UserKnownHostsFile", str(target.known_hosts)))
    if target.identity_file:
        options += [("IdentityFile", str(target.identity_file)), ("IdentitiesOnly", "yes")]
    options += [("StrictHostKeyChecking", "accept-new"), ("ServerAliveInterval", "30")]
    return tuple(options)

"""provisioning_parameters.json: the one contract between ``llamapod plan``/``up`` and the nodes.

``cloud/plan.py`` imports this module (as ``llamapod.lifecycle.provisioning``) to write the
file; the node program imports it (as the top-level ``provisioning``, next to on_create.sh)
to read it. So it uses the Python standard library only and imports nothing of llamapod.

HyperPod's agent reads the same file to write slurm.conf: ``version``, ``workload_manager``,
``controller_group``, ``login_group``, ``worker_groups``, ``fsx_dns_name`` and
``fsx_mountname`` have the shape the reference lifecycle scripts use
(awsome-distributed-training, 1.architectures/5.sagemaker-hyperpod/LifecycleScripts/base-config,
``lifecycle_script.py``). ``cluster_user``, ``shared_users``, ``containers`` and ``accounting``
are llamapod's.

Every value is checked by a full-string match before a node uses it: the values end up in
root-owned files (/etc/fstab, /etc/passwd through useradd, slurm.conf, slurmdbd.conf), so a
newline, a control character, a leading '-' (read as an option by a command) or a '#'
(a comment in Slurm's files) never gets through.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

FILE_NAME = "provisioning_parameters.json"
VERSION = "1.0.0"
WORKLOAD_MANAGER = "slurm"
DEFAULT_CLUSTER_USER = "ubuntu"
DEFAULT_STORAGE_PORT = 3306
DEFAULT_STORAGE_LOC = "slurm_acct_db"
FIRST_UID, LAST_UID = 1000, 60000

# Key names, in the order the file is written.
K_VERSION = "version"
K_WORKLOAD_MANAGER = "workload_manager"
K_CONTROLLER_GROUP = "controller_group"
K_LOGIN_GROUP = "login_group"
K_WORKER_GROUPS = "worker_groups"
K_GROUP_NAME = "instance_group_name"
K_PARTITION_NAME = "partition_name"
K_FSX_DNS_NAME = "fsx_dns_name"
K_FSX_MOUNTNAME = "fsx_mountname"
K_CLUSTER_USER = "cluster_user"
K_SHARED_USERS = "shared_users"
K_USER_NAME = "name"
K_USER_UID = "uid"
K_CONTAINERS = "containers"
K_ACCOUNTING = "accounting"
ACCOUNTING_KEYS = ("storage_host", "storage_port", "storage_user", "storage_pass", "storage_loc")
KEYS = (K_VERSION, K_WORKLOAD_MANAGER, K_CONTROLLER_GROUP, K_LOGIN_GROUP, K_WORKER_GROUPS, K_FSX_DNS_NAME,
        K_FSX_MOUNTNAME, K_CLUSTER_USER, K_SHARED_USERS, K_CONTAINERS, K_ACCOUNTING)

_HOST_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"

# kind -> (full-string pattern, the rule as a phrase). None of the patterns admits a leading
# '-', whitespace, a control character, a quote, a backslash or '#'.
RULES: Dict[str, Tuple["re.Pattern[str]", str]] = {
    # SageMaker's InstanceGroupName pattern (1-63 characters).
    "group": (re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}"),
              "an instance group name (1-63 letters, digits or hyphens, starting and ending with a letter or digit)"),
    "partition": (re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"),
                  "a Slurm partition name (1-64 letters, digits, dots, hyphens or underscores, starting with a "
                  "letter or digit)"),
    "hostname": (re.compile(rf"(?=.{{1,253}}$){_HOST_LABEL}(\.{_HOST_LABEL})*"),
                 "a DNS host name (lowercase letters, digits, hyphens and dots)"),
    # A database host: a DNS name as above or an IPv4 address.
    "host": (re.compile(rf"{_OCTET}(\.{_OCTET}){{3}}|(?=.{{1,253}}$){_HOST_LABEL}(\.{_HOST_LABEL})*"),
             "a DNS host name (lowercase letters, digits, hyphens and dots) or an IPv4 address"),
    # FSx: "fsx" for SCRATCH_1, else 8 lowercase alphanumerics chosen by FSx.
    "mountname": (re.compile(r"[a-z0-9]{1,8}"), "an FSx for Lustre mount name (1-8 lowercase letters or digits)"),
    # useradd's default NAME_REGEX on Debian/Ubuntu, without the trailing '$'.
    "user": (re.compile(r"[a-z_][a-z0-9_-]{0,31}"),
             "a Linux user name (up to 32 lowercase letters, digits, _ or -, not starting with a digit or -)"),
    # MySQL user names are at most 32 characters.
    "db_user": (re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,31}"),
                "a database user name (up to 32 letters, digits, _ . @ or -, not starting with . @ or -)"),
    # Printable ASCII without space, quotes, backslash, backquote or '#': slurmdbd.conf has no
    # quoting that would carry them.
    "password": (re.compile(r"[A-Za-z0-9!$%&()*+,./:;<=>?@\[\]^_{|}~][A-Za-z0-9!$%&()*+,./:;<=>?@\[\]^_{|}~-]{0,127}"),
                 "a password of 1-128 printable ASCII characters without spaces, quotes, backslash, ` or #, "
                 "not starting with -"),
    "database": (re.compile(r"[A-Za-z0-9_]{1,64}"), "a database name (1-64 letters, digits or _)"),
}


class ProvisioningError(ValueError):
    """provisioning_parameters.json (or what would be written to it) breaks the contract."""

    def __init__(self, problems: List[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def rule_problem(kind: str, value: object) -> Optional[str]:
    """None when ``value`` is a string that matches the rule ``kind`` in full, else the rule."""
    pattern, phrase = RULES[kind]
    if isinstance(value, str) and pattern.fullmatch(value):
        return None
    return phrase


def uid_problem(value: object) -> Optional[str]:
    if isinstance(value, int) and not isinstance(value, bool) and FIRST_UID <= value <= LAST_UID:
        return None
    return f"a whole number from {FIRST_UID} to {LAST_UID}"


def port_problem(value: object) -> Optional[str]:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return None
    return "a TCP port number (1-65535)"


@dataclass(frozen=True)
class WorkerGroup:
    group: str
    partition: str


@dataclass(frozen=True)
class SharedUser:
    name: str
    uid: int


@dataclass(frozen=True)
class Accounting:
    storage_host: str
    storage_user: str
    storage_pass: str = field(repr=False)
    storage_port: int = DEFAULT_STORAGE_PORT
    storage_loc: str = DEFAULT_STORAGE_LOC


@dataclass(frozen=True)
class ProvisioningParameters:
    controller_group: str
    worker_groups: Tuple[WorkerGroup, ...]
    fsx_dns_name: str
    fsx_mountname: str
    login_group: Optional[str] = None
    cluster_user: str = DEFAULT_CLUSTER_USER
    shared_users: Tuple[SharedUser, ...] = ()
    containers: bool = False
    accounting: Optional[Accounting] = None
    unknown_keys: Tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON object, keys in the reference's order; llamapod's optional keys only when set."""
        data: Dict[str, Any] = {
            K_VERSION: VERSION,
            K_WORKLOAD_MANAGER: WORKLOAD_MANAGER,
            K_CONTROLLER_GROUP: self.controller_group,
        }
        if self.login_group is not None:
            data[K_LOGIN_GROUP] = self.login_group
        data[K_WORKER_GROUPS] = [{K_GROUP_NAME: w.group, K_PARTITION_NAME: w.partition} for w in self.worker_groups]
        data[K_FSX_DNS_NAME] = self.fsx_dns_name
        data[K_FSX_MOUNTNAME] = self.fsx_mountname
        data[K_CLUSTER_USER] = self.cluster_user
        if self.shared_users:
            data[K_SHARED_USERS] = [{K_USER_NAME: u.name, K_USER_UID: u.uid} for u in self.shared_users]
        if self.containers:
            data[K_CONTAINERS] = True
        if self.accounting is not None:
            data[K_ACCOUNTING] = {key: getattr(self.accounting, key) for key in ACCOUNTING_KEYS}
        return data


# ---- checking ------------------------------------------------------------------------------


def _check(found: List[str], where: str, problem: Optional[str], value: object) -> None:
    if problem is not None:
        found.append(f"{where} must be {problem}, found {value!r}")


def problems(params: ProvisioningParameters, *, fsx_known: bool = True) -> List[str]:
    """Every way ``params`` breaks the contract; ``fsx_known=False`` skips the FSx names
    (``plan`` writes placeholders for them: they exist once the file system is requested)."""
    found = _group_problems(params)
    if fsx_known:
        _check(found, K_FSX_DNS_NAME, rule_problem("hostname", params.fsx_dns_name), params.fsx_dns_name)
        _check(found, K_FSX_MOUNTNAME, rule_problem("mountname", params.fsx_mountname), params.fsx_mountname)
    found += _user_problems(params)
    if not isinstance(params.containers, bool):
        found.append(f"{K_CONTAINERS} must be true or false, found {params.containers!r}")
    if params.accounting is not None:
        found += _accounting_problems(params.accounting)
    return found


def _group_problems(params: ProvisioningParameters) -> List[str]:
    found: List[str] = []
    _check(found, K_CONTROLLER_GROUP, rule_problem("group", params.controller_group), params.controller_group)
    if params.login_group is not None:
        _check(found, K_LOGIN_GROUP, rule_problem("group", params.login_group), params.login_group)
    if not params.worker_groups:
        found.append(f"{K_WORKER_GROUPS} must list at least one worker group")
    for i, worker in enumerate(params.worker_groups):
        where = f"{K_WORKER_GROUPS}[{i}]."
        _check(found, where + K_GROUP_NAME, rule_problem("group", worker.group), worker.group)
        _check(found, where + K_PARTITION_NAME, rule_problem("partition", worker.partition), worker.partition)
    groups = [params.controller_group, *([params.login_group] if params.login_group else []),
              *(w.group for w in params.worker_groups)]
    for name in sorted({g for g in groups if groups.count(g) > 1}, key=str):
        found.append(f"instance group {name!r} is named more than once (controller, login and worker groups "
                     f"must differ)")
    partitions = [w.partition for w in params.worker_groups]
    for name in sorted({p for p in partitions if partitions.count(p) > 1}, key=str):
        found.append(f"partition {name!r} is given to more than one worker group")
    return found


def _user_problems(params: ProvisioningParameters) -> List[str]:
    found: List[str] = []
    _check(found, K_CLUSTER_USER, rule_problem("user", params.cluster_user), params.cluster_user)
    names: List[object] = [params.cluster_user]
    uids: List[object] = []
    for i, user in enumerate(params.shared_users):
        where = f"{K_SHARED_USERS}[{i}]."
        _check(found, where + K_USER_NAME, rule_problem("user", user.name), user.name)
        _check(found, where + K_USER_UID, uid_problem(user.uid), user.uid)
        if user.name in names:
            found.append(f"{where}{K_USER_NAME} {user.name!r} is already the cluster user or another shared user")
        if user.uid in uids:
            found.append(f"{where}{K_USER_UID} {user.uid} is already another shared user's")
        names.append(user.name)
        uids.append(user.uid)
    return found


# The rule each accounting value follows (the port's is a number range: port_problem).
_ACCOUNTING_RULE_KINDS = {"storage_host": "host", "storage_user": "db_user",
                          "storage_pass": "password",  # nosec B105: the name of a rule in RULES, not a password
                          "storage_loc": "database"}


def accounting_value_problem(key: str, value: object) -> Optional[str]:
    """None when ``value`` is fit for the accounting setting ``key``, else the rule it breaks."""
    if key == "storage_port":
        return port_problem(value)
    return rule_problem(_ACCOUNTING_RULE_KINDS[key], value)


def accounting_rules(acct: Accounting) -> List[Tuple[str, str]]:
    """(key, the rule it breaks) for each accounting value that breaks one."""
    checks = ((key, accounting_value_problem(key, getattr(acct, key))) for key in ACCOUNTING_KEYS)
    return [(key, rule) for key, rule in checks if rule is not None]


def shown(key: str, value: object) -> str:
    """How a value appears in a message: the password never does."""
    return "(hidden)" if key == "storage_pass" and isinstance(value, str) else repr(value)


def _accounting_problems(acct: Accounting) -> List[str]:
    return [f"{K_ACCOUNTING}.{key} must be {rule}, found {shown(key, getattr(acct, key))}"
            for key, rule in accounting_rules(acct)]


def dumps(params: ProvisioningParameters) -> str:
    """The file's text; refuses parameters that break the contract (so ``up`` never uploads them)."""
    found = problems(params)
    if found:
        raise ProvisioningError(found)
    return json.dumps(params.to_dict(), indent=2) + "\n"


# ---- reading ---------------------------------------------------------------------------------


class _Reader:
    """Collects every problem of a parsed JSON object, naming the key each one is at."""

    def __init__(self) -> None:
        self.problems: List[str] = []

    def string(self, data: Dict[str, Any], key: str, where: str = "", *, optional: bool = False) -> Any:
        value = data.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            self.problems.append(f"{where}{key} must be a string, found {value!r}")
        return value

    def table(self, value: Any, where: str) -> Dict[str, Any]:
        if isinstance(value, dict):
            return value
        self.problems.append(f"{where} must be an object, found {value!r}")
        return {}

    def items(self, data: Dict[str, Any], key: str) -> List[Any]:
        value = data.get(key, [])
        if isinstance(value, list):
            return value
        self.problems.append(f"{key} must be a list, found {value!r}")
        return []


def from_dict(data: Any) -> ProvisioningParameters:
    """Parse and check the file's JSON object; ProvisioningError lists every problem."""
    reader = _Reader()
    data = reader.table(data, "the file")
    if reader.problems:
        raise ProvisioningError(reader.problems)
    if data.get(K_VERSION) != VERSION:
        reader.problems.append(f"{K_VERSION} must be {VERSION!r}, found {data.get(K_VERSION)!r}")
    if data.get(K_WORKLOAD_MANAGER) != WORKLOAD_MANAGER:
        reader.problems.append(f"{K_WORKLOAD_MANAGER} must be {WORKLOAD_MANAGER!r}, "
                               f"found {data.get(K_WORKLOAD_MANAGER)!r}")
    workers = []
    for i, raw in enumerate(reader.items(data, K_WORKER_GROUPS)):
        table = reader.table(raw, f"{K_WORKER_GROUPS}[{i}]")
        where = f"{K_WORKER_GROUPS}[{i}]."
        workers.append(WorkerGroup(reader.string(table, K_GROUP_NAME, where),
                                   reader.string(table, K_PARTITION_NAME, where)))
    users = []
    for i, raw in enumerate(reader.items(data, K_SHARED_USERS)):
        table = reader.table(raw, f"{K_SHARED_USERS}[{i}]")
        users.append(SharedUser(reader.string(table, K_USER_NAME, f"{K_SHARED_USERS}[{i}]."), table.get(K_USER_UID)))
    params = ProvisioningParameters(
        controller_group=reader.string(data, K_CONTROLLER_GROUP),
        login_group=reader.string(data, K_LOGIN_GROUP, optional=True),
        worker_groups=tuple(workers),
        fsx_dns_name=reader.string(data, K_FSX_DNS_NAME),
        fsx_mountname=reader.string(data, K_FSX_MOUNTNAME),
        cluster_user=data.get(K_CLUSTER_USER, DEFAULT_CLUSTER_USER),
        shared_users=tuple(users),
        containers=data.get(K_CONTAINERS, False),
        accounting=_read_accounting(reader, data.get(K_ACCOUNTING)),
        unknown_keys=tuple(sorted(key for key in data if key not in KEYS)),
    )
    found = reader.problems + [p for p in problems(params) if p not in reader.problems
                               and not _already_reported(p, reader.problems)]
    if found:
        raise ProvisioningError(found)
    return params


def _already_reported(problem: str, reported: List[str]) -> bool:
    """A key whose type was wrong is reported once, not again by its value rule."""
    key = problem.split(" ", 1)[0]
    return any(r.split(" ", 1)[0] == key for r in reported)


def _read_accounting(reader: _Reader, raw: Any) -> Optional[Accounting]:
    if raw is None:
        return None
    table = reader.table(raw, K_ACCOUNTING)
    where = K_ACCOUNTING + "."
    unknown = sorted(set(table) - set(ACCOUNTING_KEYS))
    if unknown:
        reader.problems.append(f"{K_ACCOUNTING} has unknown keys {', '.join(unknown)} "
                               f"(known: {', '.join(ACCOUNTING_KEYS)})")
    return Accounting(
        storage_host=reader.string(table, "storage_host", where),
        storage_user=reader.string(table, "storage_user", where),
        storage_pass=table.get("storage_pass"),
        storage_port=table.get("storage_port", DEFAULT_STORAGE_PORT),
        storage_loc=table.get("storage_loc", DEFAULT_STORAGE_LOC),
    )


def loads(text: str) -> ProvisioningParameters:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProvisioningError([f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"]) from None
    return from_dict(data)

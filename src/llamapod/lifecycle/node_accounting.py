"""Slurm accounting: slurmdbd on the controller against the MySQL/MariaDB of [cluster.accounting].

On HyperPod the accounting lines go where HyperPod's slurm.conf takes them: the
``accounting.conf`` it includes (empty by default; the reference's setup_mariadb_accounting.sh
writes there), or, without such an include, a managed block at the end of slurm.conf (as the
reference's setup_rds_accounting.sh appends). slurmdbd runs as the slurm.conf's SlurmUser
(``slurm`` on HyperPod): slurmdbd takes slurmctld's RPCs only from root or its own SlurmUser
(Slurm's src/slurmdbd/proc_req.c) and refuses a slurmdbd.conf that user does not own.
"""

from __future__ import annotations

import logging
from pathlib import Path

from node_cluster import Cluster, Node
from node_settings import Settings
from node_slurm import (
    MARKER,
    accounting_lines,
    slurm_conf_is_managed,
    slurmctld_service,
    wait_for_hyperpod_slurm_conf,
)
from node_system import Service, ServiceManager, StepError, replace_managed_block, write_file

log = logging.getLogger("llamapod.lifecycle")

ACCOUNTING_CONF = "accounting.conf"


def _settings_lines(text: str) -> list[tuple[str, str]]:
    """(key in lowercase, value) of each ``Key=Value`` or ``include <file>`` line, comments removed."""
    found = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, eq, value = line.partition("=")
        if eq:
            found.append((key.strip().lower(), value.strip()))
        elif line.lower().startswith("include"):
            found.append(("include", line[len("include"):].strip()))
    return found


def slurm_user(slurm_conf_text: str) -> str:
    """The user slurmctld runs as: SlurmUser (keys are case-insensitive to Slurm; default root)."""
    users = [value for key, value in _settings_lines(slurm_conf_text) if key == "slurmuser" and value]
    return users[-1] if users else "root"


def included_accounting_conf(root: Path, slurm_conf: Path, slurm_conf_text: str) -> Path | None:
    """The accounting.conf slurm.conf includes, if any: a relative path is relative to slurm.conf's
    directory, as Slurm reads it; an absolute one is a path on the node (under ``root``)."""
    for key, value in _settings_lines(slurm_conf_text):
        if key == "include" and Path(value).name == ACCOUNTING_CONF:
            path = Path(value)
            return root / value.lstrip("/") if path.is_absolute() else slurm_conf.parent / path
    return None


def passwd_ids(settings: Settings, user: str) -> tuple[int, int] | None:
    for line in (settings.etc_dir / "passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) == 7 and fields[0] == user and fields[2].isdigit() and fields[3].isdigit():
            return int(fields[2]), int(fields[3])
    return None


def render_slurmdbd_conf(settings: Settings, cluster: Cluster, dbd_host: str, user: str = "root") -> str:
    acct = cluster.accounting
    if acct is None:
        raise StepError("accounting was not requested in provisioning_parameters.json")
    return "\n".join([
        f"{MARKER}.",
        "AuthType=auth/munge",
        f"AuthInfo=socket={settings.munge_socket}",
        # slurmdbd compares DbdHost with its own host name (it is not looked up).
        f"DbdHost={dbd_host}",
        f"SlurmUser={user}",
        "StorageType=accounting_storage/mysql",
        f"StorageHost={acct.storage_host}",
        f"StoragePort={acct.storage_port}",
        f"StorageUser={acct.storage_user}",
        f"StoragePass={acct.storage_pass}",
        f"StorageLoc={acct.storage_loc}",
        f"LogFile={settings.log_dir / 'slurm' / 'slurmdbd.log'}",
        f"PidFile={settings.run_dir / 'slurmdbd.pid'}",
    ]) + "\n"


def _add_to_hyperpods_slurm_conf(settings: Settings, cluster: Cluster) -> bool:
    """The accounting lines where HyperPod's slurm.conf reads them; True when anything changed."""
    wait_for_hyperpod_slurm_conf(settings, cluster)
    text = settings.slurm_conf.read_text()
    block = "\n".join(accounting_lines(cluster.controller.address))
    target = included_accounting_conf(settings.root, settings.slurm_conf, text)
    if target is None:
        target, current = settings.slurm_conf, text
    else:
        current = target.read_text() if target.exists() else ""
    changed = write_file(target, replace_managed_block(current, block, "llamapod accounting"))
    if changed:
        log.info("accounting lines written to %s", target)
    return changed


def ensure_accounting(settings: Settings, cluster: Cluster, node: Node, services: ServiceManager) -> None:
    if cluster.accounting is None or node.role != "controller":
        log.info("Slurm accounting not requested for this node")
        return
    managed = slurm_conf_is_managed(settings)
    conf_changed = False if managed else _add_to_hyperpods_slurm_conf(settings, cluster)
    # llamapod's own slurm.conf runs slurmctld as root; HyperPod's names its SlurmUser.
    user = "root" if managed else slurm_user(settings.slurm_conf.read_text())
    ids = passwd_ids(settings, user)
    if ids is None:
        raise StepError(f"slurm.conf's SlurmUser {user} ({settings.slurm_conf}) is not a user on this node; "
                        f"slurmdbd must run as that user")
    conf = settings.slurm_dir / "etc" / "slurmdbd.conf"
    # slurmdbd refuses a config other users can read (it holds the database password) or
    # one its SlurmUser does not own.
    changed = write_file(conf, render_slurmdbd_conf(settings, cluster, settings.hostname, user),
                         mode=0o600, uid=ids[0], gid=ids[1])
    (settings.log_dir / "slurm").mkdir(parents=True, exist_ok=True)
    slurmdbd = settings.commands["slurmdbd"]
    service = Service("slurmdbd", slurmdbd, (slurmdbd,), (("SLURM_CONF", str(settings.slurm_conf)),),
                      foreground=(slurmdbd, "-D", "-s"))
    running = services.is_running(service)
    if running and not changed:
        log.info("slurmdbd already running")
    else:
        result = services.start(service, restart=running)
        if not result.ok:
            raise StepError(f"slurmdbd did not start (is the database at {cluster.accounting.storage_host} "
                            f"reachable?): {result.summary()}")
    if conf_changed:
        controller = slurmctld_service(settings, managed)
        if services.is_running(controller):
            # slurmctld reads slurm.conf once: the accounting lines need a restart to count.
            result = services.start(controller, restart=True)
            if not result.ok:
                raise StepError(f"slurmctld did not restart with accounting: {result.summary()}")
            log.info("slurmctld restarted with accounting")

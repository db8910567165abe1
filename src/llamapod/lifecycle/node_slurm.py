"""Slurm steps: munge, optional accounting, and the daemons for the node's role.

Two ways a node can get its Slurm configuration:
- On HyperPod (<root>/opt/sagemaker_cluster exists) HyperPod's agent writes slurm.conf and
  sets up munge: both are left alone; llamapod only starts the daemons for the role.
- Elsewhere ("managed": test namespaces, any Slurm cluster without HyperPod's agent) the
  controller writes slurm.conf from the two JSON files, the munge key is shared through /fsx,
  and workers fetch the configuration from the controller (configless).
"""

from __future__ import annotations

import logging
import re
import secrets
import shlex
import socket
import time
from pathlib import Path

from node_cluster import Cluster, Node, cluster_name_for_slurm
from node_settings import Settings
from node_system import (
    Service,
    ServiceManager,
    StepError,
    TransientError,
    file_lock,
    retry,
    run,
    write_file,
)

log = logging.getLogger("llamapod.lifecycle")

MARKER = "# Managed by llamapod's lifecycle"
SLURMCTLD_PORT = 6817
MIN_NODE_COUNT = 64


def nodeset_name(partition: str) -> str:
    return f"ns_{partition}"


def slurm_conf_is_managed(settings: Settings) -> bool:
    return not settings.hyperpod_marker.exists()


def _owner(settings: Settings, user: str) -> tuple[int, int]:
    for line in (settings.etc_dir / "passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) == 7 and fields[0] == user:
            return int(fields[2]), int(fields[3])
    return 0, 0


# --- munge ------------------------------------------------------------------------------------


def munge_service(settings: Settings) -> Service:
    socket = settings.munge_socket
    argv = (
        settings.commands["munged"],
        f"--socket={socket}",
        f"--key-file={settings.etc_dir / 'munge' / 'munge.key'}",
        f"--pid-file={socket.parent / 'munged.pid'}",
        f"--log-file={settings.log_dir / 'munge' / 'munged.log'}",
        f"--seed-file={settings.root / 'var/lib/munge/munged.seed'}",
    )
    return Service("munge", settings.commands["munged"], argv)


def ensure_munge(settings: Settings, services: ServiceManager) -> None:
    """One munge key for the cluster, made by whichever node gets there first, kept on /fsx."""
    if not slurm_conf_is_managed(settings):
        log.info("on HyperPod: munge is configured by HyperPod")
        return
    shared_key = settings.shared_state_dir / "munge.key"
    with file_lock(settings.shared_state_dir / "munge.lock", timeout=settings.lock_timeout, what="munge key"):
        if not shared_key.exists():
            write_file(shared_key, secrets.token_hex(512), mode=0o400)
            log.info("created the cluster munge key %s", shared_key)
    uid, gid = _owner(settings, "munge")
    key = settings.etc_dir / "munge" / "munge.key"
    changed = write_file(key, shared_key.read_text(), mode=0o400, uid=uid, gid=gid)
    for directory in (settings.munge_socket.parent, settings.log_dir / "munge", settings.root / "var/lib/munge"):
        directory.mkdir(parents=True, exist_ok=True)
    service = munge_service(settings)
    running = services.is_running(service)
    if running and not changed:
        log.info("munged already running with the cluster key")
        return
    result = services.start(service, restart=running)
    if not result.ok:
        raise StepError(f"munged did not start: {result.summary()}")
    log.info("munged %s", "restarted with the cluster key" if running else "started")


# --- slurm.conf ---------------------------------------------------------------------------------


def render_slurm_conf(settings: Settings, cluster: Cluster, controller: Node, controller_host: str) -> str:
    spool = settings.spool_dir
    lines = [
        f"{MARKER} from resource_config.json and provisioning_parameters.json; re-run on_create.sh to update.",
        f"ClusterName={cluster_name_for_slurm(cluster.name)}",
        f"SlurmctldHost={controller_host}({controller.address})",
        f"SlurmctldPort={SLURMCTLD_PORT}",
        # Workers fetch this file from the controller: one source of truth, nothing to copy.
        "SlurmctldParameters=enable_configless",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={settings.munge_socket}",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={spool / 'slurmctld'}",
        # %n keeps node daemons apart even where several nodes share one file system image.
        f"SlurmdSpoolDir={spool / 'slurmd' / '%n'}",
        f"SlurmctldPidFile={settings.run_dir / 'slurmctld.pid'}",
        f"SlurmdPidFile={settings.run_dir / 'slurmd-%n.pid'}",
        f"SlurmctldLogFile={settings.log_dir / 'slurm' / 'slurmctld.log'}",
        f"SlurmdLogFile={settings.log_dir / 'slurm' / 'slurmd-%n.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "MpiDefault=none",
        "MailProg=/bin/true",
        # A replaced or rebooted node rejoins by itself once its slurmd registers.
        "ReturnToService=2",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
    ]
    if cluster.accounting is not None:
        lines += accounting_lines(controller.address)
    # Nodes register themselves (dynamic nodes, slurmd -Z) with the hardware slurmd finds, so
    # no CPU or memory figure is guessed here, and a group HyperPod scales up later needs no
    # new slurm.conf. Each worker joins its group's partition through a feature.
    node_count = sum(1 for n in cluster.nodes if n.role != "controller")
    lines += [f"MaxNodeCount={max(MIN_NODE_COUNT, 2 * node_count)}", "TreeWidth=65533"]
    for i, (partition, _group) in enumerate(cluster.partitions):
        default = "YES" if i == 0 else "NO"
        lines.append(f"Nodeset={nodeset_name(partition)} Feature={partition}")
        lines.append(f"PartitionName={partition} Nodes={nodeset_name(partition)} Default={default} "
                     "MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def accounting_lines(controller_address: str) -> list[str]:
    """slurmctld reaches slurmdbd (on the controller) by address: a HyperPod node's host name
    does not resolve there (the reference's setup_mariadb_accounting.sh takes the address from
    SlurmctldHost for that reason), and configless clients read the same line."""
    return [
        "AccountingStorageType=accounting_storage/slurmdbd",
        f"AccountingStorageHost={controller_address}",
        "JobAcctGatherType=jobacct_gather/linux",
    ]


def slurm_env(settings: Settings, node: Node) -> dict[str, str]:
    """Which slurm.conf client commands read: the controller's own, or slurmd's configless cache."""
    conf = settings.slurm_conf if node.role == "controller" else settings.slurm_client_conf
    return {"SLURM_CONF": str(conf)}


# --- daemons ----------------------------------------------------------------------------------


def ensure_slurm(settings: Settings, cluster: Cluster, node: Node, services: ServiceManager) -> None:
    managed = slurm_conf_is_managed(settings)
    for directory in (settings.spool_dir / "slurmctld", settings.spool_dir / "slurmd", settings.log_dir / "slurm",
                      settings.run_dir):
        directory.mkdir(parents=True, exist_ok=True)
    if node.role == "controller":
        _start_controller(settings, cluster, node, services, managed)
    elif node.role == "login":
        _fetch_client_configuration(settings, cluster, node, services, managed)
    else:
        _start_node_daemon(settings, cluster, node, services, managed)


def wait_for_hyperpod_slurm_conf(settings: Settings, cluster: Cluster) -> None:
    """HyperPod's agent writes slurm.conf while the lifecycle runs, not necessarily before.

    Wait (bounded, polling) until it exists and names the controller, as the reference's
    lifecycle_script.py does (wait_for_slurm_conf: the file with a controller address in it).
    """
    conf, address = settings.slurm_conf, cluster.controller.address

    def written() -> None:
        try:
            text = conf.read_text()
        except FileNotFoundError:
            raise TransientError(f"{conf} does not exist yet") from None
        if address not in text:
            raise TransientError(f"{conf} does not name the controller {address} yet")

    try:
        retry(written, what=f"HyperPod's {conf}", timeout=settings.slurm_timeout, first_delay=1.0, max_delay=10.0)
    except StepError as exc:
        raise StepError(f"{exc}. HyperPod's agent writes it from provisioning_parameters.json: check that "
                        f"controller_group names this cluster's controller group") from None


def slurmctld_service(settings: Settings, managed: bool) -> Service:
    slurmctld, conf = settings.commands["slurmctld"], str(settings.slurm_conf)
    # Managed: the packaged unit may look elsewhere (Debian's reads /etc/slurm), so point it here.
    return Service("slurmctld", slurmctld, (slurmctld, "-f", conf), (("SLURM_CONF", conf),),
                   foreground=(slurmctld, "-D", "-s", "-f", conf) if managed else None)


def _start_controller(settings: Settings, cluster: Cluster, node: Node, services: ServiceManager,
                      managed: bool) -> None:
    changed = False
    if not managed:
        wait_for_hyperpod_slurm_conf(settings, cluster)
    if managed:
        changed = write_file(settings.slurm_conf, render_slurm_conf(settings, cluster, node, settings.hostname))
        if changed:
            log.info("wrote %s", settings.slurm_conf)
    service = slurmctld_service(settings, managed)
    running = services.is_running(service)
    if not running or changed:
        result = services.start(service, restart=running)
        if not result.ok:
            raise StepError(f"slurmctld did not start: {result.summary()}")
        log.info("slurmctld %s", "restarted with the new slurm.conf" if running else "started")
    env = slurm_env(settings, node)

    def answers() -> None:
        result = run([settings.commands["scontrol"], "ping"], env=env, check=False, timeout=30)
        if not result.ok or " is UP" not in result.stdout:
            if not services.is_running(service):
                # A config slurmctld rejects makes it exit at once: say so instead of waiting.
                raise StepError(f"slurmctld exited; see {settings.log_dir / 'slurm' / 'slurmctld.log'}")
            raise TransientError(result.summary() if not result.ok else result.stdout.strip())

    retry(answers, what="slurmctld to answer", timeout=settings.slurm_timeout, first_delay=0.2, max_delay=5.0)
    log.info("slurmctld is up")


def slurmd_options(cluster: Cluster, node: Node, managed: bool) -> list[str]:
    options = ["--conf-server", f"{cluster.controller.address}:{SLURMCTLD_PORT}"]
    if node.role == "login":
        # Only to fetch the configuration for client commands; -N spares slurmd its host-name
        # look-ups before it finds the node is not in slurm.conf and exits.
        return options + ["-N", node.slurm_name]
    if managed:
        # Register as a dynamic node under the name and address the cluster knows this node by;
        # the feature puts workers into their group's partition.
        options += ["-Z", "--conf", f"NodeAddr={node.address} Feature={node.partition}", "-N", node.slurm_name]
    return options


UNIT_DIRS = ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")


def installed_unit(settings: Settings, unit: str) -> Path | None:
    """The unit file systemd would load (/etc before the package's), not counting drop-ins."""
    candidates = [settings.etc_dir / "systemd" / "system" / f"{unit}.service"]
    candidates += [settings.root / d / f"{unit}.service" for d in UNIT_DIRS[1:]]
    return next((c for c in candidates if c.is_file()), None)


def unit_exec_start(text: str) -> str | None:
    """The last ExecStart= of a unit's [Service] section, continuation lines joined."""
    joined = re.sub(r"\\\n[ \t]*", " ", text)
    section, found = "", None
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped
        elif section == "[Service]" and stripped.startswith("ExecStart="):
            found = stripped[len("ExecStart="):].strip() or None
    return found


def hyperpod_slurmd_command(settings: Settings, options: list[str]) -> tuple[str, ...]:
    """HyperPod's own slurmd command line with the options put where its unit expects them.

    HyperPod's slurmd.service runs ``slurmd ... $SLURMD_OPTIONS`` without reading
    /etc/default/slurmd; the reference's start_slurm.sh fills the variable in with envsubst and
    replaces the unit. The same substitution goes into a drop-in here, which takes effect
    whatever environment files the unit reads and leaves HyperPod's unit file untouched.
    """
    unit = installed_unit(settings, "slurmd")
    command = unit_exec_start(unit.read_text()) if unit is not None else None
    if command is None:
        return (settings.commands["slurmd"], "-D", "-s", *options)
    words = shlex.split(command.lstrip("-@:+!"))
    placeholders = ("$SLURMD_OPTIONS", "${SLURMD_OPTIONS}")
    if not any(word in placeholders for word in words):
        return (*words, *options)
    filled: list[str] = []
    for word in words:
        filled.extend(options if word in placeholders else [word])
    return tuple(filled)


def slurmd_service(settings: Settings, options: list[str], managed: bool) -> Service:
    slurmd = settings.commands["slurmd"]
    foreground = (slurmd, "-D", "-s", *options) if managed else hyperpod_slurmd_command(settings, options)
    return Service("slurmd", slurmd, (slurmd, *options), foreground=foreground)


def controller_answers(address: str, port: int, timeout: float) -> None:
    """A TCP connect first: cheaper than a slurmd start and says plainly what is missing."""
    try:
        with socket.create_connection((address, port), timeout=max(timeout, 0.1)):
            pass
    except OSError as exc:
        raise TransientError(f"controller {address}:{port} does not answer ({exc.strerror or exc})") from None


def _start_node_daemon(settings: Settings, cluster: Cluster, node: Node, services: ServiceManager,
                       managed: bool) -> None:
    options = slurmd_options(cluster, node, managed)
    service = slurmd_service(settings, options, managed)
    env = slurm_env(settings, node)
    deadline = time.monotonic() + settings.slurm_timeout
    controller = cluster.controller.address

    def registered() -> None:
        if not services.is_running(service):
            controller_answers(controller, SLURMCTLD_PORT, min(5.0, deadline - time.monotonic()))
            # slurmd exits when its configless fetch fails; bound each try by what is left.
            result = services.start(service, timeout=max(1.0, deadline - time.monotonic()))
            if not result.ok:
                raise TransientError(f"slurmd could not start ({result.summary()})")
        state = node_state(settings, node, env)
        if state is None or "NOT_RESPONDING" in state or state.startswith(("UNKNOWN", "DOWN")):
            raise TransientError(f"{node.slurm_name} not registered yet (state {state or 'unknown'})")
        log.info("%s registered with the controller (state %s)", node.slurm_name, state)

    try:
        retry(registered, what=f"slurmd on {node.slurm_name} to register with {controller}",
              timeout=settings.slurm_timeout, first_delay=0.5, max_delay=10.0)
    except StepError as exc:
        raise StepError(f"{exc}. Is slurmctld running on the controller ({controller}) "
                        f"and TCP {SLURMCTLD_PORT} open between nodes?") from None


def _fetch_client_configuration(settings: Settings, cluster: Cluster, node: Node, services: ServiceManager,
                                managed: bool) -> None:
    """A login node runs no Slurm daemon: HyperPod's slurm.conf does not list login nodes.

    As in the reference's start_slurm.sh, slurmd is started only so that it fetches the
    configuration from the controller (configless) into the cache client commands read, and
    then exits because the node is not in slurm.conf. What is waited for is that cache and a
    controller that answers through it, never slurmd itself.
    """
    service = slurmd_service(settings, slurmd_options(cluster, node, managed), managed)
    env = slurm_env(settings, node)
    deadline = time.monotonic() + settings.slurm_timeout
    controller = cluster.controller.address

    def clients_work() -> None:
        controller_answers(controller, SLURMCTLD_PORT, min(5.0, deadline - time.monotonic()))
        if not settings.slurm_client_conf.exists():
            services.start(service, restart=services.is_running(service),
                           timeout=max(1.0, deadline - time.monotonic()))
            if not settings.slurm_client_conf.exists():
                raise TransientError(f"slurmd fetched no configuration into {settings.slurm_client_conf}")
        result = run([settings.commands["scontrol"], "ping"], env=env, check=False, timeout=30)
        if not result.ok or " is UP" not in result.stdout:
            raise TransientError(result.summary() if not result.ok else result.stdout.strip())

    try:
        retry(clients_work, what=f"the Slurm configuration from {controller} on login node {node.slurm_name}",
              timeout=settings.slurm_timeout, first_delay=0.5, max_delay=10.0)
    except StepError as exc:
        raise StepError(f"{exc}. Is slurmctld running on the controller ({controller}) "
                        f"and TCP {SLURMCTLD_PORT} open between nodes?") from None
    log.info("login node %s: Slurm's client commands reach the controller through %s (no slurmd runs here)",
             node.slurm_name, settings.slurm_client_conf)


def node_state(settings: Settings, node: Node, env: dict[str, str]) -> str | None:
    if not Path(env["SLURM_CONF"]).exists():
        return None
    name = node.slurm_name if node.role != "controller" else settings.hostname
    result = run([settings.commands["scontrol"], "-o", "show", "node", name], env=env, check=False, timeout=30)
    if not result.ok:
        return None
    for field in result.stdout.split():
        if field.startswith("State="):
            return field.split("=", 1)[1]
    return None

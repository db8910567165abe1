#!/usr/bin/env python3
"""llamapod's node lifecycle: run by on_create.sh as root on every HyperPod node while it boots.

Standard library only (nodes have nothing else). Steps, in order, each idempotent so that a
re-run (HyperPod re-runs the lifecycle on replacement nodes; an operator re-runs after a fix)
changes nothing that is already right and continues where an interrupted run stopped:

  role        which node this is, from resource_config.json + provisioning_parameters.json
  fsx         FSx for Lustre at /fsx (retried until AVAILABLE), in fstab, write-checked
  users       the cluster user and the extra users (fixed uids) exist
  home        their homes live on /fsx (seeded once, passwd rewritten atomically)
  ssh         one key pair per user on /fsx, authorized; known hosts for cluster nodes only
  munge       the cluster's munge key (shared on /fsx) and munged        [not on HyperPod]
  accounting  slurmdbd on the controller                                   [optional]
  containers  Docker / enroot / pyxis data off the root volume             [optional]
  slurm       slurmctld (controller) or configless slurmd (workers, login), registered

Exit codes: 0 ready, 1 a step failed (the log says which and why), 2 bad settings.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from node_accounting import ensure_accounting  # noqa: E402
from node_cluster import Cluster, Node, load_cluster, this_node  # noqa: E402
from node_settings import Settings, load_settings  # noqa: E402
from node_slurm import ensure_munge, ensure_slurm  # noqa: E402
from node_storage import ensure_containers, ensure_fsx  # noqa: E402
from node_system import ServiceManager, StepError  # noqa: E402
from node_users import ensure_shared_homes, ensure_ssh, ensure_users  # noqa: E402

log = logging.getLogger("llamapod.lifecycle")

MOUNT_TABLE_ENV = "LLAMAPOD_MOUNT_TABLE"


def setup_logging(log_file: Path) -> None:
    """Timestamped lines to stdout (HyperPod ships it to CloudWatch) and to a file on the node."""
    formatter = logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    file_problem = None
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    except OSError as exc:
        file_problem = exc.strerror
    _use_handlers(handlers, formatter)
    if file_problem:
        log.warning("cannot write the lifecycle log %s: %s; logging to stdout only", log_file, file_problem)


def _use_handlers(handlers: list[logging.Handler], formatter: logging.Formatter) -> None:
    log.handlers.clear()
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def plan_steps(settings: Settings, cluster: Cluster, node: Node, mount_table: Path):
    services = ServiceManager(settings.service_mode, settings.commands["systemctl"], settings.etc_dir)
    return [
        ("fsx", lambda: ensure_fsx(settings, cluster, mount_table)),
        ("users", lambda: ensure_users(settings, cluster)),
        ("home", lambda: ensure_shared_homes(settings, cluster)),
        ("ssh", lambda: ensure_ssh(settings, cluster, node)),
        ("munge", lambda: ensure_munge(settings, services)),
        ("accounting", lambda: ensure_accounting(settings, cluster, node, services)),
        ("containers", lambda: ensure_containers(settings, cluster, node, mount_table)),
        ("slurm", lambda: ensure_slurm(settings, cluster, node, services)),
    ]


def run_steps(settings: Settings) -> int:
    started = time.monotonic()
    log.info("llamapod lifecycle starting (root %s, service mode %s)", settings.root, settings.service_mode)
    try:
        cluster = load_cluster(settings.resource_config, settings.provisioning_parameters)
        node = this_node(cluster, settings.address, settings.resource_config)
    except StepError as exc:
        log.error("step role FAILED: %s", exc)
        log.error("lifecycle failed at step role; fix the input and re-run on_create.sh")
        return 1
    log.info("this node: %s (%s, group %s, role %s)", node.slurm_name, node.address, node.group, node.role)
    mount_table = Path(os.environ.get(MOUNT_TABLE_ENV) or "/proc/self/mounts")
    for name, action in plan_steps(settings, cluster, node, mount_table):
        if name not in settings.only:
            log.info("step %s skipped (not in --only)", name)
            continue
        step_start = time.monotonic()
        log.info("step %s: start", name)
        try:
            action()
        except StepError as exc:
            log.error("step %s FAILED: %s", name, exc)
            log.error("lifecycle failed at step %s after %.1fs; every step is idempotent: fix the cause and "
                      "re-run on_create.sh", name, time.monotonic() - started)
            return 1
        except OSError as exc:
            log.error("step %s FAILED: %s: %s", name, exc.filename or "", exc.strerror or exc)
            log.error("lifecycle failed at step %s; fix the cause and re-run on_create.sh", name)
            return 1
        log.info("step %s: done in %.1fs", name, time.monotonic() - step_start)
    log.info("node %s ready as %s in %.1fs", node.slurm_name, node.role, time.monotonic() - started)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            # Bad arguments come before the log exists: one plain line on stderr.
            _use_handlers([logging.StreamHandler(sys.stderr)], logging.Formatter("node_setup.py: %(message)s"))
            log.error("%s", exc.code)
            return 2
        return 2 if exc.code else 0
    setup_logging(settings.log_file)
    os.umask(0o022)
    # Which slurm.conf each daemon and client reads is decided per command (slurm_env); an
    # inherited SLURM_CONF from an operator's shell would point them at another cluster.
    os.environ.pop("SLURM_CONF", None)
    return run_steps(settings)


if __name__ == "__main__":
    sys.exit(main())

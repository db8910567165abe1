"""Every path and command the lifecycle touches, with its override (flag or environment).

A default is a path on the node joined under the root prefix (``--root`` / ``LLAMAPOD_ROOT``,
"/" on a real node), so the same code provisions a temporary directory in tests. A path given
explicitly (flag or variable) is used as written: tests point several "nodes" with different
roots at one shared directory that way.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent

STEPS = ("fsx", "users", "home", "ssh", "munge", "accounting", "containers", "slurm")

# name -> (environment variable, default relative to the root, help). Paths only.
PATH_SETTINGS: dict[str, tuple[str, str, str]] = {
    "resource_config": ("SAGEMAKER_RESOURCE_CONFIG_PATH", "opt/ml/config/resource_config.json",
                        "HyperPod's description of the cluster's nodes"),
    "fsx_dir": ("LLAMAPOD_FSX_DIR", "fsx", "where FSx for Lustre is mounted (the shared directory)"),
    "etc_dir": ("LLAMAPOD_ETC_DIR", "etc", "system configuration (passwd, fstab, ssh, munge, docker, enroot)"),
    "slurm_dir": ("LLAMAPOD_SLURM_DIR", "opt/slurm", "Slurm installation; slurm.conf lives in <slurm_dir>/etc"),
    "run_dir": ("LLAMAPOD_RUN_DIR", "run", "runtime state (pid files)"),
    "spool_dir": ("LLAMAPOD_SPOOL_DIR", "var/spool", "Slurm state and spool directories"),
    "log_dir": ("LLAMAPOD_LOG_DIR", "var/log", "daemon logs and the lifecycle log (<log_dir>/llamapod/lifecycle.log)"),
    "nvme_dir": ("LLAMAPOD_NVME_DIR", "opt/dlami/nvme", "local NVMe for container data and caches"),
    "ebs_dir": ("LLAMAPOD_EBS_DIR", "opt/sagemaker",
                "HyperPod's extra EBS volume (InstanceStorageConfigs): container data where there is no NVMe"),
    "munge_socket": ("LLAMAPOD_MUNGE_SOCKET", "run/munge/munge.socket.2", "munged's socket"),
    "systemd_dir": ("LLAMAPOD_SYSTEMD_DIR", "run/systemd/system", "exists when systemd runs the node"),
    "hyperpod_marker": ("LLAMAPOD_HYPERPOD_MARKER", "opt/sagemaker_cluster",
                        "exists on HyperPod nodes: HyperPod then owns slurm.conf and munge"),
}

# Files read from the lifecycle directory (the copy of the S3 prefix HyperPod runs on_create.sh from).
SCRIPT_FILES: dict[str, tuple[str, str, str]] = {
    "provisioning_parameters": ("LLAMAPOD_PROVISIONING_PARAMETERS", "provisioning_parameters.json",
                                "groups, FSx file system, users and options `llamapod up` wrote"),
}

# name -> (environment variable, default executable name, help).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "mount": ("LLAMAPOD_MOUNT", "mount", "mounts FSx for Lustre"),
    "systemctl": ("LLAMAPOD_SYSTEMCTL", "systemctl", "starts services in systemd mode"),
    "useradd": ("LLAMAPOD_USERADD", "useradd", "creates users"),
    "groupadd": ("LLAMAPOD_GROUPADD", "groupadd", "creates the users' groups"),
    "ssh_keygen": ("LLAMAPOD_SSH_KEYGEN", "ssh-keygen", "creates the cluster key pair and missing host keys"),
    "munged": ("LLAMAPOD_MUNGED", "munged", "munge daemon (Slurm authentication)"),
    "slurmctld": ("LLAMAPOD_SLURMCTLD", "slurmctld", "Slurm controller daemon"),
    "slurmd": ("LLAMAPOD_SLURMD", "slurmd", "Slurm node daemon"),
    "slurmdbd": ("LLAMAPOD_SLURMDBD", "slurmdbd", "Slurm accounting daemon"),
    "scontrol": ("LLAMAPOD_SCONTROL", "scontrol", "asks the controller about nodes"),
}

# name -> (environment variable, default seconds, help).
TIMEOUTS: dict[str, tuple[str, float, str]] = {
    "fsx_timeout": ("LLAMAPOD_FSX_TIMEOUT", 1800.0, "how long to wait for FSx to become mountable"),
    "slurm_timeout": ("LLAMAPOD_SLURM_TIMEOUT", 600.0, "how long to wait for the controller / registration"),
    "lock_timeout": ("LLAMAPOD_LOCK_TIMEOUT", 120.0, "how long to wait for a lock held by another node"),
    # The DLAMI's dlami-nvme.service may still be mounting NVMe when the lifecycle runs (the
    # reference's install_enroot_pyxis.sh waits up to 120 s for it for that reason).
    "nvme_timeout": ("LLAMAPOD_NVME_TIMEOUT", 120.0, "how long to wait for local NVMe to be mounted"),
}


@dataclass
class Settings:
    root: Path
    resource_config: Path
    provisioning_parameters: Path
    fsx_dir: Path
    etc_dir: Path
    slurm_dir: Path
    run_dir: Path
    spool_dir: Path
    log_dir: Path
    nvme_dir: Path
    ebs_dir: Path
    munge_socket: Path
    systemd_dir: Path
    hyperpod_marker: Path
    log_file: Path
    fsx_mode: str
    service_mode: str
    hostname: str
    address: str | None
    cluster_user: str | None  # overrides provisioning_parameters.json's cluster_user when set
    slurm_client_conf: Path
    commands: dict[str, str] = field(default_factory=dict)
    fsx_timeout: float = 1800.0
    slurm_timeout: float = 600.0
    lock_timeout: float = 120.0
    nvme_timeout: float = 120.0
    only: tuple[str, ...] = STEPS

    @property
    def slurm_conf(self) -> Path:
        return self.slurm_dir / "etc" / "slurm.conf"

    @property
    def shared_state_dir(self) -> Path:
        """Cluster-wide files every node reads (munge key, known hosts) live on /fsx."""
        return self.fsx_dir / ".llamapod"

    def under_root(self, node_path: str) -> Path:
        return self.root / node_path.lstrip("/")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="node_setup.py",
        description="Provision a HyperPod node for its role: /fsx, shared home, SSH, Slurm. Idempotent.",
    )
    parser.add_argument("--root", help="root prefix for every default path (env LLAMAPOD_ROOT; default /)")
    for name, (env, default, text) in {**PATH_SETTINGS, **SCRIPT_FILES}.items():
        parser.add_argument(_option(name), dest=name, help=f"{text} (env {env}; default {default})")
    for name, (env, default, text) in COMMANDS.items():
        parser.add_argument(_option(name + "_cmd"), dest=name + "_cmd", help=f"{text} (env {env}; default {default})")
    for name, (env, default, text) in TIMEOUTS.items():
        parser.add_argument(_option(name), dest=name, type=float, help=f"{text}, seconds (env {env}; default {default:.0f})")
    parser.add_argument("--log-file", help="lifecycle log (env LLAMAPOD_LOG_FILE; default <log_dir>/llamapod/lifecycle.log)")
    parser.add_argument("--fsx-mode", choices=("lustre", "directory"),
                        help="lustre: mount FSx; directory: --fsx-dir is already a directory shared by all nodes "
                             "(env LLAMAPOD_FSX_MODE; default lustre)")
    parser.add_argument("--service-mode", choices=("systemd", "direct"),
                        help="how daemons start (env LLAMAPOD_SERVICE_MODE; default systemd when it runs the node)")
    parser.add_argument("--hostname", help="this node's host name (env LLAMAPOD_HOSTNAME; default the kernel's)")
    parser.add_argument("--address", help="this node's address in resource_config.json "
                                          "(env LLAMAPOD_NODE_ADDRESS; default: found among the local addresses)")
    parser.add_argument("--cluster-user", help="user whose home moves to /fsx (env LLAMAPOD_CLUSTER_USER; "
                                               "default: cluster_user of provisioning_parameters.json)")
    parser.add_argument("--slurm-client-conf", help="slurm.conf that slurmd caches in configless mode "
                                                    "(env LLAMAPOD_SLURM_CLIENT_CONF; default /run/slurm/conf/slurm.conf)")
    parser.add_argument("--only", help=f"comma-separated steps to run (env LLAMAPOD_ONLY; default all: {','.join(STEPS)})")
    return parser


def _pick(cli_value, env_name: str, environ: dict[str, str]):
    if cli_value not in (None, ""):
        return cli_value
    return environ.get(env_name) or None


def resolve_command(name: str, override: str | None, slurm_dir: Path) -> str:
    """An override wins; Slurm's own tools come from <slurm_dir> when HyperPod installed them there."""
    if override:
        return override
    executable = COMMANDS[name][1]
    for candidate in (slurm_dir / "sbin" / executable, slurm_dir / "bin" / executable):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    for directory in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        candidate = Path(directory) / executable
        if candidate.is_file():
            return str(candidate)
    return shutil.which(executable) or executable


def load_settings(argv: list[str], environ: dict[str, str] | None = None) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    args = build_parser().parse_args(argv)
    root = Path(_pick(args.root, "LLAMAPOD_ROOT", environ) or "/")
    values: dict[str, object] = {"root": root}
    for name, (env, default, _) in PATH_SETTINGS.items():
        given = _pick(getattr(args, name), env, environ)
        values[name] = Path(given) if given else root / default
    for name, (env, default, _) in SCRIPT_FILES.items():
        given = _pick(getattr(args, name), env, environ)
        values[name] = Path(given) if given else HERE / default
    for name, (env, default, _) in TIMEOUTS.items():
        given = _pick(getattr(args, name), env, environ)
        try:
            values[name] = float(given) if given is not None else default
        except ValueError:
            raise SystemExit(f"{env} must be a number of seconds, got {given!r}") from None
    slurm_dir = values["slurm_dir"]
    values["commands"] = {
        name: resolve_command(name, _pick(getattr(args, name + "_cmd"), env, environ), slurm_dir)  # type: ignore[arg-type]
        for name, (env, _, _) in COMMANDS.items()
    }
    log_file = _pick(args.log_file, "LLAMAPOD_LOG_FILE", environ)
    values["log_file"] = Path(log_file) if log_file else values["log_dir"] / "llamapod" / "lifecycle.log"  # type: ignore[operator]
    values["fsx_mode"] = _pick(args.fsx_mode, "LLAMAPOD_FSX_MODE", environ) or "lustre"
    if values["fsx_mode"] not in ("lustre", "directory"):
        raise SystemExit(f"LLAMAPOD_FSX_MODE must be lustre or directory, got {values['fsx_mode']!r}")
    systemd_running = Path(values["systemd_dir"]).is_dir()  # type: ignore[arg-type]
    values["service_mode"] = _pick(args.service_mode, "LLAMAPOD_SERVICE_MODE", environ) or (
        "systemd" if systemd_running else "direct")
    if values["service_mode"] not in ("systemd", "direct"):
        raise SystemExit(f"LLAMAPOD_SERVICE_MODE must be systemd or direct, got {values['service_mode']!r}")
    values["hostname"] = _pick(args.hostname, "LLAMAPOD_HOSTNAME", environ) or socket.gethostname().split(".")[0]
    values["address"] = _pick(args.address, "LLAMAPOD_NODE_ADDRESS", environ)
    values["cluster_user"] = _pick(args.cluster_user, "LLAMAPOD_CLUSTER_USER", environ)
    values["slurm_client_conf"] = Path(
        _pick(args.slurm_client_conf, "LLAMAPOD_SLURM_CLIENT_CONF", environ) or "/run/slurm/conf/slurm.conf")
    only = _pick(args.only, "LLAMAPOD_ONLY", environ)
    if only:
        chosen = tuple(s.strip() for s in only.split(",") if s.strip())
        unknown = [s for s in chosen if s not in STEPS]
        if unknown:
            raise SystemExit(f"unknown step(s) {', '.join(unknown)}; steps are {', '.join(STEPS)}")
        values["only"] = chosen
    return Settings(**values)  # type: ignore[arg-type]

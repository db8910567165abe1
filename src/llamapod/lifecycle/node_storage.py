"""Storage steps: FSx for Lustre at /fsx, and container data kept off the root volume."""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from node_cluster import Cluster, Node
from node_settings import Settings
from node_system import StepError, TransientError, replace_managed_block, retry, run, write_file

log = logging.getLogger("llamapod.lifecycle")

LUSTRE_OPTIONS = "noatime,flock"
# _netdev + automount: a reboot does not hang on /fsx before the network is up.
FSTAB_OPTIONS = "defaults,noatime,flock,_netdev,x-systemd.automount,x-systemd.requires=network-online.target"


@dataclass(frozen=True)
class MountEntry:
    source: str
    target: str
    fstype: str
    options: tuple[str, ...] = ()


def _unescape(field: str) -> str:
    """The kernel writes spaces and tabs in mount paths as octal escapes (\\040)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1:i + 4]) == 3 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def read_mount_table(path: Path) -> list[MountEntry]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise StepError(f"cannot read the mount table {path}: {exc.strerror}") from None
    entries = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3:
            options = tuple(fields[3].split(",")) if len(fields) >= 4 else ()
            entries.append(MountEntry(_unescape(fields[0]), _unescape(fields[1]), fields[2], options))
    return entries


def mounted_at(table: Path, target: Path) -> MountEntry | None:
    """The last mount on ``target`` (later mounts hide earlier ones)."""
    wanted = os.path.realpath(target)
    found = None
    for entry in read_mount_table(table):
        if entry.target == wanted:
            found = entry
    return found


def lustre_source(cluster: Cluster) -> str:
    return f"{cluster.fsx_dns_name}@tcp:/{cluster.fsx_mountname}"


@dataclass(frozen=True)
class LustreSource:
    """A Lustre mount source, ``<nid>[:<nid>...]:/<fsname>``, each nid ``<address>@<network>``."""

    addresses: tuple[str, ...]
    mountname: str

    @classmethod
    def parse(cls, source: str) -> "LustreSource | None":
        if ":/" not in source:
            return None
        nids, mountname = source.rsplit(":/", 1)
        addresses = []
        for nid in nids.replace(",", ":").split(":"):
            address, at, network = nid.partition("@")
            if not at or not address or not network.startswith(("tcp", "o2ib")):
                return None
            addresses.append(address)
        return cls(tuple(addresses), mountname)


def resolve_ipv4(hostname: str) -> set[str]:
    """The IPv4 addresses ``hostname`` resolves to here (empty when it does not resolve)."""
    try:
        answers = socket.getaddrinfo(hostname, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return set()
    return {answer[4][0] for answer in answers}


def is_our_lustre_mount(entry: MountEntry, cluster: Cluster) -> bool:
    """True when ``entry`` is the cluster's FSx file system, in either form the mount table shows.

    mount.lustre replaces the DNS name with its IP address before it calls mount(2) (the
    kernel cannot resolve names; Lustre's lustre/utils/mount_lustre.c), so /proc/mounts says
    ``<ip>@tcp:/<mountname>`` after a mount made from ``<dns>@tcp:/<mountname>``. The mount
    name identifies the file system; the address must be the DNS name or what it resolves to.
    """
    if entry.fstype != "lustre":
        return False
    source = LustreSource.parse(entry.source)
    if source is None or source.mountname != cluster.fsx_mountname:
        return False
    if cluster.fsx_dns_name in source.addresses:
        return True
    resolved = resolve_ipv4(cluster.fsx_dns_name)
    if not resolved:
        # The mount name (chosen by FSx for this file system) is what identifies it; a name
        # the resolver cannot answer for right now must not make a re-run fail.
        log.warning("%s does not resolve here; %s is taken for this cluster's file system by its mount name %s",
                    cluster.fsx_dns_name, entry.source, cluster.fsx_mountname)
        return True
    return any(address in resolved for address in source.addresses)


def ensure_fsx(settings: Settings, cluster: Cluster, mount_table: Path) -> None:
    if settings.fsx_mode == "directory":
        if not settings.fsx_dir.is_dir():
            raise StepError(f"shared directory mode: {settings.fsx_dir} does not exist or is not a directory")
        log.info("shared directory mode: using %s as /fsx without mounting", settings.fsx_dir)
    else:
        _mount_lustre(settings, cluster, mount_table)
        _persist_in_fstab(settings, lustre_source(cluster))
    check_writable(settings.fsx_dir, settings.hostname)


def _mount_lustre(settings: Settings, cluster: Cluster, mount_table: Path) -> None:
    source = lustre_source(cluster)
    current = mounted_at(mount_table, settings.fsx_dir)
    if current is not None:
        if is_our_lustre_mount(current, cluster):
            if "flock" not in current.options:
                # Without flock, Lustre's locks are refused (or, with localflock, seen by this
                # node only): the cluster locks that keep nodes from racing on /fsx would not hold.
                raise StepError(
                    f"{settings.fsx_dir} is mounted without the flock option ({','.join(current.options)}): locks "
                    f"on /fsx would not be seen by the other nodes; unmount it and re-run (it mounts with "
                    f"-o {LUSTRE_OPTIONS})")
            log.info("%s already mounted at %s (as %s)", source, settings.fsx_dir, current.source)
            return
        raise StepError(
            f"{settings.fsx_dir} already has {current.source} ({current.fstype}) mounted, not {source}; "
            f"unmount it and re-run")
    settings.fsx_dir.mkdir(parents=True, exist_ok=True)

    def attempt() -> None:
        result = run([settings.commands["mount"], "-t", "lustre", "-o", LUSTRE_OPTIONS, source, str(settings.fsx_dir)],
                     check=False, timeout=300)
        if not result.ok:
            # FSx is created in parallel with the cluster and refuses mounts until it is AVAILABLE.
            raise TransientError(result.summary())

    retry(attempt, what=f"mount {source} at {settings.fsx_dir}", timeout=settings.fsx_timeout,
          first_delay=2.0, max_delay=30.0)
    log.info("mounted %s at %s", source, settings.fsx_dir)


def _persist_in_fstab(settings: Settings, source: str) -> None:
    fstab = settings.etc_dir / "fstab"
    text = fstab.read_text() if fstab.exists() else ""
    line = f"{source} {settings.fsx_dir} lustre {FSTAB_OPTIONS} 0 0"
    if write_file(fstab, replace_managed_block(text, line, "llamapod fsx"), mode=0o644):
        log.info("recorded the /fsx mount in %s", fstab)


def check_writable(directory: Path, hostname: str) -> None:
    """Prove the shared directory takes writes before anything else relies on it."""
    probe = directory / ".llamapod" / f"write-check-{hostname}-{os.getpid()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        payload = f"{hostname} {os.getpid()}\n"
        with open(probe, "w") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        if probe.read_text() != payload:
            raise StepError(f"{directory} returned different data than was written")
    except OSError as exc:
        raise StepError(f"{directory} is not writable: {exc.strerror}") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    log.info("%s is writable", directory)


# --- containers ------------------------------------------------------------------------------


def container_volume(settings: Settings, mount_table: Path) -> Path:
    """Where container data goes: local NVMe, else HyperPod's extra EBS volume, never the root volume.

    The DLAMI's dlami-nvme.service mounts NVMe while the node boots, possibly after the
    lifecycle started, so its mount is waited for (bounded), as the reference's
    install_enroot_pyxis.sh does; without it the reference falls back to /opt/sagemaker.
    """
    def nvme_mounted() -> None:
        if mounted_at(mount_table, settings.nvme_dir) is None:
            raise TransientError(f"{settings.nvme_dir} is not mounted yet")

    try:
        retry(nvme_mounted, what=f"local NVMe at {settings.nvme_dir}", timeout=settings.nvme_timeout,
              first_delay=1.0, max_delay=5.0)
        return settings.nvme_dir
    except StepError:
        if mounted_at(mount_table, settings.ebs_dir) is not None:
            log.info("containers: no local NVMe mounted; using HyperPod's EBS volume %s", settings.ebs_dir)
            return settings.ebs_dir
    raise StepError(
        f"containers: neither {settings.nvme_dir} nor {settings.ebs_dir} is a mounted file system; Docker and "
        f"enroot data would land on the root volume. Use an instance type with local NVMe, give the group an "
        f"EBS volume (InstanceStorageConfigs) or disable containers")


def container_paths(settings: Settings, mount_table: Path) -> dict[str, Path]:
    """Docker and enroot data on local NVMe (or HyperPod's EBS volume); enroot's image cache on
    /fsx so nodes share pulls.

    Docker's overlay2 cannot live on Lustre, so without either volume there is no safe place
    for it and the step refuses rather than filling the 100 GB root volume.
    """
    volume = container_volume(settings, mount_table)
    return {
        "docker": volume / "docker",
        "enroot_data": volume / "enroot" / "data",
        "enroot_runtime": volume / "enroot" / "runtime",
        "enroot_temp": volume / "enroot" / "tmp",
        "enroot_cache": settings.shared_state_dir / "enroot-cache",
    }


# enroot runs as the job's user (through pyxis) and creates its per-user directories and cache
# entries itself: these must take every user's writes, sticky like /tmp (the reference's
# install_enroot_pyxis.sh makes them 1777).
ENROOT_SHARED = ("enroot_data", "enroot_runtime", "enroot_temp", "enroot_cache")


def docker_daemon_json(current: str, data_root: Path) -> str:
    config = json.loads(current) if current.strip() else {}
    config["data-root"] = str(data_root)
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def enroot_conf(paths: dict[str, Path]) -> str:
    return (
        "# Written by llamapod: enroot data on local NVMe, image cache shared on /fsx.\n"
        f"ENROOT_RUNTIME_PATH {paths['enroot_runtime']}/user-$(id -u)\n"
        f"ENROOT_DATA_PATH {paths['enroot_data']}/user-$(id -u)\n"
        f"ENROOT_TEMP_PATH {paths['enroot_temp']}\n"
        f"ENROOT_CACHE_PATH {paths['enroot_cache']}\n"
    )


def find_pyxis(settings: Settings) -> Path | None:
    for lib in (settings.slurm_dir / "lib" / "slurm", settings.root / "usr/local/lib/slurm",
                settings.root / "usr/lib/x86_64-linux-gnu/slurm-wlm", settings.root / "usr/lib/slurm"):
        candidate = lib / "spank_pyxis.so"
        if candidate.is_file():
            return candidate
    return None


def ensure_containers(settings: Settings, cluster: Cluster, node: Node, mount_table: Path) -> None:
    if not cluster.containers:
        log.info("containers not requested (provisioning_parameters.json \"containers\": false)")
        return
    if node.role == "worker":
        _move_container_data(settings, mount_table)
    else:
        # Jobs, and so containers, run on workers only; the controller (often without local
        # NVMe) and login nodes need just pyxis, for `srun --container-image` submitted there.
        log.info("containers: no Docker or enroot data on a %s node; pyxis only", node.role)
    _enable_pyxis(settings)


def _move_container_data(settings: Settings, mount_table: Path) -> None:
    paths = container_paths(settings, mount_table)
    for path in paths.values():
        path.mkdir(parents=True, exist_ok=True)
    for name in ENROOT_SHARED:
        os.chmod(paths[name], 0o1777)  # nosec B103: shared folders with the sticky bit, like /tmp
    daemon_json = settings.etc_dir / "docker" / "daemon.json"
    current = daemon_json.read_text() if daemon_json.exists() else ""
    try:
        wanted = docker_daemon_json(current, paths["docker"])
    except json.JSONDecodeError as exc:
        raise StepError(f"{daemon_json} is not valid JSON ({exc.msg}); fix or remove it and re-run") from None
    if write_file(daemon_json, wanted):
        log.info("Docker data-root set to %s; restarting Docker", paths["docker"])
        result = run([settings.commands["systemctl"], "restart", "docker"], check=False, timeout=180)
        if not result.ok:
            raise StepError(f"Docker did not restart with data-root {paths['docker']}: {result.summary()}")
    write_file(settings.etc_dir / "enroot" / "enroot.conf", enroot_conf(paths))


def _enable_pyxis(settings: Settings) -> None:
    pyxis = find_pyxis(settings)
    if pyxis is None:
        log.warning("pyxis (spank_pyxis.so) is not installed: srun --container-image will not be available")
        return
    plugstack = settings.slurm_dir / "etc" / "plugstack.conf.d" / "pyxis.conf"
    write_file(plugstack, f"required {pyxis}\n")
    main = settings.slurm_dir / "etc" / "plugstack.conf"
    text = main.read_text() if main.exists() else ""
    write_file(main, replace_managed_block(text, f"include {plugstack.parent}/*.conf", "llamapod pyxis"))

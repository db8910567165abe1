"""User steps: the cluster user and extra users, their shared homes on /fsx, and SSH between nodes."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from node_cluster import Cluster, Node
from node_settings import Settings
from node_system import StepError, file_lock, replace_managed_block, run, write_file
from provisioning import rule_problem

log = logging.getLogger("llamapod.lifecycle")



@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


@dataclass(frozen=True)
class UserRequest:
    name: str
    uid: int | None
    gid: int | None = None  # the user's own group; the uid when None


def read_passwd(etc_dir: Path) -> dict[str, PasswdEntry]:
    path = etc_dir / "passwd"
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise StepError(f"cannot read {path}: {exc.strerror}") from None
    entries = {}
    for line in lines:
        fields = line.split(":")
        if len(fields) == 7 and fields[2].isdigit() and fields[3].isdigit():
            entries[fields[0]] = PasswdEntry(fields[0], int(fields[2]), int(fields[3]), fields[5], fields[6])
    return entries


def _prefix_args(settings: Settings) -> list[str]:
    """useradd/groupadd edit <prefix>/etc/* without chrooting, so they work on a test root."""
    etc = settings.etc_dir
    if etc == Path("/etc"):
        return []
    if etc.name != "etc":
        raise StepError(f"useradd needs an etc directory named 'etc' under a prefix, got {etc}")
    return ["--prefix", str(etc.parent)]


def ensure_user(settings: Settings, request: UserRequest, home: Path) -> PasswdEntry:
    existing = read_passwd(settings.etc_dir).get(request.name)
    if existing is not None:
        if request.uid is not None and existing.uid != request.uid:
            raise StepError(
                f"user {request.name} exists with uid {existing.uid}, but shared_users in provisioning_parameters.json "
                f"asks for {request.uid}; fix cluster.shared_users or the account")
        return existing
    prefix = _prefix_args(settings)
    group_args = []
    if request.uid is not None:
        groups = (settings.etc_dir / "group").read_text().splitlines()
        if not any(g.split(":")[0] == request.name for g in groups):
            gid = request.uid if request.gid is None else request.gid
            run([settings.commands["groupadd"], *prefix, "-g", str(gid), request.name])
        group_args = ["-u", str(request.uid), "-g", request.name]
    else:
        group_args = ["-U"]
    # -M: the home lives on /fsx and is seeded by the home step, possibly by another node.
    run([settings.commands["useradd"], *prefix, *group_args, "-M", "-d", str(home), "-s", "/bin/bash", request.name])
    log.info("created user %s", request.name)
    return read_passwd(settings.etc_dir)[request.name]


def cluster_users(settings: Settings, cluster: Cluster) -> list[UserRequest]:
    """The cluster user (whose uid the image decides) and the shared users (fixed uids, so
    files on /fsx have the same owner on every node), as provisioning_parameters.json lists them."""
    main = settings.cluster_user or cluster.cluster_user
    if settings.cluster_user and rule_problem("user", settings.cluster_user):
        raise StepError(f"--cluster-user must be {rule_problem('user', settings.cluster_user)}, "
                        f"found {settings.cluster_user!r}")
    extras = [UserRequest(user.name, user.uid) for user in cluster.shared_users if user.name != main]
    return [UserRequest(main, None), *extras]


def id_record(settings: Settings, name: str) -> Path:
    """Where the uid and gid of a user without a fixed uid are kept for every node: on /fsx."""
    return settings.shared_state_dir / "users" / f"{name}.ids"


def _recorded_ids(path: Path) -> tuple[int, int] | None:
    try:
        uid, gid = (int(part) for part in path.read_text().split(":"))
    except FileNotFoundError:
        return None
    except ValueError:
        raise StepError(f"{path} is not <uid>:<gid>; remove it only if no file on /fsx belongs to that user yet") from None
    return uid, gid


def _same_ids_everywhere(settings: Settings, request: UserRequest, home: Path) -> PasswdEntry:
    """A user whose uid the image decides gets the same uid on every node, as files on /fsx need.

    useradd picks the next free uid, which depends on what each image already has, so the
    first node to settle the user records its uid and gid on /fsx (under a cluster lock) and
    every other node, replacement nodes included, creates the user with those numbers.
    """
    record = id_record(settings, request.name)
    with file_lock(settings.shared_state_dir / "users.lock", timeout=settings.lock_timeout, what="cluster user ids"):
        recorded = _recorded_ids(record)
        existing = read_passwd(settings.etc_dir).get(request.name)
        if existing is not None and recorded is not None and (existing.uid, existing.gid) != recorded:
            raise StepError(
                f"user {request.name} has uid {existing.uid} (gid {existing.gid}) on this node but "
                f"{recorded[0]} (gid {recorded[1]}) on the cluster's other nodes ({record}): files on /fsx would "
                f"change owner; give this image the same ids or list the user in shared_users with a fixed uid")
        if existing is None and recorded is not None:
            request = UserRequest(request.name, recorded[0], recorded[1])
        entry = ensure_user(settings, request, home)
        if recorded is None:
            write_file(record, f"{entry.uid}:{entry.gid}\n", mode=0o644)
            log.info("recorded %s's ids %d:%d for the other nodes in %s", entry.name, entry.uid, entry.gid, record)
    return entry


def ensure_users(settings: Settings, cluster: Cluster) -> list[PasswdEntry]:
    entries = []
    for request in cluster_users(settings, cluster):
        home = settings.fsx_dir / request.name
        if request.uid is None:
            entries.append(_same_ids_everywhere(settings, request, home))
        else:
            entries.append(ensure_user(settings, request, home))
    log.info("users in place: %s", ", ".join(f"{e.name} (uid {e.uid})" for e in entries))
    return entries


# --- shared home ------------------------------------------------------------------------------


@contextlib.contextmanager
def passwd_lock(etc_dir: Path, timeout: float) -> Iterator[None]:
    """Take the locks every shadow-utils tool honours before touching /etc/passwd.

    lckpwdf(3) is an fcntl lock on /etc/.pwd.lock; useradd/usermod additionally create
    /etc/passwd.lock exclusively. Holding both keeps a concurrent useradd (or a cloud-init
    run) from interleaving with our rewrite.
    """
    with file_lock(etc_dir / ".pwd.lock", timeout=timeout, what="passwd database"):
        marker = etc_dir / "passwd.lock"
        deadline = time.monotonic() + timeout
        while True:
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, f"{os.getpid()}".encode())
                os.close(fd)
                break
            except FileExistsError:
                if _stale_lock(marker):
                    with contextlib.suppress(FileNotFoundError):
                        marker.unlink()
                    continue
                if time.monotonic() >= deadline:
                    raise StepError(f"{marker} is held by another process; retry when it is gone") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()


def _stale_lock(marker: Path) -> bool:
    try:
        pid = int(marker.read_text().strip() or "0")
    except (OSError, ValueError):
        return True
    return pid <= 0 or not Path(f"/proc/{pid}").exists()


def set_home_directory(etc_dir: Path, name: str, home: Path, timeout: float) -> bool:
    """Point ``name``'s passwd entry at ``home`` by an atomic rewrite of /etc/passwd.

    ``usermod -d`` refuses while the user has processes (the SSM session HyperPod opens as
    ubuntu, a login on the head node). Changing the home field is safe for running
    processes: they keep their current directory and $HOME until their next login. The file
    is replaced by rename under the shadow-utils locks, so readers see the old or the new
    passwd, never a partial one.
    """
    path = etc_dir / "passwd"
    with passwd_lock(etc_dir, timeout):
        lines = path.read_text().splitlines()
        changed = False
        for i, line in enumerate(lines):
            fields = line.split(":")
            if len(fields) == 7 and fields[0] == name and fields[5] != str(home):
                fields[5] = str(home)
                lines[i] = ":".join(fields)
                changed = True
        if changed:
            st = path.stat()
            write_file(path, "\n".join(lines) + "\n", mode=st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid)
    return changed


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    os.lchown(top, uid, gid)
    for directory, dirs, files in os.walk(top):
        for name in dirs + files:
            os.lchown(os.path.join(directory, name), uid, gid)


def seed_shared_home(settings: Settings, entry: PasswdEntry, target: Path) -> None:
    """Create ``target`` once, from the user's current home (or /etc/skel), atomically.

    Every node runs this at the same time; the copy goes to a private temporary name and is
    renamed into place, so exactly one copy wins and nobody ever sees a half-copied home.
    """
    if target.is_dir():
        return
    current = Path(entry.home)
    source = current if current.is_dir() and current != target else settings.etc_dir / "skel"
    staging = target.parent / f".{target.name}.seed-{settings.hostname}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    if source.is_dir():
        shutil.copytree(source, staging, symlinks=True)
    else:
        staging.mkdir()
    os.chmod(staging, 0o750)  # nosec B103: 0o750 gives nothing to other users
    _chown_tree(staging, entry.uid, entry.gid)
    try:
        os.rename(staging, target)
        log.info("created %s from %s", target, source if source.is_dir() else "an empty directory")
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():
            raise StepError(f"cannot create {target}") from None
    for stale in target.parent.glob(f".{target.name}.seed-{settings.hostname}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted earlier run on this node


def ensure_shared_homes(settings: Settings, cluster: Cluster) -> None:
    entries = read_passwd(settings.etc_dir)
    for request in cluster_users(settings, cluster):
        entry = entries.get(request.name)
        if entry is None:
            raise StepError(f"user {request.name} does not exist; run the users step first")
        target = settings.fsx_dir / request.name
        seed_shared_home(settings, entry, target)
        if set_home_directory(settings.etc_dir, request.name, target, settings.lock_timeout):
            log.info("home of %s is now %s", request.name, target)
        else:
            log.info("home of %s already %s", request.name, target)


# --- SSH ------------------------------------------------------------------------------------------


def host_public_key(settings: Settings) -> str:
    """This node's ed25519 host key, created if the image has none yet (sshd reads it on start)."""
    key = settings.etc_dir / "ssh" / "ssh_host_ed25519_key"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        run([settings.commands["ssh_keygen"], "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    pub = key.with_name(key.name + ".pub")
    if not pub.exists():
        result = run([settings.commands["ssh_keygen"], "-y", "-f", str(key)])
        write_file(pub, result.stdout, mode=0o644)
    fields = pub.read_text().split()
    if len(fields) < 2:
        raise StepError(f"{pub} is not an SSH public key")
    return f"{fields[0]} {fields[1]}"


def ensure_key_pair(settings: Settings, entry: PasswdEntry, ssh_dir: Path, comment: str) -> str:
    """One ed25519 pair per user for the whole cluster, on /fsx; returns the public key line.

    Called under the cluster SSH lock: exactly one node generates, the others find it.
    """
    private = ssh_dir / "id_ed25519"
    public = ssh_dir / "id_ed25519.pub"
    if not private.exists():
        staging = ssh_dir / f".keygen-{os.getpid()}"
        # Callers hold the cluster SSH lock, so any staged key here is from an interrupted run.
        for leftover in ssh_dir.glob(".keygen-*"):
            leftover.unlink()
        run([settings.commands["ssh_keygen"], "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(staging)])
        os.chown(staging, entry.uid, entry.gid)
        os.rename(staging, private)  # the private key is the source of truth; .pub is derived below
        with contextlib.suppress(FileNotFoundError):
            staging.with_name(staging.name + ".pub").unlink()
        log.info("created the cluster key pair %s", private)
    if not public.exists():
        result = run([settings.commands["ssh_keygen"], "-y", "-f", str(private)])
        write_file(public, f"{result.stdout.strip()} {comment}\n", mode=0o644, uid=entry.uid, gid=entry.gid)
    os.chmod(private, 0o600)
    os.chown(private, entry.uid, entry.gid)
    return public.read_text().strip()


def _known_host_line(node: Node, host_key: str) -> str:
    return f"{node.slurm_name},{node.address} {host_key}"


def update_known_hosts(path: Path, node: Node, host_key: str) -> bool:
    """Replace this node's line: a replacement node has a new host key under the old address."""
    lines = path.read_text().splitlines() if path.exists() else []
    names = {node.slurm_name, node.address}
    kept = [line for line in lines if not names & set(line.split(" ", 1)[0].split(","))]
    return write_file(path, "\n".join(sorted(kept + [_known_host_line(node, host_key)])) + "\n", mode=0o644)


def ssh_client_block(cluster: Cluster, key: Path, known_hosts: Path) -> str:
    hosts = sorted({n.slurm_name for n in cluster.nodes} | {n.address for n in cluster.nodes})
    return (
        f"Host {' '.join(hosts)}\n"
        f"    IdentityFile {key}\n"
        f"    UserKnownHostsFile {known_hosts}\n"
        "    StrictHostKeyChecking yes\n"
        "    IdentitiesOnly yes\n"
    )


def ensure_ssh(settings: Settings, cluster: Cluster, node: Node) -> None:
    known_hosts = settings.shared_state_dir / "ssh_known_hosts"
    host_key = host_public_key(settings)
    entries = read_passwd(settings.etc_dir)
    with file_lock(settings.shared_state_dir / "ssh.lock", timeout=settings.lock_timeout, what="cluster SSH setup"):
        if update_known_hosts(known_hosts, node, host_key):
            log.info("known hosts: added %s (%s)", node.slurm_name, node.address)
        for request in cluster_users(settings, cluster):
            entry = entries.get(request.name)
            if entry is None:
                raise StepError(f"user {request.name} does not exist; run the users step first")
            home = Path(entry.home)
            ssh_dir = home / ".ssh"
            ssh_dir.mkdir(mode=0o700, exist_ok=True)
            os.chmod(ssh_dir, 0o700)
            os.chown(ssh_dir, entry.uid, entry.gid)
            public = ensure_key_pair(settings, entry, ssh_dir, f"{request.name}@{cluster.name}")
            authorized = ssh_dir / "authorized_keys"
            lines = authorized.read_text().splitlines() if authorized.exists() else []
            if public not in lines:
                lines.append(public)
            write_file(authorized, "\n".join(lines) + "\n", mode=0o600, uid=entry.uid, gid=entry.gid)
            config = ssh_dir / "config"
            text = config.read_text() if config.exists() else ""
            block = ssh_client_block(cluster, ssh_dir / "id_ed25519", known_hosts)
            if write_file(config, replace_managed_block(text, block, "llamapod cluster"), mode=0o600,
                          uid=entry.uid, gid=entry.gid):
                log.info("SSH client config for %s written to %s", request.name, config)
            log.info("SSH for %s: key %s authorized, %d cluster hosts known", request.name,
                     ssh_dir / "id_ed25519", len(known_hosts.read_text().splitlines()))

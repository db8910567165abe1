"""Builds what HyperPod gives a node: a root with the AMI's users, /opt/ml/config, and a copy
of the lifecycle prefix (on_create.sh, node_*.py, provisioning.py and the
provisioning_parameters.json that `llamapod up` would upload for the cluster below)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from llamapod.cloud import plan
from llamapod.config.cluster import spec_from_table
from llamapod.lifecycle import upload_files

CONTROLLER = ("ip-10-1-0-1", "10.1.0.1")
WORKERS = (("ip-10-1-0-2", "10.1.0.2"),)
LOGIN = ("ip-10-1-0-3", "10.1.0.3")
UBUNTU_UID = 1000
EXTRA_USER, EXTRA_UID = "alice", 2001
# What create_file_system returns, and the address the VPC's DNS gives its name.
FSX_DNS, FSX_MOUNTNAME, FSX_ADDRESS = "fs-0123456789abcdef0.fsx.us-east-1.amazonaws.com", "abcdefgh", "10.1.200.5"

# The [cluster] table of the llamapod.toml these nodes were built from.
CLUSTER = {
    "name": "llama-test",
    "login": {"name": "login-group", "instance_type": "ml.m5.4xlarge"},
    "workers": [{"name": "worker-group-1", "instance_type": "ml.g5.48xlarge", "count": 1, "partition": "dev"},
                {"name": "spare-group", "instance_type": "ml.g5.48xlarge", "count": 1, "partition": "spare"}],
    "shared_users": [{"name": EXTRA_USER, "uid": EXTRA_UID}],
}


def resource_config() -> dict:
    """The shape HyperPod writes to /opt/ml/config/resource_config.json (FACTS.md)."""
    return {
        "ClusterConfig": {"ClusterArn": "arn:aws:sagemaker:us-east-1:123456789012:cluster/abcdefghijkl",
                          "ClusterName": "llama-test"},
        "InstanceGroups": [
            {"Name": "controller-machine", "InstanceType": "ml.c5.xlarge",
             "Instances": [{"InstanceName": "controller-machine-1", "CustomerIpAddress": CONTROLLER[1],
                            "InstanceId": "i-0000000000000001"}]},
            {"Name": "login-group", "InstanceType": "ml.m5.4xlarge",
             "Instances": [{"InstanceName": "login-group-1", "CustomerIpAddress": LOGIN[1],
                            "InstanceId": "i-0000000000000009"}]},
            {"Name": "worker-group-1", "InstanceType": "ml.g5.48xlarge",
             "Instances": [{"InstanceName": f"worker-group-1-{i + 1}", "CustomerIpAddress": address,
                            "InstanceId": f"i-00000000000000{i + 2:02d}"} for i, (_, address) in enumerate(WORKERS)]},
            {"Name": "spare-group", "InstanceType": "ml.g5.48xlarge", "Instances": None},
        ],
    }


def provisioning_parameters(**cluster: object) -> str:
    """The provisioning_parameters.json `llamapod up` uploads for CLUSTER (with ``cluster`` changes)."""
    spec = spec_from_table({**CLUSTER, **cluster})
    return plan.provisioning_file(spec, FSX_DNS, FSX_MOUNTNAME)


def write_lifecycle_dir(base: Path, **cluster: object) -> Path:
    """What HyperPod copies from the bucket prefix: the files `upload_files()` lists, and the
    provisioning_parameters.json plan writes for CLUSTER (with ``cluster`` changes)."""
    target = base / "lifecycle"
    target.mkdir(parents=True, exist_ok=True)
    for local, key in upload_files():
        shutil.copy2(local, target / key)
    (target / "provisioning_parameters.json").write_text(provisioning_parameters(**cluster))
    return target


def fsx_resolves(node, base: Path) -> None:
    """The VPC's DNS inside ``node``: the file system's name resolves to its address."""
    hosts = base / f"hosts-{node.hostname}"
    hosts.write_text(f"127.0.0.1 localhost\n{node.address} {node.hostname}\n{FSX_ADDRESS} {FSX_DNS}\n")
    node.bind(hosts, "/etc/hosts")


def lustre_mount_table(path: Path, fsx_dir: Path, source: str) -> Path:
    """/proc/mounts as the kernel shows it after mount.lustre: the source with the IP address,
    never the DNS name (mount.lustre resolves it first: the kernel cannot)."""
    path.write_text("sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\n"
                    "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n"
                    "/dev/nvme0n1p1 / ext4 rw,relatime,discard 0 0\n"
                    f"{source} {fsx_dir} lustre rw,flock,lazystatfs,encrypt 0 0\n")
    return path


def make_node_root(base: Path, name: str) -> Path:
    """A node's root as the AMI leaves it: root, sshd and ubuntu users, ubuntu's home in /home."""
    root = base / name
    etc = root / "etc"
    (etc / "skel").mkdir(parents=True)
    for item in Path("/etc/skel").iterdir():
        shutil.copy2(item, etc / "skel" / item.name)
    home = root / "home" / "ubuntu"
    home.mkdir(parents=True)
    (home / ".bashrc").write_text("# the AMI's bashrc\n")
    (home / "notes.txt").write_text("kept when the home moves to /fsx\n")
    os.chown(home, UBUNTU_UID, UBUNTU_UID)
    for item in home.iterdir():
        os.chown(item, UBUNTU_UID, UBUNTU_UID)
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        "sshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n"
        f"ubuntu:x:{UBUNTU_UID}:{UBUNTU_UID}:Ubuntu:{home}:/bin/bash\n")
    (etc / "group").write_text(f"root:x:0:\nnogroup:x:65534:\nubuntu:x:{UBUNTU_UID}:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\nubuntu:!:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\nnogroup:*::\nubuntu:!::\n")
    os.chmod(etc / "shadow", 0o640)
    os.chmod(etc / "gshadow", 0o640)
    config = root / "opt" / "ml" / "config"
    config.mkdir(parents=True)
    (config / "resource_config.json").write_text(json.dumps(resource_config(), indent=2))
    return root


def lifecycle_env(root: Path, fsx: Path, **extra: str) -> dict[str, str]:
    """Point every path at the test root; /fsx is one directory all nodes share."""
    env = {
        "LLAMAPOD_ROOT": str(root),
        "LLAMAPOD_FSX_DIR": str(fsx),
        "LLAMAPOD_FSX_MODE": "directory",
        "LLAMAPOD_SERVICE_MODE": "direct",
        # Each namespace node has a private /run, so the daemons' runtime files use the real paths.
        "LLAMAPOD_RUN_DIR": "/run",
        "LLAMAPOD_MUNGE_SOCKET": "/run/munge/munge.socket.2",
        "LLAMAPOD_SLURM_TIMEOUT": "60",
        "LLAMAPOD_LOCK_TIMEOUT": "30",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update(extra)
    return env


def on_create(lifecycle_dir: Path) -> list[str]:
    return ["bash", str(lifecycle_dir / "on_create.sh")]


def run_until_line_then_kill(node, argv: list[str], env: dict[str, str], marker: str, timeout: float = 60) -> str:
    """Start the lifecycle, SIGKILL it (and its children) as soon as ``marker`` is logged."""
    proc = node.popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        if time.monotonic() > deadline:
            break
    proc.stdout.close()
    proc.wait(timeout=30)
    return "".join(seen)


VOLATILE = ("var/log", "var/spool", "var/lib/munge", "write-check", ".pwd.lock", "munge.lock", "ssh.lock")


def snapshot(*tops: Path, contents: bool = True) -> dict[str, tuple]:
    """Path -> (kind, mode, uid, gid[, content hash]) for every file under ``tops``.

    Logs and daemon state change on every start by design, so they are left out.
    """
    state: dict[str, tuple] = {}
    for top in tops:
        for directory, dirs, files in os.walk(top):
            for name in dirs + files:
                path = Path(directory) / name
                rel = f"{top.name}/{path.relative_to(top)}"
                if any(v in rel for v in VOLATILE):
                    continue
                st = path.lstat()
                entry: tuple = ("dir" if path.is_dir() else "file", st.st_mode & 0o7777, st.st_uid, st.st_gid)
                if contents and path.is_file() and not path.is_symlink():
                    entry += (hashlib.sha256(path.read_bytes()).hexdigest(),)
                state[rel] = entry
    return state

"""Three nodes as network namespaces (controller, worker and login node, each with its address
from resource_config.json, one shared directory as /fsx), each booting with the lifecycle at
the same time, as HyperPod boots them. slurm.conf lists no login node, as HyperPod's does not:
the login node must still boot, run no slurmd, and have working Slurm client commands.
Afterwards Slurm runs a job on the worker, submitted from the login node, and the cluster user
reaches the worker from the login node over SSH with the generated key, through a real
OpenSSH server checking the generated known hosts."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from fixtures.netns import processes_in_net_ns
from integration.lifecycle.lifecycle_helpers import (
    CONTROLLER,
    LOGIN,
    UBUNTU_UID,
    WORKERS,
    lifecycle_env,
    make_node_root,
    on_create,
    write_lifecycle_dir,
)

pytestmark = [pytest.mark.netns, pytest.mark.slurm, pytest.mark.sshd]

SSHD_CONFIG = (
    # PAM as on Ubuntu: the AMI's ubuntu account has a locked password ("!"), which only
    # blocks key logins when sshd runs without PAM.
    "UsePAM yes\n"
    "PasswordAuthentication no\n"
    "KbdInteractiveAuthentication no\n"
    "PubkeyAuthentication yes\n"
    "PermitRootLogin no\n"
)


def start_sshd(node, root: Path, base: Path) -> None:
    """sshd inside the node, seeing the node's own users (its passwd bound over /etc/passwd)."""
    for name in ("passwd", "group", "shadow"):
        node.bind(root / "etc" / name, f"/etc/{name}")
    config = base / f"sshd_config-{node.hostname}"
    config.write_text(SSHD_CONFIG)
    result = node.run(["/usr/sbin/sshd", "-f", str(config), "-h", str(root / "etc/ssh/ssh_host_ed25519_key"),
                       "-o", f"ListenAddress={node.address}", "-o", "PidFile=/run/sshd.pid",
                       "-E", str(base / f"sshd-{node.hostname}.log")])
    assert result.returncode == 0, result.stderr


def running(node, executable: str) -> bool:
    for pid in processes_in_net_ns(node.net_ns):
        try:
            if Path(f"/proc/{pid}/exe").resolve() == Path(executable).resolve():
                return True
        except OSError:
            continue
    return False


def test_controller_worker_and_login_node_boot_and_the_login_node_is_no_slurm_node(netns_network,
                                                                                   world_readable_tmp):
    base = world_readable_tmp
    lifecycle = write_lifecycle_dir(base)
    fsx = base / "fsx"
    fsx.mkdir()
    names = ["controller", "worker", "login"]
    nodes = {name: netns_network.add_node(*spec) for name, spec in zip(names, [CONTROLLER, WORKERS[0], LOGIN])}
    roots = {name: make_node_root(base, name) for name in names}

    runs = {
        name: nodes[name].popen(on_create(lifecycle), env=lifecycle_env(roots[name], fsx),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name in names
    }
    outputs = {name: proc.communicate(timeout=120)[0] for name, proc in runs.items()}
    for name, proc in runs.items():
        assert proc.returncode == 0, f"{name}:\n{outputs[name]}"
    assert "ready as controller" in outputs["controller"]
    assert "ip-10-1-0-2 registered with the controller" in outputs["worker"]
    assert "node ip-10-1-0-3 ready as login" in outputs["login"]
    assert "registered" not in outputs["login"]
    # Every node found the one key pair and munge key made by whichever node came first.
    assert sum("created the cluster key pair" in out and "ubuntu/.ssh" in out for out in outputs.values()) == 1
    assert sum("created the cluster munge key" in out for out in outputs.values()) == 1

    slurm = {"SLURM_CONF": str(roots["controller"] / "opt/slurm/etc/slurm.conf")}
    # Registered with the hardware their slurmd found (slurmd -C), not a guessed CPU count; the
    # login node is not a Slurm node and no slurmd stays on it.
    listed = nodes["controller"].run(["sinfo", "-h", "-N", "-o", "%N %c %P"], env=slurm).stdout.split()
    found = re.search(r"CPUs=(\d+)", nodes["worker"].run(["slurmd", "-C"]).stdout).group(1)
    assert listed == ["ip-10-1-0-2", found, "dev*"]
    assert not running(nodes["login"], "/usr/sbin/slurmd") and running(nodes["worker"], "/usr/sbin/slurmd")

    # Client commands on the login node read the configuration slurmd fetched from the controller.
    client = {"SLURM_CONF": "/run/slurm/conf/slurm.conf"}
    job = nodes["login"].run(["srun", "-N", "1", "hostname"], env=client, timeout=60)
    assert job.returncode == 0, job.stderr
    assert job.stdout.split() == ["ip-10-1-0-2"]

    known_hosts = (fsx / ".llamapod/ssh_known_hosts").read_text().splitlines()
    assert [line.split()[0] for line in known_hosts] == [
        "ip-10-1-0-1,10.1.0.1", "ip-10-1-0-2,10.1.0.2", "ip-10-1-0-3,10.1.0.3"]

    start_sshd(nodes["worker"], roots["worker"], base)
    for name in ("passwd", "group"):
        nodes["login"].bind(roots["login"] / "etc" / name, f"/etc/{name}")
    login = nodes["login"].run(
        ["setpriv", f"--reuid={UBUNTU_UID}", f"--regid={UBUNTU_UID}", "--init-groups",
         "env", f"HOME={fsx}/ubuntu", "ssh", "-o", "BatchMode=yes", WORKERS[0][1], "hostname; id -un; pwd"],
        timeout=30)
    assert login.returncode == 0, login.stderr
    assert login.stdout.split() == ["ip-10-1-0-2", "ubuntu", f"{fsx}/ubuntu"]

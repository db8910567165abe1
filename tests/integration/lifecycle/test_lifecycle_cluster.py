"""Three nodes as network namespaces (controller + 2 workers, each with its address from
resource_config.json, one shared directory as /fsx), each booting with the lifecycle at the
same time, as HyperPod boots them. Afterwards Slurm runs a job on both workers, and the
cluster user reaches one worker from the other over SSH with the generated key, through a
real OpenSSH server checking the generated known hosts."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from integration.lifecycle.lifecycle_helpers import (
    CONTROLLER,
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


def test_three_node_cluster_runs_srun_on_both_workers_and_ssh_between_nodes(netns_network, world_readable_tmp):
    base = world_readable_tmp
    lifecycle = write_lifecycle_dir(base)
    fsx = base / "fsx"
    fsx.mkdir()
    names = ["controller", "worker1", "worker2"]
    nodes = {name: netns_network.add_node(*spec) for name, spec in zip(names, [CONTROLLER, *WORKERS])}
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
    assert "ip-10-1-0-2 registered with the controller" in outputs["worker1"]
    assert "ip-10-1-0-3 registered with the controller" in outputs["worker2"]
    # Every node found the one key pair and munge key made by whichever node came first.
    assert sum("created the cluster key pair" in out and "ubuntu/.ssh" in out for out in outputs.values()) == 1
    assert sum("created the cluster munge key" in out for out in outputs.values()) == 1

    slurm = {"SLURM_CONF": str(roots["controller"] / "opt/slurm/etc/slurm.conf")}
    job = nodes["controller"].run(["srun", "-N", "2", "hostname"], env=slurm, timeout=60)
    assert job.returncode == 0, job.stderr
    assert sorted(job.stdout.split()) == ["ip-10-1-0-2", "ip-10-1-0-3"]
    # Registered with the hardware their slurmd found (slurmd -C), not a guessed CPU count.
    listed = nodes["controller"].run(["sinfo", "-h", "-N", "-o", "%N %c %P"], env=slurm).stdout.split()
    found = re.search(r"CPUs=(\d+)", nodes["worker1"].run(["slurmd", "-C"]).stdout).group(1)
    assert listed == ["ip-10-1-0-2", found, "dev*", "ip-10-1-0-3", found, "dev*"]

    known_hosts = (fsx / ".llamapod/ssh_known_hosts").read_text().splitlines()
    assert [line.split()[0] for line in known_hosts] == [
        "ip-10-1-0-1,10.1.0.1", "ip-10-1-0-2,10.1.0.2", "ip-10-1-0-3,10.1.0.3"]

    start_sshd(nodes["worker2"], roots["worker2"], base)
    for name in ("passwd", "group"):
        nodes["worker1"].bind(roots["worker1"] / "etc" / name, f"/etc/{name}")
    login = nodes["worker1"].run(
        ["setpriv", f"--reuid={UBUNTU_UID}", f"--regid={UBUNTU_UID}", "--init-groups",
         "env", f"HOME={fsx}/ubuntu", "ssh", "-o", "BatchMode=yes", WORKERS[1][1], "hostname; id -un; pwd"],
        timeout=30)
    assert login.returncode == 0, login.stderr
    assert login.stdout.split() == ["ip-10-1-0-3", "ubuntu", f"{fsx}/ubuntu"]

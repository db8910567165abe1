"""The lifecycle run for real on one node: a temporary root, real useradd / ssh-keygen, real
munged + slurmctld from Debian's packages, each node in its own network/mount/UTS namespace
(tests/fixtures/netns.py) so nothing meets the host's Slurm or munge."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from fixtures.netns import processes_in_net_ns
from integration.lifecycle.lifecycle_helpers import (
    CONTROLLER,
    EXTRA_UID,
    EXTRA_USER,
    FSX_ADDRESS,
    FSX_DNS,
    FSX_MOUNTNAME,
    UBUNTU_UID,
    WORKERS,
    fsx_resolves,
    lifecycle_env,
    lustre_mount_table,
    make_node_root,
    on_create,
    run_until_line_then_kill,
    snapshot,
    write_lifecycle_dir,
)

pytestmark = [pytest.mark.netns, pytest.mark.slurm]

STEPS = ("fsx", "users", "home", "ssh", "munge", "accounting", "containers", "slurm")
TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} (INFO|WARNING|ERROR) ")


@pytest.fixture
def layout(world_readable_tmp: Path):
    base = world_readable_tmp
    fsx = base / "fsx"
    fsx.mkdir()
    return base, write_lifecycle_dir(base), fsx


def slurmctld_pids(node) -> list[int]:
    """The node's slurmctld main processes (its slurmscriptd child has another command line)."""
    pids = []
    for pid in processes_in_net_ns(node.net_ns):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        except OSError:
            continue
        if argv[:2] == ["/usr/sbin/slurmctld", "-f"]:
            pids.append(pid)
    return sorted(pids)


def test_controller_is_provisioned_and_a_second_run_changes_nothing(netns_network, layout):
    base, lifecycle, fsx = layout
    node = netns_network.add_node(*CONTROLLER)
    root = make_node_root(base, "controller")
    env = lifecycle_env(root, fsx)

    first = node.run(on_create(lifecycle), env=env, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "node ip-10-1-0-1 ready as controller" in first.stdout

    passwd = (root / "etc/passwd").read_text()
    assert f"ubuntu:x:{UBUNTU_UID}:{UBUNTU_UID}:Ubuntu:{fsx}/ubuntu:/bin/bash" in passwd.splitlines()
    assert f"{EXTRA_USER}:x:{EXTRA_UID}:{EXTRA_UID}::{fsx}/{EXTRA_USER}:/bin/bash" in passwd.splitlines()
    assert (fsx / "ubuntu/notes.txt").read_text() == "kept when the home moves to /fsx\n"
    assert (fsx / "ubuntu").stat().st_uid == UBUNTU_UID
    assert (fsx / EXTRA_USER / ".bashrc").exists()  # seeded from /etc/skel
    assert not (root / "etc/passwd.lock").exists()

    ssh = fsx / "ubuntu/.ssh"
    public = (ssh / "id_ed25519.pub").read_text().strip()
    assert public.startswith("ssh-ed25519 ") and public.endswith("ubuntu@llama-test")
    assert public in (ssh / "authorized_keys").read_text().splitlines()
    assert oct((ssh / "id_ed25519").stat().st_mode & 0o777) == "0o600"
    assert (ssh / "id_ed25519").stat().st_uid == UBUNTU_UID
    host_key = " ".join((root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2])
    assert (fsx / ".llamapod/ssh_known_hosts").read_text() == f"ip-10-1-0-1,10.1.0.1 {host_key}\n"
    config = (ssh / "config").read_text()
    assert "Host 10.1.0.1 10.1.0.2 10.1.0.3 ip-10-1-0-1 ip-10-1-0-2 ip-10-1-0-3\n" in config
    assert "StrictHostKeyChecking yes" in config

    slurm_conf = (root / "opt/slurm/etc/slurm.conf").read_text()
    assert "SlurmctldHost=ip-10-1-0-1(10.1.0.1)" in slurm_conf
    assert "Nodeset=ns_dev Feature=dev\nPartitionName=dev Nodes=ns_dev Default=YES" in slurm_conf
    assert "PartitionName=spare Nodes=ns_spare Default=NO" in slurm_conf  # Instances null: ready to scale
    ping = node.run(["scontrol", "ping"], env={"SLURM_CONF": str(root / "opt/slurm/etc/slurm.conf")})
    assert "Slurmctld(primary) at ip-10-1-0-1 is UP" in ping.stdout

    log_lines = (root / "var/log/llamapod/lifecycle.log").read_text().splitlines()
    python_lines = [line for line in log_lines if "on_create.sh:" not in line]
    assert python_lines and all(TIMESTAMPED.match(line) for line in python_lines)
    assert any(line.endswith("step slurm: start") for line in python_lines)

    before, pids = snapshot(root, fsx), slurmctld_pids(node)
    second = node.run(on_create(lifecycle), env=env, timeout=120)
    assert second.returncode == 0, second.stdout
    assert snapshot(root, fsx) == before
    assert len(pids) == 1 and slurmctld_pids(node) == pids  # not restarted
    assert "munged already running with the cluster key" in second.stdout
    assert "home of ubuntu already" in second.stdout


@pytest.mark.parametrize("step", STEPS)
def test_run_killed_during_a_step_then_rerun_completes(netns_network, layout, step):
    base, lifecycle, fsx = layout
    node = netns_network.add_node(*CONTROLLER)
    root = make_node_root(base, "controller")
    env = lifecycle_env(root, fsx)

    output = run_until_line_then_kill(node, on_create(lifecycle), env, f"step {step}: start")
    assert f"step {step}: start" in output
    assert "ready as controller" not in output

    rerun = node.run(on_create(lifecycle), env=env, timeout=120)
    assert rerun.returncode == 0, rerun.stdout
    assert "ready as controller" in rerun.stdout
    passwd = (root / "etc/passwd").read_text()
    assert f":{fsx}/ubuntu:" in passwd and passwd.count("\nalice:") == 1
    assert not list(fsx.glob(".ubuntu.seed-*")) and not list((fsx / "ubuntu/.ssh").glob(".keygen-*"))
    assert not list((root / "etc").glob(".passwd.*")) and not (root / "etc/passwd.lock").exists()
    assert len(slurmctld_pids(node)) == 1


BAD_INPUTS = {
    "missing resource config": (
        lambda root, lc: (root / "opt/ml/config/resource_config.json").unlink(),
        "step role FAILED: resource_config.json not found at {root}/opt/ml/config/resource_config.json"),
    "malformed resource config": (
        lambda root, lc: (root / "opt/ml/config/resource_config.json").write_text('{"InstanceGroups": ['),
        "step role FAILED: resource_config.json at {root}/opt/ml/config/resource_config.json is not valid JSON: "
        "Expecting value (line 1, column 21)"),
    "malformed provisioning parameters": (
        lambda root, lc: (lc / "provisioning_parameters.json").write_text(json.dumps({"worker_groups": []})),
        "step role FAILED: {lc}/provisioning_parameters.json: version must be '1.0.0', found None; workload_manager "
        "must be 'slurm', found None; controller_group must be a string, found None; fsx_dns_name must be a string, "
        "found None; fsx_mountname must be a string, found None; worker_groups must list at least one worker group"),
    "a line break in a value": (
        lambda root, lc: (lc / "provisioning_parameters.json").write_text(
            (lc / "provisioning_parameters.json").read_text().replace('"abcdefgh"', '"abcdefgh /fsx lustre\\n#"')),
        "step role FAILED: {lc}/provisioning_parameters.json: fsx_mountname must be an FSx for Lustre mount name "
        "(1-8 lowercase letters or digits), found 'abcdefgh /fsx lustre\\n#'"),
    "address not in the resource config": (
        lambda root, lc: None,
        "step role FAILED: this node's address 10.9.9.9 is not in {root}/opt/ml/config/resource_config.json "
        "(known: 10.1.0.1, 10.1.0.3, 10.1.0.2)"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_fails_with_a_clear_message_and_touches_nothing(world_readable_tmp, case):
    import subprocess

    lifecycle = write_lifecycle_dir(world_readable_tmp)
    root = make_node_root(world_readable_tmp, "node")
    fsx = world_readable_tmp / "fsx"
    fsx.mkdir()
    damage, message = BAD_INPUTS[case]
    damage(root, lifecycle)
    passwd = (root / "etc/passwd").read_text()
    env = {**os.environ, **lifecycle_env(root, fsx, LLAMAPOD_NODE_ADDRESS="10.9.9.9" if "address" in case else "10.1.0.1")}
    result = subprocess.run(on_create(lifecycle), env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    expected = message.format(root=root, lc=lifecycle)
    log = (root / "var/log/llamapod/lifecycle.log").read_text()
    assert expected in log and expected in result.stdout
    assert "ERROR: node setup failed with exit code 1; see" in log
    assert (root / "etc/passwd").read_text() == passwd
    assert not any(fsx.iterdir())


def test_fsx_that_never_mounts_fails_in_bounded_time(netns_network, layout):
    """The real `mount -t lustre` (no Lustre client here, so it always fails) inside the node's
    own mount namespace: the step retries with back-off until its deadline, then stops."""
    base, lifecycle, fsx = layout
    node = netns_network.add_node(*CONTROLLER)
    root = make_node_root(base, "controller")
    env = lifecycle_env(root, fsx, LLAMAPOD_FSX_MODE="lustre", LLAMAPOD_FSX_TIMEOUT="2")
    env.pop("LLAMAPOD_FSX_DIR")
    started = time.monotonic()
    result = node.run(on_create(lifecycle), env=env, timeout=60)
    assert result.returncode == 1
    assert time.monotonic() - started < 15
    source = "fs-0123456789abcdef0.fsx.us-east-1.amazonaws.com@tcp:/abcdefgh"
    assert re.search(
        rf"step fsx FAILED: mount {re.escape(source)} at {re.escape(str(root))}/fsx: gave up after \d+ attempts "
        rf"in 2s; last error: `\S*mount -t lustre -o noatime,flock {re.escape(source)} {re.escape(str(root))}/fsx` "
        r"exited \d+: ", result.stdout), result.stdout
    assert "attempt 1 failed" in result.stdout
    assert not (root / "etc/fstab").exists()  # nothing recorded for a mount that never happened
    assert "ubuntu" not in os.listdir(root / "fsx")


def test_rerun_on_a_node_whose_mount_table_shows_the_ip_form_succeeds_and_changes_nothing(netns_network, layout):
    """After mount.lustre, /proc/mounts holds <ip>@tcp:/<mountname>, never the DNS name given to it.
    The node's DNS resolves the file system's name as the VPC's does (its own /etc/hosts)."""
    base, lifecycle, _ = layout
    node = netns_network.add_node(*CONTROLLER)
    fsx_resolves(node, base)
    root = make_node_root(base, "controller")
    fsx = root / "fsx"
    fsx.mkdir()
    table = lustre_mount_table(base / "mounts", fsx, f"{FSX_ADDRESS}@tcp:/{FSX_MOUNTNAME}")
    env = lifecycle_env(root, fsx, LLAMAPOD_FSX_MODE="lustre", LLAMAPOD_MOUNT_TABLE=str(table),
                        LLAMAPOD_MOUNT="/bin/false")  # a mount attempt would fail the run
    env.pop("LLAMAPOD_FSX_DIR")
    first = node.run(on_create(lifecycle), env=env, timeout=120)
    assert first.returncode == 0, first.stdout
    source = f"{FSX_DNS}@tcp:/{FSX_MOUNTNAME}"
    assert f"{source} already mounted at {fsx} (as {FSX_ADDRESS}@tcp:/{FSX_MOUNTNAME})" in first.stdout
    assert f"{source} {fsx} lustre defaults,noatime,flock,_netdev," in (root / "etc/fstab").read_text()

    before = snapshot(root)
    second = node.run(on_create(lifecycle), env=env, timeout=120)
    assert second.returncode == 0, second.stdout
    assert "ready as controller" in second.stdout
    assert snapshot(root) == before

    # Another file system, or another address for the same mount name, is not ours.
    for other in (f"{FSX_ADDRESS}@tcp:/zzzzzzzz", f"10.1.200.99@tcp:/{FSX_MOUNTNAME}"):
        lustre_mount_table(table, fsx, other)
        wrong = node.run(on_create(lifecycle), env={**env, "LLAMAPOD_ONLY": "fsx"}, timeout=60)
        assert wrong.returncode == 1
        assert (f"step fsx FAILED: {fsx} already has {other} (lustre) mounted, not {source}; unmount it and re-run"
                in wrong.stdout)


def test_plans_cluster_user_gets_a_shared_home_on_fsx(netns_network, world_readable_tmp, run_cli, monkeypatch):
    """`llamapod plan` with cluster_user = "alice", and the file `up` uploads for that config, run on a node."""
    import tomllib

    from llamapod.cloud import plan
    from llamapod.config.cluster import load_cluster_spec

    base = world_readable_tmp
    config = base / "llamapod.toml"
    config.write_text('[cluster]\nname = "llama-test"\ncluster_user = "alice"\n'
                      '[cluster.login]\nname = "login-group"\ninstance_type = "ml.m5.4xlarge"\n'
                      '[[cluster.workers]]\nname = "worker-group-1"\ninstance_type = "ml.g5.48xlarge"\npartition = "dev"\n'
                      '[[cluster.workers]]\nname = "spare-group"\ninstance_type = "ml.g5.48xlarge"\n'
                      'partition = "spare"\n')
    assert tomllib.loads(config.read_text())["cluster"]["cluster_user"] == "alice"
    monkeypatch.setenv("LLAMAPOD_AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # plan's look-ups fail fast
    code, _, err = run_cli("plan", "--config", str(config), "--out", str(base / "plan"))
    assert code == 0, err
    planned = json.loads((base / "plan/provisioning_parameters.json").read_text())
    assert planned["cluster_user"] == "alice"

    uploaded = plan.provisioning_file(load_cluster_spec(config), FSX_DNS, FSX_MOUNTNAME)
    assert json.loads(uploaded) == {**planned, "fsx_dns_name": FSX_DNS, "fsx_mountname": FSX_MOUNTNAME}
    lifecycle = write_lifecycle_dir(base)
    (lifecycle / "provisioning_parameters.json").write_text(uploaded)
    fsx = base / "fsx"
    fsx.mkdir()
    node = netns_network.add_node(*CONTROLLER)
    root = make_node_root(base, "controller")
    result = node.run(on_create(lifecycle), env=lifecycle_env(root, fsx, LLAMAPOD_ONLY="fsx,users,home,ssh"),
                      timeout=120)
    assert result.returncode == 0, result.stdout
    alice = next(line.split(":") for line in (root / "etc/passwd").read_text().splitlines()
                 if line.startswith("alice:"))
    assert alice[5] == f"{fsx}/alice"
    assert (fsx / "alice").is_dir() and (fsx / "alice").stat().st_uid == int(alice[2])
    assert (fsx / "alice/.ssh/id_ed25519.pub").read_text().strip().endswith("alice@llama-test")
    assert f":{UBUNTU_UID}:Ubuntu:{root}/home/ubuntu:" in (root / "etc/passwd").read_text()  # ubuntu left alone


def test_worker_whose_controller_never_answers_fails_then_rerun_succeeds(netns_network, layout):
    base, lifecycle, fsx = layout
    worker = netns_network.add_node(*WORKERS[0])
    worker_root = make_node_root(base, "worker1")
    env = lifecycle_env(worker_root, fsx, LLAMAPOD_SLURM_TIMEOUT="2")
    started = time.monotonic()
    failed = worker.run(on_create(lifecycle), env=env, timeout=60)
    assert failed.returncode == 1
    assert time.monotonic() - started < 10
    assert re.search(r"step slurm FAILED: slurmd on ip-10-1-0-2 to register with 10\.1\.0\.1: gave up after \d+ "
                     r"attempts in 2s; last error: controller 10\.1\.0\.1:6817 does not answer \(.*\)\. Is slurmctld running on the controller \(10\.1\.0\.1\) and "
                     r"TCP 6817 open between nodes\?", failed.stdout), failed.stdout

    controller = netns_network.add_node(*CONTROLLER)
    controller_root = make_node_root(base, "controller")
    up = controller.run(on_create(lifecycle), env=lifecycle_env(controller_root, fsx), timeout=120)
    assert up.returncode == 0, up.stdout
    rerun = worker.run(on_create(lifecycle), env=lifecycle_env(worker_root, fsx), timeout=120)
    assert rerun.returncode == 0, rerun.stdout
    assert "ip-10-1-0-2 registered with the controller (state IDLE+DYNAMIC_NORM)" in rerun.stdout

"""Node-side logic on its own: reading HyperPod's files, role detection, config rendering,
passwd rewriting, retries. The node modules import each other as top-level modules (as they
do next to on_create.sh on a node), so the lifecycle directory goes on sys.path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llamapod.lifecycle import LIFECYCLE_DIR

sys.path.insert(0, str(LIFECYCLE_DIR))

import node_accounting  # noqa: E402
import node_cluster  # noqa: E402
import node_settings  # noqa: E402
import node_slurm  # noqa: E402
import node_storage  # noqa: E402
import node_system  # noqa: E402
import node_users  # noqa: E402
from node_system import StepError, TransientError  # noqa: E402

PARAMS = {
    "version": "1.0.0", "workload_manager": "slurm", "controller_group": "ctl", "login_group": "login",
    "worker_groups": [{"instance_group_name": "gpu", "partition_name": "dev"},
                      {"instance_group_name": "cpu", "partition_name": "cpu"}],
    "fsx_dns_name": "fs-1.fsx.us-east-1.amazonaws.com", "fsx_mountname": "mnt",
}


def instances(*addresses: str) -> list[dict]:
    return [{"InstanceName": f"n-{i}", "CustomerIpAddress": a, "InstanceId": f"i-{i}"} for i, a in enumerate(addresses)]


RESOURCES = {
    "ClusterConfig": {"ClusterArn": "arn:aws:sagemaker:us-east-1:1:cluster/abc", "ClusterName": "My-Cluster"},
    "InstanceGroups": [
        {"Name": "ctl", "InstanceType": "ml.c5.xlarge", "Instances": instances("10.1.0.10")},
        {"Name": "login", "InstanceType": "ml.c5.xlarge", "Instances": instances("10.1.0.20")},
        {"Name": "gpu", "InstanceType": "ml.g5.48xlarge", "Instances": instances("10.1.1.1", "10.1.1.2")},
        {"Name": "cpu", "InstanceType": "ml.c5.xlarge", "Instances": None},
    ],
}


def write_inputs(tmp_path: Path, resources=RESOURCES, params=PARAMS) -> tuple[Path, Path]:
    rc, pp = tmp_path / "resource_config.json", tmp_path / "provisioning_parameters.json"
    rc.write_text(resources if isinstance(resources, str) else json.dumps(resources))
    pp.write_text(params if isinstance(params, str) else json.dumps(params))
    return rc, pp


def settings_for(tmp_path: Path, **env: str) -> node_settings.Settings:
    return node_settings.load_settings([], {"LLAMAPOD_ROOT": str(tmp_path), **env})


# --- roles -----------------------------------------------------------------------------------


def test_roles_come_from_the_group_of_each_address(tmp_path):
    cluster = node_cluster.load_cluster(*write_inputs(tmp_path))
    roles = {n.address: (n.role, n.partition, n.slurm_name) for n in cluster.nodes}
    assert roles == {
        "10.1.0.10": ("controller", None, "ip-10-1-0-10"),
        "10.1.0.20": ("login", None, "ip-10-1-0-20"),
        "10.1.1.1": ("worker", "dev", "ip-10-1-1-1"),
        "10.1.1.2": ("worker", "dev", "ip-10-1-1-2"),
    }
    assert cluster.name == "My-Cluster" and cluster.controller.address == "10.1.0.10"
    assert node_cluster.this_node(cluster, "10.1.1.2", Path("rc.json")).role == "worker"


@pytest.mark.parametrize(("resources", "params", "message"), [
    ("[1, 2]", PARAMS, "resource_config.json at {rc} must be a JSON object, found list"),
    ({"InstanceGroups": "x"}, PARAMS, "{rc}: InstanceGroups must be a list, found 'x'"),
    ({"InstanceGroups": [{"Name": "stray", "Instances": instances("10.0.0.1")}]}, PARAMS,
     "{rc}: instance group 'stray' is neither the controller group ('ctl'), the login group, nor a worker group "
     "in provisioning_parameters.json"),
    ({"InstanceGroups": [{"Name": "ctl", "Instances": instances("10.0.0.1", "10.0.0.2")}]}, PARAMS,
     "{rc}: the controller group 'ctl' must have exactly one instance, found 2"),
    ({"InstanceGroups": [{"Name": "ctl", "Instances": instances("10.0.0.300")}]}, PARAMS,
     "{rc}: InstanceGroups[0].Instances[0].CustomerIpAddress '10.0.0.300' is not an IPv4 address"),
    ({"InstanceGroups": [{"Name": "ctl", "Instances": [{"InstanceName": "x"}]}]}, PARAMS,
     "{rc}: InstanceGroups[0].Instances[0].CustomerIpAddress must be a non-empty string, found None"),
    (RESOURCES, {**PARAMS, "worker_groups": {"a": 1}}, "{pp}: worker_groups must be a list, found {{'a': 1}}"),
    (RESOURCES, {**PARAMS, "worker_groups": [{"instance_group_name": "gpu"}]},
     "{pp}: worker_groups[0].partition_name must be a string, found None"),
    (RESOURCES, {**PARAMS, "containers": "yes"}, "{pp}: containers must be true or false, found 'yes'"),
    (RESOURCES, {**PARAMS, "accounting": {"storage_host": "db", "storage_pass": "x y"}},
     "{pp}: accounting.storage_user must be a string, found None; accounting.storage_pass must be a password of "
     "1-128 printable ASCII characters without spaces, quotes, backslash, ` or #, not starting with -, "
     "found (hidden)"),
    (RESOURCES, {**PARAMS, "fsx_dns_name": "fs-1.example.com\n/dev/sda1 /"},
     "{pp}: fsx_dns_name must be a DNS host name (lowercase letters, digits, hyphens and dots), "
     "found 'fs-1.example.com\\n/dev/sda1 /'"),
])
def test_malformed_inputs_name_the_file_and_the_key(tmp_path, resources, params, message):
    rc, pp = write_inputs(tmp_path, resources, params)
    with pytest.raises(StepError) as caught:
        node_cluster.load_cluster(rc, pp)
    assert str(caught.value) == message.format(rc=rc, pp=pp)


def test_address_not_in_the_config_lists_the_known_ones(tmp_path):
    cluster = node_cluster.load_cluster(*write_inputs(tmp_path))
    with pytest.raises(StepError, match=r"^this node's address 10\.9\.9\.9 is not in rc\.json "
                                        r"\(known: 10\.1\.0\.10, 10\.1\.0\.20, 10\.1\.1\.1, 10\.1\.1\.2\)$"):
        node_cluster.this_node(cluster, "10.9.9.9", Path("rc.json"))
    with pytest.raises(StepError, match=r"^none of this node's addresses \(.*\) is in rc\.json \(known: "):
        node_cluster.this_node(cluster, None, Path("rc.json"))


def test_local_addresses_are_read_from_the_kernel():
    assert "127.0.0.1" in node_cluster.local_addresses()
    assert node_cluster.local_addresses(Path("/nonexistent")) == set()


# --- settings --------------------------------------------------------------------------------------


def test_defaults_live_under_the_root_and_explicit_paths_are_used_as_given(tmp_path):
    s = settings_for(tmp_path, LLAMAPOD_FSX_DIR="/shared/fsx")
    assert s.resource_config == tmp_path / "opt/ml/config/resource_config.json"
    assert s.slurm_conf == tmp_path / "opt/slurm/etc/slurm.conf"
    assert s.etc_dir == tmp_path / "etc" and s.munge_socket == tmp_path / "run/munge/munge.socket.2"
    assert s.fsx_dir == Path("/shared/fsx")
    assert s.log_file == tmp_path / "var/log/llamapod/lifecycle.log"
    assert s.provisioning_parameters == LIFECYCLE_DIR / "provisioning_parameters.json"
    flagged = node_settings.load_settings(["--root", str(tmp_path), "--fsx-dir", "/flag"],
                                          {"LLAMAPOD_FSX_DIR": "/env"})
    assert flagged.fsx_dir == Path("/flag")  # a flag beats the environment
    assert settings_for(tmp_path, LLAMAPOD_MOUNT="/opt/bin/mount").commands["mount"] == "/opt/bin/mount"


@pytest.mark.parametrize(("env", "message"), [
    ({"LLAMAPOD_ONLY": "fsx,bogus"}, "unknown step(s) bogus; steps are fsx, users, home, ssh, munge, accounting, "
                                     "containers, slurm"),
    ({"LLAMAPOD_FSX_TIMEOUT": "soon"}, "LLAMAPOD_FSX_TIMEOUT must be a number of seconds, got 'soon'"),
    ({"LLAMAPOD_FSX_MODE": "nfs"}, "LLAMAPOD_FSX_MODE must be lustre or directory, got 'nfs'"),
])
def test_bad_settings_are_refused(tmp_path, env, message):
    with pytest.raises(SystemExit) as caught:
        settings_for(tmp_path, **env)
    assert caught.value.code == message


def test_bad_settings_exit_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(LIFECYCLE_DIR / "node_setup.py"), "--root", str(tmp_path)],
                            env={**os.environ, "LLAMAPOD_ONLY": "nope"}, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("node_setup.py: unknown step(s) nope; steps are")


# --- users ------------------------------------------------------------------------------------------


def test_cluster_user_and_shared_users_come_from_the_parameters_and_a_flag_overrides(tmp_path):
    params = {**PARAMS, "cluster_user": "alice", "shared_users": [{"name": "bob", "uid": 2002}]}
    cluster = node_cluster.load_cluster(*write_inputs(tmp_path, params=params))
    assert node_users.cluster_users(settings_for(tmp_path), cluster) == [
        node_users.UserRequest("alice", None), node_users.UserRequest("bob", 2002)]
    assert node_users.cluster_users(settings_for(tmp_path, LLAMAPOD_CLUSTER_USER="carol"), cluster) == [
        node_users.UserRequest("carol", None), node_users.UserRequest("bob", 2002)]
    with pytest.raises(StepError, match=r"^--cluster-user must be a Linux user name .*, found '-oops'$"):
        node_users.cluster_users(settings_for(tmp_path, LLAMAPOD_CLUSTER_USER="-oops"), cluster)


def write_passwd(etc: Path) -> str:
    etc.mkdir(parents=True, exist_ok=True)
    text = "root:x:0:0:root:/root:/bin/bash\nubuntu:x:1000:1000:Ubuntu:/home/ubuntu:/bin/bash\nbob:x:1001:1001::/home/bob:/bin/sh\n"
    (etc / "passwd").write_text(text)
    os.chmod(etc / "passwd", 0o644)
    return text


def test_home_is_changed_by_an_atomic_rewrite_that_touches_only_that_field(tmp_path):
    etc = tmp_path / "etc"
    original = write_passwd(etc)
    inode = (etc / "passwd").stat().st_ino
    assert node_users.set_home_directory(etc, "ubuntu", Path("/fsx/ubuntu"), timeout=1)
    assert (etc / "passwd").read_text() == original.replace("/home/ubuntu", "/fsx/ubuntu")
    assert (etc / "passwd").stat().st_ino != inode  # replaced by rename, never edited in place
    assert oct((etc / "passwd").stat().st_mode & 0o777) == "0o644"
    assert not (etc / "passwd.lock").exists()
    assert not node_users.set_home_directory(etc, "ubuntu", Path("/fsx/ubuntu"), timeout=1)


def test_passwd_lock_held_by_a_live_process_is_respected_and_a_stale_one_cleared(tmp_path):
    etc = tmp_path / "etc"
    write_passwd(etc)
    (etc / "passwd.lock").write_text(str(os.getpid()))  # a live holder: us
    started = time.monotonic()
    with pytest.raises(StepError, match=r"passwd\.lock is held by another process; retry when it is gone$"):
        node_users.set_home_directory(etc, "ubuntu", Path("/fsx/ubuntu"), timeout=0.3)
    assert time.monotonic() - started < 2
    (etc / "passwd.lock").write_text("999999999")  # no such process: left by a crash
    assert node_users.set_home_directory(etc, "ubuntu", Path("/fsx/ubuntu"), timeout=1)


def test_known_hosts_keeps_one_line_per_node(tmp_path):
    path = tmp_path / "known_hosts"
    a = node_cluster.Node("g", "n1", "10.0.0.1", "worker")
    b = node_cluster.Node("g", "n2", "10.0.0.2", "worker")
    node_users.update_known_hosts(path, a, "ssh-ed25519 AAAA1")
    node_users.update_known_hosts(path, b, "ssh-ed25519 BBBB")
    assert not node_users.update_known_hosts(path, b, "ssh-ed25519 BBBB")
    node_users.update_known_hosts(path, a, "ssh-ed25519 AAAA2")  # a replacement node: new host key
    assert path.read_text() == "ip-10-0-0-1,10.0.0.1 ssh-ed25519 AAAA2\nip-10-0-0-2,10.0.0.2 ssh-ed25519 BBBB\n"


# --- files, mounts, retries ----------------------------------------------------------------------


def test_managed_block_is_added_once_and_replaced_in_place():
    text = "keep me\n"
    once = node_system.replace_managed_block(text, "line 1", "llamapod x")
    assert once == "keep me\n\n# BEGIN llamapod x\nline 1\n# END llamapod x\n"
    assert node_system.replace_managed_block(once, "line 1", "llamapod x") == once
    assert node_system.replace_managed_block(once, "line 2", "llamapod x").count("BEGIN") == 1


def test_write_file_reports_changes_only(tmp_path):
    path = tmp_path / "a" / "conf"
    assert node_system.write_file(path, "x\n", mode=0o600)
    assert not node_system.write_file(path, "x\n", mode=0o600)
    assert node_system.write_file(path, "x\n", mode=0o644)
    assert not list(path.parent.glob(".conf.*"))
    (path.parent / ".conf.ab12cd34").write_text("half written by a killed run")
    assert not node_system.write_file(path, "x\n", mode=0o644)
    assert not list(path.parent.glob(".conf.*"))


def test_our_lustre_mount_is_recognised_by_ip_or_name_and_mount_name(tmp_path):
    # "localhost" resolves here as a file system's DNS name does in its VPC.
    params = {**PARAMS, "fsx_dns_name": "localhost", "fsx_mountname": "abcdefgh"}
    cluster = node_cluster.load_cluster(*write_inputs(tmp_path, params=params))

    def entry(source, fstype="lustre"):
        return node_storage.MountEntry(source, "/fsx", fstype)

    assert node_storage.is_our_lustre_mount(entry("127.0.0.1@tcp:/abcdefgh"), cluster)  # what mount.lustre leaves
    assert node_storage.is_our_lustre_mount(entry("localhost@tcp:/abcdefgh"), cluster)
    assert node_storage.is_our_lustre_mount(entry("10.9.9.9@tcp:127.0.0.1@tcp:/abcdefgh"), cluster)  # failover nids
    assert not node_storage.is_our_lustre_mount(entry("127.0.0.1@tcp:/zzzzzzzz"), cluster)  # another file system
    assert not node_storage.is_our_lustre_mount(entry("10.9.9.9@tcp:/abcdefgh"), cluster)  # another address
    assert not node_storage.is_our_lustre_mount(entry("127.0.0.1@tcp:/abcdefgh", "tmpfs"), cluster)
    assert not node_storage.is_our_lustre_mount(entry("/dev/sda1"), cluster)
    # A name that does not resolve right now: the mount name alone identifies the file system.
    unresolved = node_cluster.load_cluster(*write_inputs(tmp_path, params={**params, "fsx_dns_name": "fs-1.invalid"}))
    assert node_storage.is_our_lustre_mount(entry("10.9.9.9@tcp:/abcdefgh"), unresolved)
    assert not node_storage.is_our_lustre_mount(entry("10.9.9.9@tcp:/zzzzzzzz"), unresolved)


def test_mount_table_paths_are_unescaped_and_the_last_mount_wins(tmp_path):
    table = tmp_path / "mounts"
    target = tmp_path / "my fsx"
    target.mkdir()
    escaped = str(target).replace(" ", "\\040")
    table.write_text(f"tmpfs {escaped} tmpfs rw 0 0\nfs@tcp:/m {escaped} lustre rw,flock 0 0\n")
    assert node_storage.mounted_at(table, target) == node_storage.MountEntry("fs@tcp:/m", str(target), "lustre", ("rw", "flock"))
    assert node_storage.mounted_at(table, tmp_path) is None


def test_retry_backs_off_until_success_or_gives_up_in_time():
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise TransientError("not yet")
        return "ok"

    assert node_system.retry(flaky, what="thing", timeout=5, first_delay=0.01) == "ok"
    assert len(calls) == 3

    def never():
        raise TransientError("still down")

    started = time.monotonic()
    with pytest.raises(StepError, match=r"^thing: gave up after \d+ attempts in 0s; last error: still down$"):
        node_system.retry(never, what="thing", timeout=0.3, first_delay=0.05)
    assert time.monotonic() - started < 1


# --- rendered configuration ----------------------------------------------------------------------


def test_slurm_conf_has_partitions_for_dynamic_nodes_and_configless(tmp_path):
    s = settings_for(tmp_path)
    cluster = node_cluster.load_cluster(*write_inputs(tmp_path))
    text = node_slurm.render_slurm_conf(s, cluster, cluster.controller, "ip-10-1-0-10")
    lines = text.splitlines()
    assert lines[0].startswith(node_slurm.MARKER)
    assert "ClusterName=mycluster" in lines
    assert "SlurmctldHost=ip-10-1-0-10(10.1.0.10)" in lines
    assert "SlurmctldParameters=enable_configless" in lines
    assert f"AuthInfo=socket={tmp_path}/run/munge/munge.socket.2" in lines
    assert not any(line.startswith("NodeName=") for line in lines)  # nodes register themselves
    assert "MaxNodeCount=64" in lines
    assert lines[-4:] == [
        "Nodeset=ns_dev Feature=dev",
        "PartitionName=dev Nodes=ns_dev Default=YES MaxTime=INFINITE State=UP",
        "Nodeset=ns_cpu Feature=cpu",  # a group with no instances yet still gets its partition
        "PartitionName=cpu Nodes=ns_cpu Default=NO MaxTime=INFINITE State=UP",
    ]
    assert not any("Accounting" in line for line in lines)
    assert node_slurm.slurmd_options(cluster, cluster.nodes[2], managed=True) == [
        "--conf-server", "10.1.0.10:6817", "-Z", "--conf", "NodeAddr=10.1.1.1 Feature=dev", "-N", "ip-10-1-1-1"]
    assert node_slurm.slurmd_options(cluster, cluster.nodes[2], managed=False) == ["--conf-server", "10.1.0.10:6817"]
    # A login node is no Slurm node (HyperPod's slurm.conf does not list it): slurmd only
    # fetches the configuration, under the node's name, and never registers (-Z).
    for managed in (True, False):
        assert node_slurm.slurmd_options(cluster, cluster.nodes[1], managed=managed) == [
            "--conf-server", "10.1.0.10:6817", "-N", "ip-10-1-0-20"]


def test_accounting_on_hyperpod_adds_its_lines_to_hyperpods_slurm_conf_once(tmp_path):
    # No daemon of this machine is touched: slurmdbd is /bin/true, and no slurmctld runs from this path.
    s = settings_for(tmp_path, LLAMAPOD_SLURMDBD="/bin/true", LLAMAPOD_SLURMCTLD=str(tmp_path / "no-slurmctld"))
    (tmp_path / "opt/sagemaker_cluster").mkdir(parents=True)  # on HyperPod
    params = {**PARAMS, "accounting": {"storage_host": "db.internal", "storage_user": "slurm", "storage_pass": "pw"}}
    cluster = node_cluster.load_cluster(*write_inputs(tmp_path, params=params))
    # As HyperPod writes it: slurmctld runs as slurm (test_lifecycle_real_node.py cites the source).
    hyperpods = "# written by HyperPod\nSlurmctldHost=ip-10-1-0-10(10.1.0.10)\nSlurmUser=slurm\n"
    write_passwd(s.etc_dir)
    with open(s.etc_dir / "passwd", "a") as passwd:
        passwd.write("slurm:x:401:401::/home/slurm:/usr/sbin/nologin\n")
    s.slurm_conf.parent.mkdir(parents=True)
    s.slurm_conf.write_text(hyperpods)
    services = node_system.ServiceManager("direct", "systemctl", s.etc_dir)
    s.hostname = "ip-10-1-0-10"
    for _ in range(2):
        node_accounting.ensure_accounting(s, cluster, cluster.controller, services)
    assert s.slurm_conf.read_text() == hyperpods + (
        "\n# BEGIN llamapod accounting\nAccountingStorageType=accounting_storage/slurmdbd\n"
        "AccountingStorageHost=10.1.0.10\nJobAcctGatherType=jobacct_gather/linux\n# END llamapod accounting\n")
    assert oct((s.slurm_dir / "etc/slurmdbd.conf").stat().st_mode & 0o777) == "0o600"


def test_accounting_adds_slurmdbd_and_its_private_config(tmp_path):
    s = settings_for(tmp_path)
    params = {**PARAMS, "accounting": {"storage_host": "db.internal", "storage_user": "slurm", "storage_pass": "pw"}}
    cluster = node_cluster.load_cluster(*write_inputs(tmp_path, params=params))
    conf = node_slurm.render_slurm_conf(s, cluster, cluster.controller, "ctl")
    assert "AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=10.1.0.10\n" in conf
    dbd = node_accounting.render_slurmdbd_conf(s, cluster, "ctl").splitlines()
    assert {"StorageHost=db.internal", "StoragePort=3306", "StorageUser=slurm", "StoragePass=pw",
            "StorageLoc=slurm_acct_db", "DbdHost=ctl"} <= set(dbd)


def test_containers_refuse_the_root_volume_and_keep_data_on_nvme(tmp_path):
    s = settings_for(tmp_path, LLAMAPOD_NVME_TIMEOUT="0")
    table = tmp_path / "mounts"
    table.write_text("/dev/root / ext4 rw 0 0\n")
    with pytest.raises(StepError, match=r"^containers: neither .*/opt/dlami/nvme nor .*/opt/sagemaker is a mounted "
                                        r"file system; Docker and enroot data would land on the root volume\."):
        node_storage.container_paths(s, table)
    (tmp_path / "opt/dlami/nvme").mkdir(parents=True)
    table.write_text(f"/dev/nvme1n1 {tmp_path}/opt/dlami/nvme ext4 rw 0 0\n")
    paths = node_storage.container_paths(s, table)
    assert paths["docker"] == tmp_path / "opt/dlami/nvme/docker"
    assert paths["enroot_cache"] == tmp_path / "fsx/.llamapod/enroot-cache"
    daemon = json.loads(node_storage.docker_daemon_json('{"log-driver": "json-file"}', paths["docker"]))
    assert daemon == {"log-driver": "json-file", "data-root": str(tmp_path / "opt/dlami/nvme/docker")}
    conf = node_storage.enroot_conf(paths)
    assert f"ENROOT_DATA_PATH {tmp_path}/opt/dlami/nvme/enroot/data/user-$(id -u)" in conf


def test_systemd_gets_the_quoted_slurmd_options_through_a_drop_in(tmp_path):
    s = settings_for(tmp_path, LLAMAPOD_SLURMD="/opt/slurm/sbin/slurmd")
    options = ["--conf-server", "10.1.0.10:6817", "-Z", "--conf", "NodeAddr=10.1.1.1 Feature=dev"]
    services = node_system.ServiceManager("systemd", "systemctl", s.etc_dir)
    service = node_slurm.slurmd_service(s, options, managed=True)
    assert services.write_unit_override(service)
    drop_in = (tmp_path / "etc/systemd/system/slurmd.service.d/llamapod.conf").read_text()
    assert drop_in == ("[Service]\nExecStart=\nExecStart=/opt/slurm/sbin/slurmd -D -s --conf-server 10.1.0.10:6817 "
                       "-Z --conf 'NodeAddr=10.1.1.1 Feature=dev'\n")
    assert not services.write_unit_override(service)
    assert not (tmp_path / "etc/default/slurmd").exists()  # the packaged unit's environment file stays as it is


# HyperPod's slurmd unit as the reference's start_slurm.sh finds it: $SLURMD_OPTIONS in ExecStart,
# filled in by envsubst there (the unit reads no /etc/default/slurmd).
HYPERPOD_SLURMD_UNIT = """[Unit]
Description=Slurm node daemon
After=munge.service network-online.target remote-fs.target
[Service]
Type=simple
ExecStart=/usr/sbin/slurmd -D -s \\
    $SLURMD_OPTIONS
ExecReload=/bin/kill -HUP $MAINPID
KillMode=process
[Install]
WantedBy=multi-user.target
"""


def systemd_verify(unit_dir: Path) -> subprocess.CompletedProcess:
    """systemd's own unit loader (no running systemd needed): unit plus drop-ins, as systemd would load them."""
    return subprocess.run(["systemd-analyze", "verify", "slurmd.service"], capture_output=True, text=True,
                          env={**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:"}, timeout=60)


def test_hyperpod_slurmd_gets_its_conf_server_through_a_drop_in_systemd_accepts(tmp_path):
    s = settings_for(tmp_path)
    unit_dir = tmp_path / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    (unit_dir / "slurmd.service").write_text(HYPERPOD_SLURMD_UNIT)
    services = node_system.ServiceManager("systemd", "systemctl", s.etc_dir)
    service = node_slurm.slurmd_service(s, ["--conf-server", "10.1.0.10:6817"], managed=False)
    assert services.write_unit_override(service)
    drop_in = unit_dir / "slurmd.service.d/llamapod.conf"
    assert drop_in.read_text() == "[Service]\nExecStart=\nExecStart=/usr/sbin/slurmd -D -s --conf-server 10.1.0.10:6817\n"
    assert (unit_dir / "slurmd.service").read_text() == HYPERPOD_SLURMD_UNIT  # HyperPod's unit is untouched
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    verified = systemd_verify(unit_dir)
    assert verified.returncode == 0, verified.stderr
    # systemd really reads the drop-in: without its `ExecStart=` reset the unit would have two.
    drop_in.write_text(drop_in.read_text().replace("ExecStart=\n", "", 1))
    assert "more than one ExecStart= setting" in systemd_verify(unit_dir).stderr


def test_a_unit_without_the_variable_gets_the_options_appended_and_no_unit_a_plain_command(tmp_path):
    s = settings_for(tmp_path, LLAMAPOD_SLURMD="/opt/slurm/sbin/slurmd")
    options = ["--conf-server", "10.1.0.10:6817"]
    assert node_slurm.hyperpod_slurmd_command(s, options) == ("/opt/slurm/sbin/slurmd", "-D", "-s", *options)
    unit = tmp_path / "lib/systemd/system/slurmd.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=-/opt/slurm/sbin/slurmd -D\n")
    assert node_slurm.hyperpod_slurmd_command(s, options) == ("/opt/slurm/sbin/slurmd", "-D", *options)


def test_the_controller_waits_for_hyperpods_slurm_conf_within_its_deadline(tmp_path):
    import threading

    s = settings_for(tmp_path, LLAMAPOD_SLURM_TIMEOUT="5")
    cluster = node_cluster.load_cluster(*write_inputs(tmp_path))
    s.slurm_conf.parent.mkdir(parents=True)
    writer = threading.Timer(0.5, lambda: s.slurm_conf.write_text("SlurmctldHost=ip-10-1-0-10(10.1.0.10)\n"))
    writer.start()
    started = time.monotonic()
    node_slurm.wait_for_hyperpod_slurm_conf(s, cluster)
    assert 0.4 < time.monotonic() - started < 4
    s.slurm_conf.write_text("SlurmctldHost=somewhere-else\n")  # not this cluster's controller yet
    s.slurm_timeout = 0.3
    with pytest.raises(StepError, match=r"^HyperPod's .*/opt/slurm/etc/slurm\.conf: gave up after \d+ attempts in 0s; "
                                        r"last error: .* does not name the controller 10\.1\.0\.10 yet\. "
                                        r"HyperPod's agent writes it"):
        node_slurm.wait_for_hyperpod_slurm_conf(s, cluster)


def test_managed_slurmctld_unit_reads_llamapods_slurm_conf(tmp_path):
    s = settings_for(tmp_path, LLAMAPOD_SLURMCTLD="/usr/sbin/slurmctld")
    services = node_system.ServiceManager("systemd", "systemctl", s.etc_dir)
    services.write_unit_override(node_slurm.slurmctld_service(s, managed=True))
    conf = tmp_path / "opt/slurm/etc/slurm.conf"
    assert (tmp_path / "etc/systemd/system/slurmctld.service.d/llamapod.conf").read_text() == (
        f"[Service]\nEnvironment=SLURM_CONF={conf}\nExecStart=\nExecStart=/usr/sbin/slurmctld -D -s -f {conf}\n")

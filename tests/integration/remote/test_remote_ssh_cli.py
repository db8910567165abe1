"""`llamapod ssh` and `llamapod ssh --config` against a real sshd.

Two ways in: the [remote] host override (any reachable head node), and the HyperPod path
(cluster described by the AWS emulator, SSH carried by the ProxyCommand through the SSM
stand-in from tests/fixtures/sshd.py, since the emulator has no SSM sessions).
"""

from __future__ import annotations

import json
import subprocess

import boto3
import pytest

from llamapod.cli.main import main

pytestmark = pytest.mark.sshd

LIFECYCLE = {"SourceS3Uri": "s3://sagemaker-demo-lifecycle/src", "OnCreate": "on_create.sh"}
ROLE = "arn:aws:iam::123456789012:role/demo-exec"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private LLAMAPOD_HOME (known_hosts, control sockets) and HOME (~/.ssh) for this test."""
    monkeypatch.setenv("LLAMAPOD_HOME", str(tmp_path / "lp"))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    return tmp_path


def _toml(path, remote: dict) -> str:
    lines = ["[remote]"] + [f"{k} = {json.dumps(v)}" for k, v in remote.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _cli(capfd, *args):
    code = main(list(args))
    out, err = capfd.readouterr()
    return code, out, err


def test_remote_ssh_runs_a_command_on_the_head_node(sshd_server, home, capfd):
    config = _toml(home / "llamapod.toml", sshd_server.remote_table(home / "fsx"))
    code, out, err = _cli(capfd, "ssh", "--cluster", "demo", "-f", config, "--", "echo", "hello", "&&", "echo", "$((6*7))")
    assert (code, out) == (0, "hello\n42\n"), err
    code, out, err = _cli(capfd, "ssh", "--cluster", "demo", "-f", config, "--", "exit 3")
    assert code == 3


def test_remote_ssh_config_entry_is_correct_and_idempotent(sshd_server, home, capfd):
    config = _toml(home / "llamapod.toml", sshd_server.remote_table(home / "fsx"))
    ssh_config = home / "user" / ".ssh" / "config"
    ssh_config.parent.mkdir(parents=True)
    ssh_config.write_text("Host github.com\n    User git\n")
    code, out, err = _cli(capfd, "ssh", "--config", "--cluster", "demo", "-f", config)
    assert code == 0, err
    assert out == "ssh demo\n"
    first = ssh_config.read_text()
    code, _, err = _cli(capfd, "ssh", "--config", "--cluster", "demo", "-f", config)
    assert code == 0 and "already up to date" in err
    assert ssh_config.read_text() == first and first.count("Host demo demo-controller-machine") == 1
    assert first.startswith("Host github.com\n    User git\n")
    # The entry works with plain ssh.
    proc = subprocess.run(["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", "demo", "echo", "via-config"],
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "via-config\n"), proc.stderr


def _create_cluster(name: str = "demo") -> str:
    client = boto3.client("sagemaker")
    groups = [("controller-machine", "ml.c5.xlarge", 1), ("worker-group-1", "ml.g5.48xlarge", 2)]
    return client.create_cluster(
        ClusterName=name,
        InstanceGroups=[{"InstanceGroupName": g, "InstanceType": t, "InstanceCount": n, "LifeCycleConfig": LIFECYCLE,
                         "ExecutionRole": ROLE, "ThreadsPerCore": 1} for g, t, n in groups],
        VpcConfig={"SecurityGroupIds": ["sg-12345678"], "Subnets": ["subnet-12345678"]})["ClusterArn"]


def _node_ids(name: str = "demo") -> dict[str, list[str]]:
    """Instance ids per group, as HyperPod lists them (ids are EC2 instance ids: i-...)."""
    ids: dict[str, list[str]] = {}
    for node in boto3.client("sagemaker").list_cluster_nodes(ClusterName=name)["ClusterNodeSummaries"]:
        ids.setdefault(node["InstanceGroupName"], []).append(node["InstanceId"])
    return ids


def _fresh_key(home):
    key = home / "laptop_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def test_remote_ssh_through_ssm_installs_the_key_then_connects(aws, sshd_server, ssm_standin, home, capfd):
    arn = _create_cluster()
    ids = _node_ids()
    controller, (worker0, worker1) = ids["controller-machine"][0], ids["worker-group-1"]
    key = _fresh_key(home)
    config = _toml(home / "llamapod.toml", {"user": sshd_server.user, "identity_file": str(key),
                                             "ssh_config_file": "none"})
    ssh_config = home / "user" / ".ssh" / "config"
    code, out, err = _cli(capfd, "ssh", "--config", "--cluster", "demo", "-f", config)
    assert code == 0, err
    assert "installing your SSH key for root on demo (controller-machine) through SSM" in err
    assert out.splitlines() == ["ssh demo", f"ssh demo-controller-machine-{controller}",
                                f"ssh demo-worker-group-1-{worker0}", f"ssh demo-worker-group-1-{worker1}"]
    pushed = (sshd_server.home / ".ssh" / "authorized_keys").read_text()
    assert pushed.count(key.with_suffix(".pub").read_text().strip()) == 1

    target = f"sagemaker-cluster:demo_controller-machine-{controller}"
    calls = ssm_standin.calls()
    documents = [call[call.index("--document-name") + 1] for call in calls]
    assert documents[:3] == ["AWS-StartSSHSession", "AWS-StartNonInteractiveCommand", "AWS-StartSSHSession"]
    assert all(call[call.index("--target") + 1] == target for call in calls)
    text = ssh_config.read_text()
    assert (f"    ProxyCommand aws ssm start-session --target {target} --document-name AWS-StartSSHSession "
            "--parameters portNumber=%p --region us-east-1\n") in text
    assert f"    HostKeyAlias {worker1}\n" in text
    assert arn.endswith("/demo")

    # Plain ssh through the written entry reaches a worker alias over the ProxyCommand.
    proc = subprocess.run(["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes",
                           f"demo-worker-group-1-{worker1}", "echo", "through-ssm"],
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "through-ssm\n"), proc.stderr
    assert ssm_standin.calls()[-1][3] == f"sagemaker-cluster:demo_worker-group-1-{worker1}"

    # Second run: the key is already there, nothing is pushed again.
    before = len(ssm_standin.calls())
    code, out, err = _cli(capfd, "ssh", "--cluster", "demo", "-f", config, "worker-group-1", "--", "echo", "again")
    assert (code, out) == (0, "again\n"), err
    assert "installing your SSH key" not in err
    assert all(c[c.index("--document-name") + 1] == "AWS-StartSSHSession" for c in ssm_standin.calls()[before:])


def test_remote_ssh_bad_input_is_one_line_each(aws, sshd_server, home, capfd, monkeypatch, tmp_path):
    _create_cluster()
    ids = _node_ids()
    config = _toml(home / "llamapod.toml", {"user": sshd_server.user, "ssh_config_file": "none",
                                             "identity_file": str(_fresh_key(home))})
    code, _, err = _cli(capfd, "ssh", "--cluster", "demo", "-f", config, "no-such-node", "--", "true")
    assert code == 2
    assert err.splitlines() == [
        "error: cluster demo has no node 'no-such-node'",
        "  hint: name an instance group, instance id or hostname: controller-machine, worker-group-1, "
        + ", ".join(ids["controller-machine"] + ids["worker-group-1"])]

    # The wording of a missing cluster belongs to llamapod.cloud.hyperpod; here: one line, naming it.
    code, _, err = _cli(capfd, "ssh", "--cluster", "nope", "-f", config, "--", "true")
    assert code == 1 and err.startswith("error: ") and "'nope'" in err.splitlines()[0].replace(" nope ", " 'nope' ")

    # The only tools on PATH lack the plugin and the AWS CLI.
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", f"{empty}:/usr/bin:/bin")
    code, _, err = _cli(capfd, "ssh", "--cluster", "demo", "-f", config, "--", "true")
    assert code == 1
    assert err.splitlines()[0] == "error: the AWS CLI (`aws`) is not installed: SSH to HyperPod nodes runs through it"
    (empty / "aws").write_text("#!/bin/sh\nexit 0\n")
    (empty / "aws").chmod(0o755)
    code, _, err = _cli(capfd, "ssh", "--cluster", "demo", "-f", config, "--", "true")
    assert err.splitlines()[0] == "error: the AWS Session Manager plugin (`session-manager-plugin`) is not installed"
    assert "session-manager-plugin" in err.splitlines()[1]


def test_remote_ssh_cluster_not_in_service_and_no_credentials(aws, home, capfd, monkeypatch):
    _create_cluster()
    config = _toml(home / "llamapod.toml", {"ssh_config_file": "none"})

    # The emulator creates clusters InService at once; a cluster still being created is
    # injected at the botocore level as describe_cluster documents it.
    from llamapod.cloud.session import AwsSession

    original = AwsSession.client

    def creating(self, service):
        client = original(self, service)

        def still_creating(parsed, model, **_):
            if model.name == "DescribeCluster":
                parsed["ClusterStatus"] = "Creating"

        client.meta.events.register("after-call.sagemaker.DescribeCluster", still_creating)
        return client

    monkeypatch.setattr(AwsSession, "client", creating)
    code, _, err = _cli(capfd, "ssh", "--cluster", "demo", "-f", config, "--", "true")
    assert code == 1
    assert err.splitlines() == ["error: cluster demo is Creating, not InService",
                                "  hint: wait for it: `llamapod status` shows progress (`llamapod up` resumes a create)"]
    monkeypatch.setattr(AwsSession, "client", original)

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, _, err = _cli(capfd, "ssh", "--cluster", "demo", "-f", config, "--", "true")
    assert code == 1
    assert err.splitlines() == ["error: describe_cluster failed: NoCredentials: no AWS credentials were found",
                                "  hint: run `aws configure` or `aws sso login`, or set AWS_PROFILE"]


def test_remote_train_dry_run_on_hyperpod_uses_the_worker_group(aws, home, capfd, monkeypatch):
    _create_cluster()
    config = _toml(home / "llamapod.toml", {"ssh_config_file": "none"})
    monkeypatch.chdir(home)
    (home / "notes.txt").write_text("some text to train on\n")
    code, out, err = _cli(capfd, "train", "--config", config, "--cluster", "demo", "--dry-run", "--max_steps=50",
                          "--dataset=notes.txt", "--run_dir=exp7")
    assert code == 0, err
    assert out.startswith("# would run on cluster demo in /fsx/llamapod/runs/exp7\n"
                          "# would upload notes.txt -> /fsx/llamapod/runs/exp7/inputs/dataset/notes.txt\n")
    assert "#SBATCH --nodes=2\n" in out and "--nproc_per_node 8 " in out
    assert "srun --auto-resume=1 torchrun " in out
    assert "export FI_PROVIDER=efa\n" in out and "export LLAMAPOD_HOME=/fsx/llamapod/home\n" in out
    assert "--dataset=/fsx/llamapod/runs/exp7/inputs/dataset/notes.txt" in out
    assert err.endswith("dry run: nothing was uploaded or submitted to demo\n")


def test_remote_ssh_refused_key_on_a_plain_head_node_says_how_to_add_it(sshd_server, home, capfd):
    key = _fresh_key(home)
    config = _toml(home / "llamapod.toml", {**sshd_server.remote_table(home / "fsx"), "identity_file": str(key)})
    code, _, err = _cli(capfd, "ssh", "--cluster", "demo", "-f", config, "--", "true")
    assert code == 1
    lines = err.splitlines()
    assert lines[0].startswith("error: root@127.0.0.1 refused the SSH key (") and "Permission denied" in lines[0]
    assert lines[1] == (f"  hint: add {key}.pub to ~root/.ssh/authorized_keys on 127.0.0.1 (e.g. `ssh-copy-id -i "
                        f"{key}.pub -p {sshd_server.port} root@127.0.0.1`), or set remote.identity_file")

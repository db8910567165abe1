"""SSM targets, the ProxyCommand, ~/.ssh/config blocks, and the key-install script."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from llamapod.cloud.access import (SshHostEntry, authorize_key_argv, check_ssm_tools, cluster_id_from_arn,
                                   merge_ssh_config, proxy_command, push_key_via_ssm_argv, render_ssh_config_block,
                                   ssm_target, write_ssh_config)
from llamapod.errors import ConfigError, RemoteError
from llamapod.remote.shell import LocalShell

ARN = "arn:aws:sagemaker:us-east-1:123456789012:cluster/k9x2abcdq7zt"


def test_remote_ssm_target_and_proxy_command_golden():
    target = ssm_target(ARN, "controller-machine", "i-0123456789abcdef0")
    assert target == "sagemaker-cluster:k9x2abcdq7zt_controller-machine-i-0123456789abcdef0"
    assert proxy_command(target) == (
        "aws ssm start-session --target sagemaker-cluster:k9x2abcdq7zt_controller-machine-i-0123456789abcdef0 "
        "--document-name AWS-StartSSHSession --parameters portNumber=%p")
    assert proxy_command(target, region="eu-west-1", profile="research") == (
        "aws ssm start-session --target sagemaker-cluster:k9x2abcdq7zt_controller-machine-i-0123456789abcdef0 "
        "--document-name AWS-StartSSHSession --parameters portNumber=%p --region eu-west-1 --profile research")


def test_remote_cluster_id_needs_an_arn():
    assert cluster_id_from_arn("arn:aws-cn:sagemaker:cn-north-1:1:cluster/abc") == "abc"
    with pytest.raises(ConfigError, match="'my-cluster' is not a SageMaker cluster ARN"):
        cluster_id_from_arn("my-cluster")


def test_remote_missing_tools_say_how_to_install():
    with pytest.raises(RemoteError) as err:
        check_ssm_tools(lambda name: None if name == "session-manager-plugin" else f"/usr/bin/{name}")
    assert err.value.message == "the AWS Session Manager plugin (`session-manager-plugin`) is not installed"
    assert "brew install --cask session-manager-plugin" in err.value.hint
    with pytest.raises(RemoteError) as err:
        check_ssm_tools(lambda name: None)
    assert err.value.message == "the AWS CLI (`aws`) is not installed: SSH to HyperPod nodes runs through it"
    check_ssm_tools(lambda name: f"/usr/bin/{name}")


ENTRY = SshHostEntry(("demo", "demo-controller-machine"),
                     (("HostName", "sagemaker-cluster:k9x2abcdq7zt_controller-machine-i-1"), ("User", "ubuntu"),
                      ("ProxyCommand", proxy_command("sagemaker-cluster:k9x2abcdq7zt_controller-machine-i-1")),
                      ("IdentityFile", "/home/me/my keys/id_ed25519")))


def test_remote_ssh_config_block_golden():
    assert render_ssh_config_block("demo", [ENTRY]) == (
        "# >>> llamapod cluster demo (managed by `llamapod ssh --config`; edits are overwritten) >>>\n"
        "Host demo demo-controller-machine\n"
        "    HostName sagemaker-cluster:k9x2abcdq7zt_controller-machine-i-1\n"
        "    User ubuntu\n"
        "    ProxyCommand aws ssm start-session --target sagemaker-cluster:k9x2abcdq7zt_controller-machine-i-1 "
        "--document-name AWS-StartSSHSession --parameters portNumber=%p\n"
        '    IdentityFile "/home/me/my keys/id_ed25519"\n'
        "# <<< llamapod cluster demo <<<\n")


def test_remote_ssh_config_is_idempotent_and_keeps_other_lines(tmp_path):
    path = tmp_path / "dot-ssh" / "config"
    mine = "Host github.com\n    User git\n\nHost *\n    ServerAliveInterval 20\n"
    path.parent.mkdir()
    path.write_text(mine)
    path.chmod(0o644)
    assert write_ssh_config(path, "demo", [ENTRY]) is True
    first = path.read_text()
    assert first.startswith(mine) and first.count("Host demo ") == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert write_ssh_config(path, "demo", [ENTRY]) is False
    assert path.read_text() == first

    # A second cluster gets its own block; updating the first replaces only its block.
    other = SshHostEntry(("other",), (("HostName", "10.0.0.9"),))
    write_ssh_config(path, "other", [other])
    moved = SshHostEntry(("demo",), (("HostName", "10.0.0.7"),))
    write_ssh_config(path, "demo", [moved])
    text = path.read_text()
    assert text.startswith(mine)
    assert text.count("# >>> llamapod cluster demo") == 1 and "HostName 10.0.0.7" in text
    assert "sagemaker-cluster:" not in text and "Host other\n    HostName 10.0.0.9\n" in text
    assert sorted(os.listdir(path.parent)) == ["config"], "no temporary files left behind"


def test_remote_ssh_config_created_private_when_missing(tmp_path):
    path = tmp_path / "new-ssh" / "config"
    write_ssh_config(path, "demo", [ENTRY])
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert merge_ssh_config("Host a\n    User b", "demo", "BLOCK\n") == "Host a\n    User b\n\nBLOCK\n"


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ6z0OK6WIS4RLsoWJ4uYF1ZFMUT5ifPaTXNbnBSdIQ4 me@laptop"


def test_remote_key_install_script_is_idempotent(tmp_path):
    shell = LocalShell()
    keys = tmp_path / "home" / ".ssh" / "authorized_keys"
    keys.parent.mkdir(parents=True)
    keys.write_text("ssh-rsa AAAAexisting other@host")  # no trailing newline: must not glue keys together
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    first = shell.run(authorize_key_argv(user, KEY, str(keys)), check=True)
    second = shell.run(authorize_key_argv(user, KEY + "\n", str(keys)), check=True)
    assert (first.stdout.strip(), second.stdout.strip()) == ("added", "present")
    assert keys.read_text() == f"ssh-rsa AAAAexisting other@host\n{KEY}\n"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.parent.stat().st_mode) == 0o700


def test_remote_key_install_rejects_what_is_not_a_key():
    with pytest.raises(ConfigError, match="not a single OpenSSH public key line"):
        authorize_key_argv("ubuntu", "-----BEGIN OPENSSH PRIVATE KEY-----")


def test_remote_key_push_through_ssm_golden():
    argv = push_key_via_ssm_argv("sagemaker-cluster:k9x2abcdq7zt_controller-machine-i-1", "ubuntu", KEY,
                                 region="us-east-1")
    assert argv[:7] == ["aws", "ssm", "start-session", "--target",
                        "sagemaker-cluster:k9x2abcdq7zt_controller-machine-i-1",
                        "--document-name", "AWS-StartNonInteractiveCommand"]
    assert argv[7] == "--parameters" and argv[9:] == ["--region", "us-east-1"]
    (command,) = json.loads(argv[8])["command"]
    # The node runs this line with a shell as root: it must be the same script, quoted once.
    import shlex

    assert shlex.split(command) == authorize_key_argv("ubuntu", KEY)

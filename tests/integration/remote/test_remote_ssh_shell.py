"""SshShell against a real OpenSSH server on 127.0.0.1 (the head node's stand-in)."""

from __future__ import annotations

import subprocess

import pytest

from llamapod.errors import RemoteError
from llamapod.remote.shell import CommandFailed, Shell
from llamapod.remote.ssh import SshShell, SshTarget

pytestmark = pytest.mark.sshd


@pytest.fixture
def target(sshd_server, tmp_path) -> SshTarget:
    return SshTarget(host=sshd_server.host, port=sshd_server.port, user=sshd_server.user,
                     identity_file=sshd_server.identity_file, known_hosts=tmp_path / "known_hosts",
                     host_key_alias="head-node", config_file="none", label="head-node")


@pytest.fixture
def shell(target):
    with SshShell(target) as sh:
        yield sh


def test_remote_runs_commands_with_cwd_env_input_and_exit_codes(shell, tmp_path):
    assert isinstance(shell, Shell)
    result = shell.run(["sh", "-c", 'printf "%s|%s|" "$PWD" "$GREETING"; cat'], cwd=str(tmp_path),
                       env={"GREETING": "hello world"}, input="from stdin")
    assert result.ok
    assert result.stdout == f"{tmp_path}|hello world|from stdin"
    # Arguments reach the remote side exactly, however they are quoted.
    odd = ["it's", "a b", "$HOME", "; rm -rf /", '"quoted"']
    assert shell.run(["printf", "%s\\n", *odd]).stdout.splitlines() == odd
    failed = shell.run(["sh", "-c", "echo oops >&2; exit 3"])
    assert failed.returncode == 3 and failed.stderr.strip() == "oops"
    with pytest.raises(CommandFailed, match=r"`sh -c 'exit 4'` failed on head-node: exit code 4"):
        shell.run(["sh", "-c", "exit 4"], check=True)


def test_remote_pins_the_host_key_in_its_own_known_hosts(shell, target, sshd_server):
    shell.run(["true"], check=True)
    known = target.known_hosts.read_text()
    assert known.startswith("head-node ")
    assert sshd_server.host_public_key.split()[1] in known


def test_remote_files_round_trip(shell, tmp_path):
    remote_root = tmp_path / "fsx"
    shell.write_text(f"{remote_root}/a/b.txt", "line 1\nline 2\n", mode=0o600)
    assert shell.read_text(f"{remote_root}/a/b.txt") == "line 1\nline 2\n"
    assert (remote_root / "a/b.txt").stat().st_mode & 0o777 == 0o600
    assert shell.exists(f"{remote_root}/a/b.txt") and not shell.exists(f"{remote_root}/missing")
    assert shell.which("sh") in ("/bin/sh", "/usr/bin/sh") and shell.which("no-such-program-x") is None

    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    (local / "sub" / "data.bin").write_bytes(bytes(range(256)) * 100)
    (local / "top.txt").write_text("top")
    shell.put(local, f"{remote_root}/tree")
    shell.put(local, f"{remote_root}/tree")  # twice: contents land in place, never nested
    assert sorted(p.relative_to(remote_root / "tree").as_posix() for p in (remote_root / "tree").rglob("*")) == \
        ["sub", "sub/data.bin", "top.txt"]
    shell.put(local / "top.txt", f"{remote_root}/single/top.txt")
    assert (remote_root / "single/top.txt").read_text() == "top"

    back = tmp_path / "back"
    shell.get(f"{remote_root}/tree", back)
    assert (back / "sub" / "data.bin").read_bytes() == bytes(range(256)) * 100
    shell.get(f"{remote_root}/a/b.txt", back / "b.txt")
    assert (back / "b.txt").read_text() == "line 1\nline 2\n"
    with pytest.raises(RemoteError, match=r"/nope does not exist on head-node"):
        shell.get(f"{remote_root}/nope", back / "x")
    with pytest.raises(RemoteError, match=r"cannot read .*/nope on head-node: cat: .*No such file"):
        shell.read_text(f"{remote_root}/nope")


def test_remote_stream_yields_lines_as_they_come(shell):
    lines = list(shell.stream(["sh", "-c", "for i in 1 2 3; do echo line $i; done"]))
    assert lines == ["line 1", "line 2", "line 3"]


def test_remote_one_master_connection_serves_every_command(shell, target):
    shell.run(["true"], check=True)
    check = subprocess.run(["ssh", *shell.options(), "-p", str(target.port), "-O", "check",
                            f"{target.user}@{target.host}"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "Master running" in check.stderr


def test_remote_refused_connection_is_one_line(tmp_path, sshd_server):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    target = SshTarget(host="127.0.0.1", port=closed_port, user="root", config_file="none",
                       known_hosts=tmp_path / "kh", label="head-node")
    with SshShell(target) as shell, pytest.raises(RemoteError) as err:
        shell.run(["true"])
    assert err.value.message == f"SSH connection to head-node was refused (port {closed_port})"
    assert err.value.hint == "check that sshd runs on the node and the port is right (remote.port)"


def test_remote_wrong_key_is_one_line(tmp_path, sshd_server):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    target = SshTarget(host=sshd_server.host, port=sshd_server.port, user=sshd_server.user, identity_file=other,
                       config_file="none", known_hosts=tmp_path / "kh", label="head-node")
    with SshShell(target) as shell, pytest.raises(RemoteError) as err:
        shell.run(["true"])
    assert err.value.message.startswith("head-node refused the SSH key (")
    assert "Permission denied (publickey)" in err.value.message


def test_remote_disk_full_is_one_line(shell, tmp_path):
    mount_point = tmp_path / "tiny-fsx"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here to fill up")
    try:
        big = tmp_path / "big.bin"
        big.write_bytes(b"x" * 400_000)
        with pytest.raises(RemoteError) as err:
            shell.put(big, f"{mount_point}/big.bin")
        assert err.value.message == f"cannot copy {big} to {mount_point}/big.bin on head-node: no space left on device"
        assert not any(mount_point.iterdir()), "a failed copy leaves nothing half-written"
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_remote_output_that_is_not_utf8_is_replaced_not_an_error(shell, tmp_path):
    # A job log or a tool's output may hold any bytes; llamapod shows them, it does not crash on them.
    log = tmp_path / "bytes.log"
    log.write_bytes(b"ok\n\xff\xfe bad\ncaf\xc3")
    assert shell.run(["cat", str(log)]).stdout == "ok\n\ufffd\ufffd bad\ncaf\ufffd"
    assert shell.read_text(str(log)) == "ok\n\ufffd\ufffd bad\ncaf\ufffd"
    assert list(shell.stream(["cat", str(log)])) == ["ok", "\ufffd\ufffd bad", "caf\ufffd"]

"""SshShell against a real OpenSSH server with the paths a real user may have: local key, known_hosts
and control socket in folders with spaces, quotes, '#' and '%' (which ssh would expand), and
remote paths that start with '-' or hold newlines, quotes and command substitutions."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from llamapod.remote.ssh import SshShell, SshTarget

pytestmark = pytest.mark.sshd

ODD = "llp %h #c 'q' \"d\""


@pytest.fixture
def odd_shell(sshd_server, tmp_path):
    local = tmp_path / ODD
    local.mkdir()
    key = local / "id %r"
    shutil.copy(sshd_server.identity_file, key)
    key.chmod(0o600)
    # Short, because ssh's control socket path is limited to about 100 bytes.
    control = Path(tempfile.mkdtemp(prefix="l %h#'"))
    target = SshTarget(host=sshd_server.host, port=sshd_server.port, user=sshd_server.user, identity_file=key,
                       known_hosts=local / "known hosts", host_key_alias="head-node", config_file="none")
    with SshShell(target, control_dir=control) as shell:
        yield shell, local
    shutil.rmtree(control, ignore_errors=True)


def test_ssh_works_from_folders_with_odd_names(odd_shell):
    shell, local = odd_shell
    assert shell.run(["echo", "hi"], check=True).stdout == "hi\n"
    # The host key went to the known_hosts file named, not to a file cut at the space.
    assert (local / "known hosts").read_text().startswith("head-node ")
    assert not (local / "known").exists()


@pytest.mark.parametrize("name", ["-rf", "-n", "a b", "it's", "$(touch pwned)", "`touch pwned`", "x\ny", "--"])
def test_remote_paths_are_never_options_or_code(odd_shell, tmp_path, name):
    shell, _ = odd_shell
    folder = tmp_path / "remote"
    shell.write_text(str(folder / name), "content\n", mode=0o640)
    assert shell.read_text(str(folder / name)) == "content\n"
    assert shell.exists(str(folder / name))
    assert sorted(p.name for p in folder.iterdir()) == [name]
    shell.get(str(folder / name), tmp_path / "back")
    assert (tmp_path / "back").read_text() == "content\n"
    shell.put(tmp_path / "back", str(folder / "copy" / name))
    assert (folder / "copy" / name).read_text() == "content\n"
    assert not list(tmp_path.rglob("pwned")) and not list(Path.home().glob("pwned"))

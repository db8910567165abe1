"""Random strings into every ssh entry point, read back by the real OpenSSH client (``ssh -G``).

Whatever the user, host, cluster, group, profile or local paths are, either llamapod refuses
them with one ConfigError line, or ssh reads exactly the destination and options intended:
``--`` before the destination, no option-looking user or host, and a ``~/.ssh/config`` that
re-parses to the same hosts.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fixtures.hostile import hostile_text, ssh_reads
from llamapod import validate
from llamapod.cloud.access import proxy_command, render_ssh_config_block, write_ssh_config
from llamapod.errors import ConfigError, LlamapodError
from llamapod.remote.connect import ClusterAccess, Node, RemoteSettings, load_remote_settings, ssh_config_entries
from llamapod.remote.ssh import SshShell, SshTarget

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")

ARN = "arn:aws:sagemaker:us-east-1:123456789012:cluster/k9x2abcdq7zt"
# Paths a real user may have: spaces, quotes, '#', '%' (an ssh token), '=' and non-ASCII.
ODD_DIR = "llp dir %h #c 'q' \"d\" =ü"



def _valid_or_hostile(grammar) -> st.SearchStrategy[str]:
    """Mostly random strings of the grammar itself, so that examples with several fields often get
    as far as ssh; a third hostile ones."""
    valid = st.from_regex(grammar, fullmatch=True)
    return st.one_of(valid, valid, hostile_text)


names = _valid_or_hostile(validate.CLUSTER_NAME)
users = _valid_or_hostile(validate.LOGIN_USER)
hosts = _valid_or_hostile(validate.HOST)
profiles = st.one_of(st.none(), _valid_or_hostile(validate.AWS_PROFILE))
regions = st.one_of(st.none(), _valid_or_hostile(validate.REGION))


@pytest.fixture(scope="module")
def odd_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ssh") / ODD_DIR
    path.mkdir()
    return path


def _expected_identity(path: str) -> str:
    # `ssh -G` prints IdentityFile before %-token expansion, so an escaped '%' shows as '%%'.
    return path.replace("%", "%%")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(user=users, host=hosts, profile=profiles, region=regions)
def test_ssh_argv_reaches_exactly_the_intended_destination(odd_dir, user, host, profile, region):
    try:
        target = SshTarget(host=host, user=user, port=2222, identity_file=odd_dir / "id_ed25519",
                           known_hosts=odd_dir / "known_hosts", host_key_alias="i-0abc", config_file="none",
                           proxy_command=proxy_command("sagemaker-cluster:abc_ctl-i-0abc", region=region,
                                                       profile=profile))
        argv = SshShell(target, control_dir=odd_dir).ssh_argv("squeue --me")
    except LlamapodError as err:
        assert isinstance(err, ConfigError) and "\n" not in err.message
        return
    split = argv.index("--")
    assert argv[split + 1:] == [f"{user}@{host}", "squeue --me"]
    assert not user.startswith("-") and not host.startswith("-") and f"{user}@{host}" not in argv[1:split]
    read = ssh_reads(argv[1:])
    assert read["user"] == [user]
    assert read["hostname"][0].lower() == host.lower()
    assert read["port"] == ["2222"]
    assert _expected_identity(str(odd_dir / "id_ed25519")) in read["identityfile"]
    assert read["userknownhostsfile"] == [str(odd_dir / "known_hosts")]
    assert read["hostkeyalias"] == ["i-0abc"]
    assert read["proxycommand"] == [target.proxy_command]


@pytest.mark.parametrize("user, host", [
    ("-oProxyCommand=touch pwned", "10.0.0.5"), ("ubuntu", "-oProxyCommand=touch pwned"),
    ("ubuntu\n", "10.0.0.5"), ("ubuntu", "10.0.0.5\n"), ("a@b", "10.0.0.5"), ("ubuntu", "h%p"),
])
def test_option_looking_users_and_hosts_never_reach_ssh(user, host):
    with pytest.raises(ConfigError) as err:
        SshTarget(host=host, user=user)
    assert "\n" not in err.value.message and err.value.message.startswith(("ssh user ", "ssh host "))


def _settings(directory: Path, **values) -> RemoteSettings | None:
    """The [remote] table with these values, through the real loader; None when it refuses them."""
    lines = ["[remote]"] + [f"{key} = {json.dumps(value)}" for key, value in values.items() if value is not None]
    config = directory / "llamapod.toml"
    config.write_text("\n".join(lines) + "\n")
    try:
        return load_remote_settings(config)
    except LlamapodError as err:
        assert isinstance(err, ConfigError) and "\n" not in err.message, err.message
        return None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=names, group=names, instance=st.one_of(hostile_text, st.from_regex(r"i-[0-9a-f]{8,17}", fullmatch=True)),
       user=users, profile=profiles, region=regions)
def test_ssh_config_entries_reparse_to_the_same_hosts(odd_dir, name, group, instance, user, profile, region):
    key = odd_dir / "id_ed25519"
    key.touch()
    settings_ = _settings(odd_dir, identity_file=str(key), user=user, profile=profile, region=region)
    assume(settings_ is not None)
    previous = os.environ.get("LLAMAPOD_HOME")
    os.environ["LLAMAPOD_HOME"] = str(odd_dir / "home")
    try:
        access = ClusterAccess(name=name, settings=settings_, user=user, controller_group=group, cluster_arn=ARN,
                               region=region, profile=profile, nodes=[Node(instance, group, "Running", "10.1.0.5")])
        entries = ssh_config_entries(access)
        block = render_ssh_config_block(name, entries)
    except LlamapodError as err:
        assert isinstance(err, ConfigError) and "\n" not in err.message
        return
    finally:
        if previous is None:
            os.environ.pop("LLAMAPOD_HOME", None)
        else:
            os.environ["LLAMAPOD_HOME"] = previous
    config = odd_dir / "config"
    config.write_text("Host github.com\n    User git\n")
    write_ssh_config(config, name, entries)
    assert config.read_text().startswith("Host github.com\n    User git\n") and block in config.read_text()
    assert ssh_reads(["-F", str(config), "github.com"])["user"] == ["git"]
    for entry in entries:
        options = dict(entry.options)
        for alias in entry.aliases:
            read = ssh_reads(["-F", str(config), alias])
            assert read["hostname"][0].lower() == options["HostName"].lower()
            assert read["user"] == [options["User"]]
            assert read["proxycommand"] == [options["ProxyCommand"]]
            # ssh lowercases the alias, as it does host names; known_hosts matches without case.
            assert [a.lower() for a in read["hostkeyalias"]] == [options["HostKeyAlias"].lower()]
            assert read["userknownhostsfile"] == [options["UserKnownHostsFile"]]
            assert _expected_identity(options["IdentityFile"]) in read["identityfile"]


@pytest.mark.parametrize("name", ["demo\nHost *\n    ProxyCommand touch pwned", "../../x", "a b", "-oFoo"])
def test_a_bad_cluster_name_never_reaches_the_ssh_config(tmp_path, name):
    config = tmp_path / "config"
    config.write_text("Host github.com\n    User git\n")
    with pytest.raises(ConfigError):
        write_ssh_config(config, name, [])
    assert config.read_text() == "Host github.com\n    User git\n"


# How `ssh -G` prints each option: paths after expansion (compared as the file they name,
# so ./~x and ~x are the same relative path), IdentityFile before %-expansion, ProxyCommand
# verbatim, HostKeyAlias with its ASCII letters lowercased (C's tolower).
READ_BACK = {"UserKnownHostsFile": os.path.abspath, "ControlPath": os.path.abspath,
             "HostKeyAlias": lambda v: "".join(c.lower() if c.isascii() else c for c in v),
             "IdentityFile": lambda v: os.path.abspath(_expected_identity(v)), "ProxyCommand": lambda v: v}
SAME_FILE = {"UserKnownHostsFile", "ControlPath", "IdentityFile"}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(sorted(READ_BACK)), value=hostile_text)
def test_any_option_value_is_quoted_so_ssh_reads_it_back(odd_dir, key, value):
    try:
        written = validate.ssh_config_value(key, value)
    except ConfigError as err:
        assert "\n" not in err.message
        return
    config = odd_dir / "value-config"
    config.write_bytes(f"Host h\n    {key} {written}\n".encode())
    for argv in (["-F", str(config), "h"], ["-F", "none", "-o", f"{key}={written}", "--", "h"]):
        read = ssh_reads(argv)[key.lower()][0]
        assert (os.path.abspath(read) if key in SAME_FILE else read) == READ_BACK[key](value)

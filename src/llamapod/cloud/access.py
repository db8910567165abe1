"""Reaching HyperPod nodes: SSM targets, the SSH ProxyCommand, ~/.ssh/config entries, keys.

HyperPod nodes have no public address. Each is an SSM managed instance named
``sagemaker-cluster:<cluster-id>_<group>-<instance-id>``; SSH rides on an SSM session
(``AWS-StartSSHSession``) started by the ``aws`` CLI with the Session Manager plugin,
as the ``ProxyCommand`` of a normal ssh. Everything here is text and local files: no
AWS call is made by this module except through the ``aws`` CLI when pushing a key.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import subprocess  # nosec B404: subprocess runs fixed programs with argument lists, never a shell
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from llamapod import validate
from llamapod.errors import ConfigError, RemoteError
from llamapod.remote.ssh import PLUGIN_MISSING_HINT

SSH_DOCUMENT = "AWS-StartSSHSession"
COMMAND_DOCUMENT = "AWS-StartNonInteractiveCommand"
PLUGIN = "session-manager-plugin"

AWS_CLI_MISSING_HINT = (
    "install the AWS CLI v2: https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html "
    "(macOS: `brew install awscli`)"
)


# ---- SSM targets and the ProxyCommand --------------------------------------------


def cluster_id_from_arn(cluster_arn: str) -> str:
    """``arn:aws:sagemaker:us-east-1:123:cluster/abc123def456`` -> ``abc123def456``."""
    if not cluster_arn.startswith("arn:") or "/" not in cluster_arn:
        raise ConfigError(f"'{cluster_arn}' is not a SageMaker cluster ARN",
                          "expected arn:<partition>:sagemaker:<region>:<account>:cluster/<id>")
    return cluster_arn.rsplit("/", 1)[1]


def ssm_target(cluster_arn: str, group: str, instance_id: str) -> str:
    """The SSM target of one node (FACTS.md: ``sagemaker-cluster:<cluster-id>_<group>-<instance-id>``)."""
    return f"sagemaker-cluster:{cluster_id_from_arn(cluster_arn)}_{group}-{instance_id}"


def _aws_scope_args(region: str | None, profile: str | None) -> list[str]:
    args = []
    if region:
        args += ["--region", region]
    if profile:
        args += ["--profile", profile]
    return args


def proxy_command(target: str, *, region: str | None = None, profile: str | None = None) -> str:
    """The ssh ``ProxyCommand`` that carries SSH over an SSM session to ``target``.

    The region is spelled out so the entry works whatever the shell's default region is.
    """
    argv = ["aws", "ssm", "start-session", "--target", target, "--document-name", SSH_DOCUMENT,
            "--parameters", "portNumber=%p", *_aws_scope_args(region, profile)]
    return shlex.join(argv)


def check_ssm_tools(which: Callable[[str], str | None] = shutil.which) -> None:
    """Both programs the ProxyCommand runs must be on PATH; say how to install the missing one."""
    if which("aws") is None:
        raise RemoteError("the AWS CLI (`aws`) is not installed: SSH to HyperPod nodes runs through it",
                          AWS_CLI_MISSING_HINT)
    if which(PLUGIN) is None:
        raise RemoteError("the AWS Session Manager plugin (`session-manager-plugin`) is not installed",
                          PLUGIN_MISSING_HINT)


# ---- ~/.ssh/config ---------------------------------------------------------------


@dataclass(frozen=True)
class SshHostEntry:
    """One ``Host`` block: the names it answers to and its options, in order."""

    aliases: tuple[str, ...]
    options: tuple[tuple[str, str], ...]

    def render(self) -> str:
        for alias in self.aliases:
            validate.require(validate.ssh_host_alias_problem(alias), alias, "ssh Host alias",
                             "cluster, group and node names must be letters, digits and '-'")
        lines = [f"Host {' '.join(self.aliases)}"]
        lines += [f"    {key} {validate.ssh_config_value(key, value)}" for key, value in self.options]
        return "\n".join(lines)


def _markers(cluster: str) -> tuple[str, str]:
    # The name sits in comment lines of the user's ssh config: a newline in it would
    # start a line ssh parses (and rejects, refusing the whole file).
    validate.cluster_state_name(cluster)
    return (f"# >>> llamapod cluster {cluster} (managed by `llamapod ssh --config`; edits are overwritten) >>>",
            f"# <<< llamapod cluster {cluster} <<<")


def render_ssh_config_block(cluster: str, entries: Sequence[SshHostEntry]) -> str:
    begin, end = _markers(cluster)
    return "\n".join([begin, *(e.render() for e in entries), end]) + "\n"


def merge_ssh_config(existing: str, cluster: str, block: str) -> str:
    """``existing`` with the cluster's managed block replaced (or appended); other lines untouched."""
    begin, end = _markers(cluster)
    pattern = re.compile(rf"^{re.escape(begin)}\n.*?^{re.escape(end)}\n?", re.S | re.M)
    if pattern.search(existing):
        return pattern.sub(lambda _: block, existing, count=1)
    if not existing:
        return block
    separator = "" if existing.endswith("\n\n") else ("\n" if existing.endswith("\n") else "\n\n")
    return existing + separator + block


def write_ssh_config(path: Path, cluster: str, entries: Sequence[SshHostEntry]) -> bool:
    """Install the cluster's block into ``path``; returns whether the file changed.

    Written to a temporary file in the same directory and renamed, so an interrupted
    write never leaves a truncated ssh config; the file stays private (0600), and the
    ``~/.ssh`` directory is created 0700 when missing.
    """
    path = Path(path).expanduser()
    try:
        existing = path.read_text() if path.exists() else ""
    except OSError as exc:
        raise RemoteError(f"cannot read {path}: {exc.strerror}", "check its permissions") from None
    updated = merge_ssh_config(existing, cluster, render_ssh_config_block(cluster, entries))
    if updated == existing:
        return False
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".config.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(updated)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise RemoteError(f"cannot write {path}: {exc.strerror}", "check the permissions of the directory") from None
    return True


# ---- the user's key on the cluster -----------------------------------------------

# Runs as root on the node (SSM sessions start as root). Appends the key only when the
# exact key is absent, so a second push changes nothing; creates ~user/.ssh with the
# modes sshd's StrictModes demands and hands it to the user.
AUTHORIZE_KEY_SCRIPT = r"""
set -eu
user="$1"; key="$2"; file="${3:-}"
if [ -z "$file" ]; then
  home="$(getent passwd "$user" | cut -d: -f6)"
  [ -n "$home" ] || { echo "no user $user on this node" >&2; exit 3; }
  file="$home/.ssh/authorized_keys"
fi
dir="$(dirname "$file")"
mkdir -p "$dir"
touch "$file"
if grep -qxF "$key" "$file"; then
  echo present
else
  [ -s "$file" ] && [ -n "$(tail -c1 "$file")" ] && echo >> "$file"
  printf '%s\n' "$key" >> "$file"
  echo added
fi
chmod 700 "$dir"; chmod 600 "$file"
chown "$user": "$dir" "$file" 2>/dev/null || true
"""


def authorize_key_argv(user: str, public_key: str, authorized_keys: str | None = None) -> list[str]:
    """``sh -c`` argv that adds ``public_key`` to ``user``'s authorized_keys, idempotently."""
    key = public_key.strip()
    if not key or "\n" in key or not key.startswith(("ssh-", "ecdsa-", "sk-")):
        raise ConfigError("the SSH public key to install is not a single OpenSSH public key line",
                          "point remote.identity_file at a private key whose .pub sits beside it")
    return ["sh", "-c", AUTHORIZE_KEY_SCRIPT, "llamapod-authorize-key", user, key, authorized_keys or ""]


def push_key_via_ssm_argv(target: str, user: str, public_key: str, *, region: str | None = None,
                          profile: str | None = None) -> list[str]:
    """``aws ssm start-session`` running the key script on the node as root, without SSH."""
    command = shlex.join(authorize_key_argv(user, public_key))
    parameters = json.dumps({"command": [command]})
    return ["aws", "ssm", "start-session", "--target", target, "--document-name", COMMAND_DOCUMENT,
            "--parameters", parameters, *_aws_scope_args(region, profile)]


def push_key_via_ssm(target: str, user: str, public_key: str, *, region: str | None = None,
                     profile: str | None = None, timeout_s: float = 120) -> str:
    """Install the key on the node through SSM; returns "added" or "present"."""
    argv = push_key_via_ssm_argv(target, user, public_key, region=region, profile=profile)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)  # nosec B603: argv is built by llamapod from validated names, no shell
    except FileNotFoundError:
        raise RemoteError("the AWS CLI (`aws`) is not installed", AWS_CLI_MISSING_HINT) from None
    except subprocess.TimeoutExpired:
        raise RemoteError(f"installing your SSH key on {target} through SSM did not finish within {timeout_s:g} s",
                          "check the node with `llamapod status`, then re-run") from None
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 or not re.search(r"\b(added|present)\b", output):
        detail = (proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}").splitlines()[-1]
        raise RemoteError(f"could not install your SSH key on {target} through SSM: {detail}",
                          "check your AWS credentials and ssm:StartSession permission (`llamapod doctor`)")
    return "added" if re.search(r"\badded\b", output) else "present"


# ---- the user's key pair on this machine -----------------------------------------

DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")


def find_or_create_identity(ssh_dir: Path, fallback_dir: Path) -> Path:
    """The user's usual private key, or (when they have none) one llamapod generates for itself."""
    for name in DEFAULT_KEYS:
        candidate = ssh_dir / name
        if candidate.is_file() and Path(f"{candidate}.pub").is_file():
            return candidate
    own = fallback_dir / "id_ed25519"
    if not own.is_file():
        own.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        proc = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"llamapod@{platform.node()}",  # nosec B603, B607: argv is built by llamapod from validated names, no shell; ssh-keygen is found on PATH by design, like ssh itself
                               "-f", str(own)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RemoteError(f"cannot create an SSH key at {own}: {proc.stderr.strip()}",
                              "create one with `ssh-keygen -t ed25519` and re-run")
    return own


def public_key_of(identity_file: Path) -> str:
    pub = Path(str(identity_file) + ".pub")
    if not pub.is_file():
        raise ConfigError(f"no public key beside {identity_file} (expected {pub})",
                          f"recreate it with `ssh-keygen -y -f {identity_file} > {pub}`")
    return pub.read_text().strip()

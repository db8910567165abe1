"""``SshShell``: the Shell protocol over the system's OpenSSH client (``ssh``, plus ``tar`` for trees).

One master connection per host is opened on first use and shared by every later command
and copy (ControlMaster), so a `llamapod train --cluster` that runs dozens of commands
pays for the SSM session set-up once. BatchMode keeps ssh from ever prompting: a missing
key is an error with a next step, not a hang. Host keys are pinned in a known_hosts file
of the cluster's own, on first use (``accept-new``), never in the user's.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess  # nosec B404: subprocess runs fixed programs with argument lists, never a shell
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from llamapod import validate
from llamapod.errors import RemoteError
from llamapod.remote.shell import CommandFailed, CommandResult

# ssh exits 255 when it could not run the command at all; its stderr says why.
SSH_FAILURE = 255

_DISK_FULL = ("No space left on device", "Disk quota exceeded")


# SSH through SSM needs AWS's plugin on this machine.
PLUGIN_MISSING_HINT = (
    "install the AWS Session Manager plugin: "
    "https://docs.aws.amazon.com/systems-manager/latest/userguide/session-manager-working-with-install-plugin.html "
    "(macOS: `brew install --cask session-manager-plugin`; Debian/Ubuntu: the .deb from that page)"
)


@dataclass(frozen=True)
class SshTarget:
    """How to reach one host: what ssh needs, and nothing that depends on AWS."""

    host: str
    user: str
    port: int = 22
    identity_file: Path | None = None
    proxy_command: str | None = None
    # The name host keys are recorded under; SSM targets are long and per-session-agnostic,
    # so nodes are pinned by instance id instead.
    host_key_alias: str | None = None
    known_hosts: Path | None = None
    # "none" ignores ~/.ssh/config (tests; reproducible runs); None reads it as ssh always does.
    config_file: str | None = None
    connect_timeout_s: int = 20
    # Directories prepended to PATH for every command (HyperPod keeps Slurm in /opt/slurm/bin,
    # which non-interactive ssh sessions do not have on PATH).
    extra_path: tuple[str, ...] = ()
    label: str | None = None

    def __post_init__(self) -> None:
        # The one place every ssh destination passes: a user or host that looks like an
        # option (-oProxyCommand=...) or holds '@', '%' or a newline never reaches ssh.
        validate.require_login_user(self.user, "ssh user", "set remote.user (or cluster.cluster_user) to a user name")
        validate.require_host(self.host, "ssh host")
        if self.host_key_alias is not None:
            validate.require_host(self.host_key_alias, "ssh host key alias", "name the node by its instance id")

    @property
    def where(self) -> str:
        return self.label or f"{self.user}@{self.host_key_alias or self.host}"

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}"


def _option(key: str, value: str) -> list[str]:
    """``-o Key=value``, the value quoted as ssh parses it (ssh reads -o like a config file line)."""
    return ["-o", f"{key}={validate.ssh_config_value(key, value)}"]


@dataclass
class SshShell:
    """Runs commands and copies files on one host through ``ssh``/``scp``."""

    target: SshTarget
    control_dir: Path | None = None
    _owns_control_dir: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.control_dir is None:
            # Unix socket paths are limited to ~104 bytes: keep the directory short.
            self.control_dir = Path(tempfile.mkdtemp(prefix="llp-ssh-"))
            self._owns_control_dir = True

    @property
    def where(self) -> str:
        return self.target.where

    # ---- the ssh command line ---------------------------------------------------

    def options(self) -> list[str]:
        """Options shared by ssh and scp (both read ``-o``; ports differ: -p vs -P)."""
        t = self.target
        digest = hashlib.sha1(f"{t.user}@{t.host}:{t.port}".encode()).hexdigest()[:16]  # nosec B324: names the ssh control socket, not a security use
        opts = []
        if t.config_file:
            opts += ["-F", t.config_file]
        opts += [
            "-o", "BatchMode=yes",
            "-o", "ControlMaster=auto",
            *_option("ControlPath", f"{self.control_dir}/{digest}"),
            "-o", "ControlPersist=120",
            "-o", f"ConnectTimeout={t.connect_timeout_s}",
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=4",
            "-o", "StrictHostKeyChecking=accept-new",
            "-o", "LogLevel=ERROR",
        ]
        if t.known_hosts:
            opts += _option("UserKnownHostsFile", str(t.known_hosts))
        if t.host_key_alias:
            opts += _option("HostKeyAlias", t.host_key_alias)
        if t.identity_file:
            # As an option rather than -i: ssh expands %-tokens in identity paths either way,
            # and ssh_config_value escapes them.
            opts += [*_option("IdentityFile", str(t.identity_file)), "-o", "IdentitiesOnly=yes"]
        if t.proxy_command:
            opts += _option("ProxyCommand", t.proxy_command)
        return opts

    def ssh_argv(self, remote_command: str | None = None, *, tty: bool = False) -> list[str]:
        """The full ``ssh`` command line; ``llamapod ssh`` runs it with the terminal attached.

        ``--`` comes before the destination: after it ssh parses no option, neither in the
        destination nor in the remote command (without it, ssh re-reads options that follow
        the host name).
        """
        argv = ["ssh", *self.options(), "-p", str(self.target.port)]
        argv.append("-t" if tty else "-T")
        argv += ["--", self.target.destination]
        if remote_command is not None:
            argv.append(remote_command)
        return argv

    def login_command(self, command_words: Sequence[str]) -> str | None:
        """A user's command as ssh itself would send it (words joined by spaces, so
        ``llamapod ssh -- 'squeue | head'`` pipes on the node), with the node's PATH fixes."""
        if not command_words:
            return None
        command = " ".join(command_words)
        if self.target.extra_path:
            command = 'export PATH="' + ":".join(self.target.extra_path) + ':$PATH"; ' + command
        return command

    def _remote_command(self, argv: Sequence[str], cwd: str | None, env: Mapping[str, str] | None) -> str:
        parts = []
        if self.target.extra_path:
            parts.append('export PATH="' + ":".join(self.target.extra_path) + ':$PATH"')
        if cwd:
            parts.append(f"cd {_operand(cwd)}")
        command = shlex.join(str(a) for a in argv)
        if env:
            for name in env:
                validate.require(validate.env_name_problem(name), name, "environment variable name",
                                 "name variables with letters, digits and _")
            command = "env " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " " + command
        parts.append(command)
        return " && ".join(parts)

    def _prepare_local_files(self) -> None:
        if self.target.known_hosts:
            self.target.known_hosts.parent.mkdir(parents=True, exist_ok=True)

    # ---- the Shell protocol -----------------------------------------------------

    def run(self, argv, *, input=None, timeout=None, check=False, cwd=None, env=None) -> CommandResult:
        return self.run_script(self._remote_command(argv, cwd, env), argv=tuple(str(a) for a in argv),
                               input=input, timeout=timeout, check=check)

    def run_script(self, script: str, *, argv: tuple[str, ...] | None = None, input: str | bytes | None = None,
                   timeout: float | None = None, check: bool = False) -> CommandResult:
        """Run a shell command line as written (for pipelines the caller has quoted)."""
        self._prepare_local_files()
        shown = argv or ("sh", "-c", script)
        try:
            proc = subprocess.run(self.ssh_argv(script), input=input, capture_output=True,  # nosec B603: ssh with llamapod's options and a validated target; remote words are shlex-quoted
                                  text=not isinstance(input, bytes), timeout=timeout,
                                  errors=None if isinstance(input, bytes) else "replace")
        except FileNotFoundError:
            raise RemoteError("the OpenSSH client (`ssh`) is not installed on this machine",
                              "install it (apt-get install openssh-client, or your OS's package)") from None
        except subprocess.TimeoutExpired:
            raise RemoteError(f"`{shlex.join(shown)}` did not finish within {timeout:g} s on {self.where}",
                              f"check the node with `llamapod ssh`") from None
        stdout = proc.stdout if isinstance(proc.stdout, str) else proc.stdout.decode(errors="replace")
        stderr = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
        if proc.returncode == SSH_FAILURE:
            raise_for_ssh_failure(stderr, self.target)
        result = CommandResult(tuple(shown), proc.returncode, stdout, stderr)
        if not result.ok:
            raise_for_disk_full(result, self.where)
        if check and not result.ok:
            raise CommandFailed(result, self.where)
        return result

    def stream(self, argv, *, cwd=None) -> Iterator[str]:
        self._prepare_local_files()
        command = self._remote_command(argv, cwd, None)
        # stderr goes to a file, not a pipe nobody reads while stdout is streamed (a full
        # pipe would stall the remote command); it is read back for ssh's own failures.
        with tempfile.TemporaryFile(mode="w+", errors="replace") as errors:
            proc = subprocess.Popen(self.ssh_argv(command), stdout=subprocess.PIPE, stderr=errors, text=True,  # nosec B603: ssh with llamapod's options and a validated target; remote words are shlex-quoted
                                    errors="replace")
            try:
                if proc.stdout is None:
                    raise RemoteError(f"no output stream from ssh to {self.where}")
                for line in proc.stdout:
                    yield line.rstrip("\n")
                proc.wait()
                if proc.returncode == SSH_FAILURE:
                    errors.seek(0)
                    raise_for_ssh_failure(errors.read(), self.target)
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()
                if proc.stdout:
                    proc.stdout.close()

    def which(self, program: str) -> str | None:
        result = self.run(["sh", "-c", 'command -v "$1"', "which", program])
        path = result.stdout.strip()
        return path or None

    def read_text(self, path: str) -> str:
        result = self.run(["cat", validate.shell_operand(path)])
        if not result.ok:
            raise RemoteError(f"cannot read {path} on {self.where}: {_last_line(result)}")
        return result.stdout

    def write_text(self, path: str, text: str, mode: int | None = None) -> None:
        # Written under a temporary name and renamed, so a reader never sees half a file.
        tmp = f"{path}.tmp-llamapod"
        steps = [f"mkdir -p {_operand(os.path.dirname(path) or '.')}", f"cat > {_operand(tmp)}"]
        if mode is not None:
            steps.append(f"chmod {mode:o} {_operand(tmp)}")
        steps.append(f"mv -f {_operand(tmp)} {_operand(path)}")
        result = self.run_script(" && ".join(steps) + f" || {{ rc=$?; rm -f {_operand(tmp)}; exit $rc; }}",
                                 argv=("write", path), input=text)
        if not result.ok:
            raise RemoteError(f"cannot write {path} on {self.where}: {_last_line(result)}",
                              "check free space and permissions there")

    def put(self, local: Path, remote: str) -> None:
        local = Path(local)
        if not local.exists():
            raise RemoteError(f"cannot copy {local}: it does not exist on this machine")
        if local.is_dir():
            self._put_tree(local, remote)
        else:
            self._put_file(local, remote)

    def get(self, remote: str, local: Path) -> None:
        local = Path(local)
        probe = self.run(["sh", "-c", 'if [ -d "$1" ]; then echo dir; elif [ -e "$1" ]; then echo file; fi',
                          "probe", remote])
        kind = probe.stdout.strip()
        if not kind:
            raise RemoteError(f"{remote} does not exist on {self.where}")
        if kind == "dir":
            self._get_tree(remote, local)
        else:
            self._get_file(remote, local)

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path]).ok

    def close(self) -> None:
        """Stop the shared master connection (it would otherwise linger for ControlPersist)."""
        subprocess.run(["ssh", *self.options(), "-p", str(self.target.port), "-O", "exit", "--",  # nosec B603, B607: ssh with llamapod's options and a validated target; remote words are shlex-quoted; ssh and tar are found on PATH by design
                        self.target.destination], capture_output=True, timeout=30)
        if self._owns_control_dir and self.control_dir is not None:
            for entry in self.control_dir.iterdir():
                entry.unlink(missing_ok=True)
            self.control_dir.rmdir()
            self._owns_control_dir = False

    def __enter__(self) -> "SshShell":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- copies -------------------------------------------------------------------

    def _put_file(self, local: Path, remote: str) -> None:
        # Streamed through the shared connection into a temporary name, then renamed: a
        # reader never sees half a file, and the remote shell's own error (e.g. a full
        # disk) comes back verbatim, which scp's SFTP mode hides.
        tmp = f"{remote}.part-llamapod"
        script = (f"mkdir -p {_operand(os.path.dirname(remote) or '.')} && cat > {_operand(tmp)} "
                  f"&& mv -f {_operand(tmp)} {_operand(remote)} || {{ rc=$?; rm -f {_operand(tmp)}; exit $rc; }}")
        with open(local, "rb") as source:
            proc = subprocess.run(self.ssh_argv(script), stdin=source, capture_output=True)  # nosec B603: ssh with llamapod's options and a validated target; remote words are shlex-quoted
        stderr = proc.stderr.decode(errors="replace")
        if proc.returncode == SSH_FAILURE:
            raise_for_ssh_failure(stderr, self.target)
        if proc.returncode != 0:
            self._raise_copy_failed(stderr, f"cannot copy {local} to {remote} on {self.where}")

    def _get_file(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.part-llamapod")
        with open(tmp, "wb") as sink:
            proc = subprocess.run(self.ssh_argv(f"cat {_operand(remote)}"), stdout=sink, stderr=subprocess.PIPE)  # nosec B603: ssh with llamapod's options and a validated target; remote words are shlex-quoted
        stderr = proc.stderr.decode(errors="replace")
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            if proc.returncode == SSH_FAILURE:
                raise_for_ssh_failure(stderr, self.target)
            self._raise_copy_failed(stderr, f"cannot copy {remote} from {self.where} to {local}")
        tmp.replace(local)

    def _put_tree(self, local: Path, remote: str) -> None:
        # tar over the shared connection: one round trip for a whole directory, and the
        # contents land in `remote` itself (scp -r would nest them when it exists).
        self._prepare_local_files()
        script = f"mkdir -p {_operand(remote)} && tar -xf - -C {_operand(remote)}"
        with subprocess.Popen(["tar", "-cf", "-", "-C", str(local), "."], stdout=subprocess.PIPE) as tar:  # nosec B603, B607: ssh with llamapod's options and a validated target; remote words are shlex-quoted; ssh and tar are found on PATH by design
            proc = subprocess.run(self.ssh_argv(script), stdin=tar.stdout, capture_output=True, text=True)  # nosec B603: ssh with llamapod's options and a validated target; remote words are shlex-quoted
        if proc.returncode == SSH_FAILURE:
            raise_for_ssh_failure(proc.stderr, self.target)
        if proc.returncode != 0 or tar.returncode != 0:
            self._raise_copy_failed(proc.stderr, f"cannot copy {local} to {remote} on {self.where}")

    def _get_tree(self, remote: str, local: Path) -> None:
        local.mkdir(parents=True, exist_ok=True)
        self._prepare_local_files()
        script = f"tar -cf - -C {_operand(remote)} ."
        with tempfile.TemporaryFile() as errors:
            with subprocess.Popen(self.ssh_argv(script), stdout=subprocess.PIPE, stderr=errors) as ssh:  # nosec B603: ssh with llamapod's options and a validated target; remote words are shlex-quoted
                untar = subprocess.run(["tar", "-xf", "-", "-C", str(local)], stdin=ssh.stdout, capture_output=True,  # nosec B603, B607: ssh with llamapod's options and a validated target; remote words are shlex-quoted; ssh and tar are found on PATH by design
                                       text=True)
            errors.seek(0)
            stderr = errors.read().decode(errors="replace")
        if ssh.returncode == SSH_FAILURE:
            raise_for_ssh_failure(stderr, self.target)
        if ssh.returncode != 0 or untar.returncode != 0:
            self._raise_copy_failed(stderr or untar.stderr, f"cannot copy {remote} from {self.where} to {local}")

    def _raise_copy_failed(self, stderr: str, what: str) -> None:
        if any(marker in stderr for marker in _DISK_FULL):
            raise RemoteError(f"{what}: no space left on device",
                              "free space on the shared file system (e.g. delete old runs under /fsx/llamapod/runs) "
                              "or grow FSx, then re-run")
        if "Permission denied" in stderr and "publickey" in stderr:
            raise_for_ssh_failure(stderr, self.target)
        line = stderr.strip().splitlines()[-1] if stderr.strip() else "unknown error"
        raise RemoteError(f"{what}: {line}", "check the path and free space there, then re-run")


def _operand(path: str) -> str:
    """A path as one shell word that no command reads as an option."""
    return shlex.quote(validate.shell_operand(path))


def _last_line(result: CommandResult) -> str:
    text = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return text[-1] if text else f"exit code {result.returncode}"


def raise_for_disk_full(result: CommandResult, where: str) -> None:
    if any(marker in result.stderr for marker in _DISK_FULL):
        raise RemoteError(f"`{result.command}` failed on {where}: no space left on device",
                          "free space on the shared file system (e.g. delete old runs under /fsx/llamapod/runs) "
                          "or grow FSx, then re-run")


class SshAuthError(RemoteError):
    """The server refused our key: the one failure a key push can fix."""


def raise_for_ssh_failure(stderr: str, target: SshTarget) -> None:
    """Turn ssh's own failure (exit 255) into one line with the next step."""
    text = stderr.strip()
    where = target.where
    if "SessionManagerPlugin is not found" in text or "session-manager-plugin" in text:

        raise RemoteError("the AWS Session Manager plugin is not installed", PLUGIN_MISSING_HINT)
    if "TargetNotConnected" in text:
        raise RemoteError(f"SSM cannot reach {where}: the node's SSM agent is not connected",
                          "check the node with `llamapod status`; a node being replaced comes back in a few minutes")
    if "Unable to locate credentials" in text or "ExpiredToken" in text or "InvalidClientTokenId" in text:
        raise RemoteError("the SSM session could not start: no valid AWS credentials",
                          "run `aws configure` or `aws sso login` (or set AWS_PROFILE), then re-run")
    if "AccessDeniedException" in text and "StartSession" in text:
        raise RemoteError("the SSM session was refused: your identity may not call ssm:StartSession",
                          "`llamapod operator-policy` prints the permissions llamapod needs")
    if "Permission denied" in text:
        raise SshAuthError(f"{where} refused the SSH key ({text.splitlines()[-1]})",
                           "run `llamapod ssh` once to install your public key there, or set remote.identity_file")
    if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        known = target.known_hosts or "~/.ssh/known_hosts"
        raise RemoteError(f"the host key of {where} changed since it was first seen",
                          f"if the node was replaced, remove its line from {known} and re-run")
    if "Connection refused" in text:
        raise RemoteError(f"SSH connection to {where} was refused (port {target.port})",
                          "check that sshd runs on the node and the port is right (remote.port)")
    if "timed out" in text or "Connection timed out" in text:
        raise RemoteError(f"SSH connection to {where} timed out",
                          "check the network path (for SSM: `llamapod status` shows whether the node is Running)")
    if "Could not resolve hostname" in text:
        raise RemoteError(f"cannot resolve the host name of {where}", "check remote.host in llamapod.toml")
    last = text.splitlines()[-1] if text else "ssh exited with code 255"
    raise RemoteError(f"SSH to {where} failed: {last}", "re-run with --debug, or try `llamapod ssh` to see ssh's messages")

"""The ``Shell`` abstraction.

Everything that drives Slurm or a head node does it through a Shell, so the same code
runs on the head node itself (LocalShell) and from a laptop (SshShell, optionally
through SSM). Commands are argument lists, never strings built by hand, so quoting is
done once, here, with ``shlex``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess  # nosec B404: subprocess runs fixed programs with argument lists, never a shell
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Protocol, Sequence, runtime_checkable

from llamapod.errors import RemoteError


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


class CommandFailed(RemoteError):
    """A command ran but exited non-zero; carries its result for callers to inspect."""

    def __init__(self, result: CommandResult, where: str):
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        last = detail[-1] if detail else f"exit code {result.returncode}"
        super().__init__(f"`{result.command}` failed on {where}: {last}")
        self.result = result


@runtime_checkable
class Shell(Protocol):
    """Where commands run. ``where`` names it in messages ("this machine", "ubuntu@head")."""

    where: str

    def run(self, argv: Sequence[str], *, input: str | None = None, timeout: float | None = None,
            check: bool = False, cwd: str | None = None, env: Mapping[str, str] | None = None) -> CommandResult: ...

    def stream(self, argv: Sequence[str], *, cwd: str | None = None) -> Iterator[str]: ...

    def which(self, program: str) -> str | None: ...

    def read_text(self, path: str) -> str: ...

    def write_text(self, path: str, text: str, mode: int | None = None) -> None: ...

    def put(self, local: Path, remote: str) -> None: ...

    def get(self, remote: str, local: Path) -> None: ...

    def exists(self, path: str) -> bool: ...


class LocalShell:
    """Runs commands on this machine with subprocess."""

    where = "this machine"

    def __init__(self, env: Mapping[str, str] | None = None):
        self._env = dict(env) if env else None

    def _merged_env(self, env: Mapping[str, str] | None) -> dict[str, str] | None:
        if not env and not self._env:
            return None
        merged = dict(os.environ)
        merged.update(self._env or {})
        merged.update(env or {})
        return merged

    def run(self, argv, *, input=None, timeout=None, check=False, cwd=None, env=None) -> CommandResult:
        argv = tuple(str(a) for a in argv)
        try:
            proc = subprocess.run(argv, input=input, capture_output=True, text=True, errors="replace", timeout=timeout,  # nosec B603: argv comes from llamapod's callers as a list, never through a shell
                                  cwd=cwd, env=self._merged_env(env))
        except FileNotFoundError:
            raise RemoteError(f"`{argv[0]}` is not installed on {self.where}",
                              f"install it or add it to PATH ({os.environ.get('PATH', '')})") from None
        except subprocess.TimeoutExpired:
            raise RemoteError(f"`{shlex.join(argv)}` did not finish within {timeout:g} s on {self.where}",
                              "check that the service it talks to is up") from None
        result = CommandResult(argv, proc.returncode, proc.stdout, proc.stderr)
        if check and not result.ok:
            raise CommandFailed(result, self.where)
        return result

    def stream(self, argv, *, cwd=None) -> Iterator[str]:
        argv = [str(a) for a in argv]
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",  # nosec B603: argv comes from llamapod's callers as a list, never through a shell
                                    cwd=cwd, env=self._merged_env(None))
        except FileNotFoundError:
            raise RemoteError(f"`{argv[0]}` is not installed on {self.where}", "install it or add it to PATH") from None
        try:
            assert proc.stdout is not None  # nosec B101: stdout=PIPE guarantees it; the assert only narrows the type
            for line in proc.stdout:
                yield line.rstrip("\n")
        finally:
            if proc.poll() is None:
                proc.terminate()
            proc.wait()

    def which(self, program: str) -> str | None:
        return shutil.which(program)

    def read_text(self, path: str) -> str:
        try:
            return Path(path).read_text(errors="replace")
        except OSError as exc:
            raise RemoteError(f"cannot read {path} on {self.where}: {exc.strerror}") from None

    def write_text(self, path: str, text: str, mode: int | None = None) -> None:
        target = Path(path)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            if mode is not None:
                tmp.chmod(mode)
            tmp.replace(target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise RemoteError(f"cannot write {path} on {self.where}: {exc.strerror}",
                              "check free space and permissions") from None

    def put(self, local: Path, remote: str) -> None:
        try:
            Path(remote).parent.mkdir(parents=True, exist_ok=True)
            if Path(local).is_dir():
                shutil.copytree(local, remote, dirs_exist_ok=True)
            else:
                shutil.copy2(local, remote)
        except OSError as exc:
            raise RemoteError(f"cannot copy {local} to {remote}: {exc.strerror}") from None

    def get(self, remote: str, local: Path) -> None:
        self.put(Path(remote), str(local))

    def exists(self, path: str) -> bool:
        return Path(path).exists()

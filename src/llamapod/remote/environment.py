"""The Python environment a cluster job runs in, prepared once on the shared file system.

The job must run the same llamapod as the laptop, including unreleased changes, so
the local checkout is built into a wheel, uploaded to /fsx, and installed (with its
``train`` extra: on Linux x86_64 PyPI's torch is a CUDA build) into a virtual
environment on /fsx that every node sees. The environment is keyed by the wheel's
hash: an unchanged checkout reuses it in a second; a changed one gets a fresh one.
An environment counts only once its ready marker exists, so an interrupted install
is redone rather than used half-built.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess  # nosec B404: subprocess runs fixed programs with argument lists, never a shell
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import llamapod
from llamapod import paths
from llamapod.cli import ui
from llamapod.errors import RemoteError
from llamapod.remote.shell import Shell

READY_MARKER = ".llamapod-ready"
MIN_PYTHON = (3, 10)
# Free space an environment needs: CUDA torch and its libraries are ~6 GB installed;
# with the base interpreter's packages reused, only llamapod itself is installed.
FULL_ENV_MIB = 8 * 1024
REUSED_ENV_MIB = 64
# Waiting for another llamapod that is preparing the same environment.
LOCK_POLL_S = 5.0
LOCK_DEADLINE_S = 3600.0


@dataclass(frozen=True)
class RemoteLayout:
    """Where llamapod keeps things on the cluster's shared file system."""

    fsx_root: str

    @property
    def root(self) -> PurePosixPath:
        return PurePosixPath(self.fsx_root) / "llamapod"

    @property
    def wheels(self) -> PurePosixPath:
        return self.root / "wheels"

    @property
    def envs(self) -> PurePosixPath:
        return self.root / "envs"

    @property
    def runs(self) -> PurePosixPath:
        return self.root / "runs"

    def run_dir(self, name: str) -> PurePosixPath:
        return self.runs / name


@dataclass(frozen=True)
class RemoteEnv:
    """A ready environment on the cluster."""

    path: PurePosixPath
    key: str
    reused: bool

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    @property
    def activate(self) -> str:
        return f"source {shlex.quote(str(self.path / 'bin' / 'activate'))}"


# ---- the local wheel ---------------------------------------------------------------


def project_root() -> Path | None:
    """The checkout llamapod runs from (an editable install), or None for an installed wheel."""
    root = Path(llamapod.__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "llamapod"' in pyproject.read_text():
        return root
    return None


def _source_files(root: Path) -> list[Path]:
    files = [root / "pyproject.toml"]
    files += [root / name for name in ("README.md", "LICENSE") if (root / name).is_file()]
    for path in sorted((root / "src" / "llamapod").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            files.append(path)
    return files


def source_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in _source_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def local_wheel(root: Path | None = None, prebuilt: str | None = None) -> Path:
    """A wheel of the checkout, built once per distinct source tree and cached.

    ``prebuilt`` (remote.wheel) names a wheel to use as is, e.g. one built by CI.
    """
    if prebuilt:
        path = Path(prebuilt).expanduser()
        if not path.is_file() or not path.name.startswith("llamapod-") or path.suffix != ".whl":
            raise RemoteError(f"remote.wheel {path} is not a llamapod wheel file",
                              "build one with `pip wheel --no-deps .` in the checkout, or remove remote.wheel")
        return path
    root = root or project_root()
    if root is None:
        raise RemoteError("llamapod is not running from a source checkout, so there is no wheel to build",
                          f"set remote.wheel to a llamapod wheel (`pip download --no-deps llamapod=={llamapod.__version__}`)"
                          ", or run from a checkout (`pip install -e .`)")
    cache = paths.cache_dir() / "wheels" / source_hash(root)[:16]
    built = sorted(cache.glob("llamapod-*.whl"))
    if built:
        return built[0]
    ui.step("building a wheel of this llamapod checkout")
    with tempfile.TemporaryDirectory(prefix="llamapod-wheel-") as tmp:
        # Built from a clean copy of exactly the hashed files: an in-tree build would leave
        # build/ in the checkout, and stale files there can end up in the wheel.
        source = Path(tmp) / "source"
        for path in _source_files(root):
            copy = source / path.relative_to(root)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copy)
        # No build isolation: it would download setuptools; the laptop may be offline.
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",  # nosec B603: runs this interpreter's pip with fixed arguments, no shell
                               "--quiet", "--wheel-dir", tmp, str(source)], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("llamapod-*.whl"))
        if proc.returncode != 0 or not wheels:
            detail = (proc.stderr.strip() or proc.stdout.strip() or "no wheel produced").splitlines()[-1]
            raise RemoteError(f"building the llamapod wheel failed: {detail}",
                              f"run `pip wheel --no-deps {root}` to see the full error")
        cache.mkdir(parents=True, exist_ok=True)
        final = cache / wheels[0].name
        shutil.move(str(wheels[0]), final)
    return final


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---- the environment on the cluster ---------------------------------------------


@dataclass(frozen=True)
class EnvOptions:
    base_python: str = "python3"
    system_site_packages: bool = False
    pip_no_index: bool = False
    pip_args: tuple[str, ...] = ()

    def fingerprint(self) -> str:
        return json.dumps([self.base_python, self.system_site_packages, self.pip_no_index, list(self.pip_args)])


def env_key(wheel_sha256: str, options: EnvOptions) -> str:
    return hashlib.sha256(f"{wheel_sha256}\n{options.fingerprint()}".encode()).hexdigest()[:16]


def prepare_environment(shell: Shell, layout: RemoteLayout, wheel: Path, options: EnvOptions) -> RemoteEnv:
    """Reuse the environment for this wheel, or upload the wheel and build it."""
    wheel_sha = file_sha256(wheel)
    key = env_key(wheel_sha, options)
    env_dir = layout.envs / key
    if shell.exists(str(env_dir / READY_MARKER)):
        ui.info(f"reusing the Python environment {env_dir}")
        return RemoteEnv(env_dir, key, reused=True)
    ui.step(f"preparing the Python environment {env_dir} (once per llamapod version)")
    ensure_free_space(shell, layout.fsx_root, REUSED_ENV_MIB if options.system_site_packages else FULL_ENV_MIB)
    if not acquire_build_lock(shell, env_dir):
        ui.info(f"reusing the Python environment {env_dir}, prepared meanwhile by another llamapod")
        return RemoteEnv(env_dir, key, reused=True)
    try:
        remote_wheel = upload_wheel(shell, layout, wheel, wheel_sha)
        version = check_base_python(shell, options.base_python)
        _create_venv(shell, env_dir, options)
        _pip_install(shell, env_dir, remote_wheel, options)
        installed = _verify(shell, env_dir)
        marker = {"wheel": wheel.name, "wheel_sha256": wheel_sha, "python": version, **installed}
        shell.write_text(str(env_dir / READY_MARKER), json.dumps(marker, sort_keys=True) + "\n")
    finally:
        shell.run(["rm", "-rf", build_lock(env_dir)])
    ui.success(f"environment ready: llamapod {installed['llamapod']}, torch {installed['torch']} "
               f"(CUDA {'available' if installed['cuda'] else 'not available on this node'})")
    return RemoteEnv(env_dir, key, reused=False)


def build_lock(env_dir: PurePosixPath) -> str:
    return f"{env_dir}.building"


def _lock_owner() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_is_stale(shell: Shell, lock: str) -> bool:
    """A lock left by an interrupted llamapod on this machine (its process is gone)."""
    owner = shell.run(["cat", f"{lock}/owner"])
    parts = owner.stdout.split()
    if not owner.ok or len(parts) != 2 or not parts[1].isdigit():
        return False
    host, pid = parts
    return host == socket.gethostname() and not _pid_alive(int(pid))


def acquire_build_lock(shell: Shell, env_dir: PurePosixPath, deadline_s: float = LOCK_DEADLINE_S) -> bool:
    """Take the right to build ``env_dir`` (True), or wait until someone else built it (False).

    A directory made with mkdir is the lock (atomic on any POSIX file system, Lustre too):
    two `llamapod train --cluster` runs never build one environment at the same time.
    """
    lock = build_lock(env_dir)
    shell.run(["mkdir", "-p", str(env_dir.parent)], check=True)
    deadline = time.monotonic() + deadline_s
    announced = False
    while True:
        if shell.run(["mkdir", lock]).ok:
            shell.write_text(f"{lock}/owner", _lock_owner() + "\n")
            return True
        if shell.exists(str(env_dir / READY_MARKER)):
            return False
        if _lock_is_stale(shell, lock):
            ui.warn(f"removing {lock}, left by an interrupted llamapod on this machine")
            shell.run(["rm", "-rf", lock], check=True)
            continue
        if time.monotonic() > deadline:
            raise RemoteError(f"another llamapod has been preparing {env_dir} for over {deadline_s / 60:.0f} minutes",
                              f"if nothing is preparing it any more, remove {lock} on the cluster and re-run")
        if not announced:
            ui.info(f"another llamapod is preparing {env_dir}; waiting for it")
            announced = True
        time.sleep(LOCK_POLL_S)


def ensure_free_space(shell: Shell, path: str, need_mib: int) -> None:
    result = shell.run(["df", "-Pk", path])
    lines = result.stdout.strip().splitlines()
    if not result.ok or len(lines) < 2:
        raise RemoteError(f"{path} does not exist on {shell.where}",
                          "check that the shared file system is mounted (remote.fsx_root; on HyperPod: /fsx)")
    free_mib = int(lines[-1].split()[3]) // 1024
    if free_mib < need_mib:
        raise RemoteError(f"{path} on {shell.where} has {free_mib} MiB free; the environment needs {need_mib} MiB",
                          "free space there (e.g. delete old runs under "
                          f"{PurePosixPath(path) / 'llamapod' / 'runs'}) or grow the FSx file system, then re-run")


def upload_wheel(shell: Shell, layout: RemoteLayout, wheel: Path, wheel_sha: str) -> str:
    remote = str(layout.wheels / wheel_sha[:16] / wheel.name)
    check = shell.run(["sha256sum", remote])
    if check.ok and check.stdout.split()[:1] == [wheel_sha]:
        return remote
    ui.info(f"uploading {wheel.name} to {remote}")
    shell.put(wheel, remote)
    return remote


def check_base_python(shell: Shell, base_python: str) -> str:
    # Through sh, so a missing interpreter is an exit code on every kind of Shell.
    result = shell.run(["sh", "-c", 'exec "$@"', "sh", base_python, "-c",
                        "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
    if not result.ok:
        raise RemoteError(f"`{base_python}` does not run on {shell.where}",
                          "set remote.base_python in llamapod.toml to a Python >= 3.10 on the cluster")
    version = result.stdout.strip()
    if tuple(int(p) for p in version.split(".")[:2]) < MIN_PYTHON:
        raise RemoteError(f"`{base_python}` on {shell.where} is Python {version}; llamapod needs 3.10 or newer",
                          "set remote.base_python to a newer interpreter on the cluster (e.g. from conda or uv)")
    return version


def _create_venv(shell: Shell, env_dir: PurePosixPath, options: EnvOptions) -> None:
    # A directory without the marker is a half-built environment from an interrupted run.
    shell.run(["rm", "-rf", str(env_dir)], check=True)
    argv = [options.base_python, "-m", "venv"]
    if options.system_site_packages:
        # The base interpreter's pip is visible and installs into the venv it runs in; a
        # venv-local pip would also bring an old setuptools that shadows the base's (and
        # torch requires a recent one).
        argv += ["--system-site-packages", "--without-pip"]
    result = shell.run([*argv, str(env_dir)], timeout=600)
    if not result.ok:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["unknown error"]
        raise RemoteError(f"creating a virtual environment at {env_dir} failed on {shell.where}: {detail[0]}",
                          "install the venv module there (Debian/Ubuntu: apt-get install python3-venv)")
    if options.system_site_packages:
        _inherit_base_venv(shell, env_dir, options.base_python)


# Prints whether an interpreter runs in a virtual environment, and its site-packages folders.
_SITE_PROBE = ("import json, site, sys; print(json.dumps({'venv': sys.prefix != sys.base_prefix, "
               "'site': site.getsitepackages()}))")
BASE_VENV_PTH = "_llamapod_base_venv.pth"


def _inherit_base_venv(shell: Shell, env_dir: PurePosixPath, base_python: str) -> None:
    """Make the packages of a virtual-environment ``base_python`` visible in the new environment.

    ``venv --system-site-packages`` exposes the packages of the *base interpreter* below a
    virtual environment, not those installed in it (torch in ~/myenv, say). A .pth file in
    the new environment adds the base environment's site-packages after its own, the same
    layering the option gives for a plain interpreter (its own .pth files are processed too).
    """
    base = _site_info(shell, base_python)
    if not base["venv"]:
        return
    own = [path for path in _site_info(shell, str(env_dir / "bin" / "python"))["site"]
           if path.startswith(str(env_dir))]
    if not own:
        raise RemoteError(f"the new environment {env_dir} has no site-packages folder on {shell.where}",
                          "re-run to rebuild it; if it persists, check remote.base_python")
    lines = "".join(f"import site; site.addsitedir({path!r})\n" for path in base["site"])
    shell.write_text(str(PurePosixPath(own[0]) / BASE_VENV_PTH), lines)


def _site_info(shell: Shell, python: str) -> dict:
    result = shell.run([python, "-c", _SITE_PROBE], timeout=120)
    try:
        info = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        info = None
    if not result.ok or not isinstance(info, dict):
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise RemoteError(f"`{python}` on {shell.where} cannot describe its packages: {detail[0]}",
                          "check remote.base_python in llamapod.toml")
    return info


def _pip_install(shell: Shell, env_dir: PurePosixPath, remote_wheel: str, options: EnvOptions) -> None:
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if options.pip_no_index:
        pip.append("--no-index")
    pip += list(options.pip_args)
    # A wheel file is installed even when a same-version llamapod is visible from the
    # base interpreter (an editable checkout, say); _verify checks which one imports.
    result = shell.run([*pip, f"{remote_wheel}[train]"], timeout=3600)
    if not result.ok:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["unknown error"]
        raise RemoteError(f"installing llamapod into {env_dir} failed on {shell.where}: {detail[0]}",
                          "check the cluster's internet access (or remote.pip_args for a package mirror), "
                          "then re-run: the environment is rebuilt")


def _verify(shell: Shell, env_dir: PurePosixPath) -> dict:
    probe = ("import json, llamapod, torch; print(json.dumps({'llamapod': llamapod.__version__, "
             "'llamapod_path': llamapod.__file__, 'torch': torch.__version__, 'cuda': torch.cuda.is_available()}))")
    result = shell.run([str(env_dir / "bin" / "python"), "-c", probe], timeout=300)
    if not result.ok:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["unknown error"]
        raise RemoteError(f"the new environment {env_dir} cannot import llamapod and torch: {detail[0]}",
                          "re-run to rebuild it; if it persists, check remote.base_python and remote.pip_args")
    info = json.loads(result.stdout.strip().splitlines()[-1])
    if not info["llamapod_path"].startswith(str(env_dir)):
        raise RemoteError(f"the environment {env_dir} imports llamapod from {info['llamapod_path']}, not the wheel",
                          "set remote.system_site_packages = false, or remove llamapod from remote.base_python")
    return info

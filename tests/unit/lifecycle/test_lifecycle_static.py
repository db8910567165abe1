"""What must hold for the files HyperPod runs on bare nodes: shell that shellcheck accepts,
Python that needs nothing beyond the standard library, and an upload list that cannot
forget a module."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llamapod.lifecycle import ENTRY_POINT, LIFECYCLE_DIR, upload_files

NODE_MODULES = sorted(p for p in LIFECYCLE_DIR.glob("*.py") if p.name != "__init__.py")
SHELL_FILES = sorted(LIFECYCLE_DIR.glob("*.sh"))


def test_shellcheck_is_clean_on_every_shell_file():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (.ci/setup installs it)")
    assert SHELL_FILES, "no shell files found"
    result = subprocess.run([shellcheck, "--severity=style", *map(str, SHELL_FILES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path.name}: relative import; node modules run as top-level scripts")
            names.add((node.module or "").split(".")[0])
    return names


@pytest.mark.parametrize("path", NODE_MODULES + [LIFECYCLE_DIR / "__init__.py"], ids=lambda p: p.name)
def test_python_imports_only_the_standard_library_and_its_siblings(path):
    siblings = {p.stem for p in NODE_MODULES}
    foreign = imported_modules(path) - set(sys.stdlib_module_names) - siblings
    assert not foreign, f"{path.name} imports {sorted(foreign)}"


@pytest.mark.parametrize("path", NODE_MODULES, ids=lambda p: p.name)
def test_node_modules_parse_as_python_3_8(path):
    """Older HyperPod images ship Python 3.8 as /usr/bin/python3; on_create.sh accepts 3.8."""
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 8))
    assert "removesuffix" not in path.read_text() and "removeprefix" not in path.read_text()


def test_node_program_starts_under_the_system_python_without_site_packages(tmp_path):
    """-I -S: no site-packages, no PYTHONPATH, no current directory: only the standard library."""
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    result = subprocess.run([python, "-I", "-S", str(LIFECYCLE_DIR / "node_setup.py"), "--help"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--fsx-mode {lustre,directory}" in result.stdout


def test_upload_list_has_the_entry_point_at_the_root_and_every_node_module():
    files = upload_files()
    keys = [key for _, key in files]
    assert keys[0] == ENTRY_POINT == "on_create.sh"
    assert len(set(keys)) == len(keys) and all("/" not in key for key in keys)
    assert {p.name for p in NODE_MODULES} | {p.name for p in SHELL_FILES} == set(keys)
    assert all(local.is_file() and local.name == key for local, key in files)


def test_on_create_without_a_usable_python_says_so_in_the_log(tmp_path):
    result = subprocess.run(["bash", str(LIFECYCLE_DIR / ENTRY_POINT)], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "LLAMAPOD_ROOT": str(tmp_path),
                                 "LLAMAPOD_PYTHON": str(tmp_path / "no-python")})
    assert result.returncode == 1
    message = (f"on_create.sh: ERROR: {tmp_path}/no-python not found; llamapod's lifecycle needs Python 3.8 or newer "
               "(standard library only)")
    assert message in result.stdout
    assert message in (tmp_path / "var/log/llamapod/lifecycle.log").read_text()

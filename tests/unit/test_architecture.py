"""The package's floors, as code: import-linter's contracts in pyproject.toml, and the CLI
as the only importer of the CLI."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "llamapod"


def test_import_contracts_hold():
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.fail("lint-imports is not installed: pip install -c constraints.txt -e '.[test]'")
    result = subprocess.run([lint, "--no-cache"], cwd=SRC.parents[1], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: 4 kept, 0 broken." in result.stdout


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_the_cli_and_the_package_entry_point_import_the_cli():
    importers = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC)
        if relative.parts[0] == "cli" or relative == Path("__main__.py"):
            continue
        if any(name == "llamapod.cli" or name.startswith("llamapod.cli.") for name in _imported_modules(path)):
            importers.append(str(relative))
    assert importers == []


def test_no_module_outgrows_one_job():
    # A module past ~400 lines is doing more than one thing (the limit has a small margin).
    long = [f"{p.relative_to(SRC)}: {n}" for p in sorted(SRC.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450]
    assert long == []


def test_the_package_has_no_module_named_after_the_standard_library():
    shadows = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
               if p.stem in sys.stdlib_module_names and p.stem not in ("__init__", "__main__")]
    assert shadows == []

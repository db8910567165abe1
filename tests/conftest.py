"""Shared test configuration.

Fixtures that start real components (the AWS emulator, Slurm, sshd, torchrun) live in
``tests/fixtures/`` and are imported here so every test directory can use them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Every module in tests/fixtures/ (AWS emulator, Slurm, sshd, network namespaces) is a plugin.
pytest_plugins = sorted(
    f"fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if p.stem != "__init__"
)
SRC = REPO / "src"

# Tests must never reach a real AWS account, whatever the developer's shell has.
for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
    os.environ.pop(var, None)
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("LLAMAPOD_HOME", str(REPO / ".pytest_cache" / "llamapod-home"))


@pytest.fixture
def run_cli(capsys):
    """Run ``llamapod ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from llamapod.cli.main import main

    def _run(*args: str):
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return _run


@pytest.fixture
def warnings_reported():
    """The warnings library code reports during the test, whatever reporter an earlier test installed."""
    from llamapod import report
    from llamapod.report import LogReporter

    said: list[str] = []

    class Recorder(LogReporter):
        def warn(self, message: str) -> None:
            said.append(message)

    before = report.current()
    report.use(Recorder())
    yield said
    report.use(before)


@pytest.fixture
def python_exe() -> str:
    return sys.executable

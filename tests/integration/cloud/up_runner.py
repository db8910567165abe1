"""`llamapod up --name NAME` in a process of its own, against the emulator with the behaviours it
lacks (tests/fixtures/aws.py), for tests that run several at once.

Usage: python up_runner.py NAME GATE_DIR. The run stops just before it asks FSx for the file
system, writes ``GATE_DIR/at-gate-<pid>`` and waits until ``GATE_DIR/open`` exists (at most a
minute): that is how a test holds one run in the middle of its work while another starts.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from fixtures.aws import TEST_DURATIONS, EmulatorGaps, install_on_sessions
from llamapod.cli.main import main
from llamapod.cloud import progress


def gate_before_file_system(gate: Path):
    def hold(**_):
        (gate / f"at-gate-{os.getpid()}").touch()
        deadline = time.monotonic() + 60
        while not (gate / "open").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def install(client) -> None:
        client.meta.events.register("before-parameter-build.fsx.CreateFileSystem", hold)

    return install


def run(name: str, gate: Path) -> int:
    patches = pytest.MonkeyPatch()
    clock = progress.VirtualClock()
    gaps = EmulatorGaps(os.environ["AWS_ENDPOINT_URL"], clock, TEST_DURATIONS)
    install_on_sessions(patches, gaps.install, gate_before_file_system(gate))
    patches.setattr(progress, "default_clock", lambda: clock)
    return main(["up", "--name", name])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], Path(sys.argv[2])))

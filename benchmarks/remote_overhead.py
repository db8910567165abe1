"""What reaching the head node costs: per-command latency and the cluster environment.

    python benchmarks/remote_overhead.py [--commands 20] [--no-env]

Runs as root (it starts a throwaway OpenSSH server on 127.0.0.1, as the test suite does)
and prints, in one run, side by side:
- one short command (`true`) through SshShell, which shares one master connection
  (ControlMaster), vs a fresh `ssh` per command (how hand-written scripts and the seed's
  easy-ssh.sh reach a node): median ms per command and the ratio. Over SSM every fresh
  connection also pays an SSM session set-up (~1-2 s), so the real gap is larger;
- the environment step of `llamapod train --cluster`: first time (wheel build from the
  checkout, upload, fresh venv, install) vs every later run (reuse check), with the base
  interpreter's packages visible (as in the tests) so torch is not downloaded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fixtures.sshd import running_sshd  # noqa: E402  (the tests' own throwaway sshd)

from llamapod.workflows.environment import EnvOptions, RemoteLayout, local_wheel, prepare_environment  # noqa: E402
from llamapod.remote.ssh import SshShell, SshTarget  # noqa: E402


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def time_commands(run_one, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        run_one()
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=20)
    parser.add_argument("--no-env", action="store_true", help="skip the environment measurement")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark starts its own sshd")

    with tempfile.TemporaryDirectory(prefix="llp-bench-") as tmp:
        (Path(tmp) / "sshd").mkdir()
        with running_sshd(Path(tmp) / "sshd") as server:
            measure(server, Path(tmp), args)


def measure(server, tmp: Path, args) -> None:
    target = SshTarget(host=server.host, port=server.port, user=server.user, identity_file=server.identity_file,
                       known_hosts=tmp / "known_hosts", config_file="none")
    with SshShell(target) as shell:
        shell.run(["true"], check=True)  # the master connection, made once
        shared = time_commands(lambda: shell.run(["true"], check=True), args.commands)
        fresh_argv = ["ssh", "-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
                      "-o", f"UserKnownHostsFile={tmp}/known_hosts", "-i", str(server.identity_file),
                      "-p", str(server.port), f"{server.user}@{server.host}", "true"]
        fresh = time_commands(lambda: subprocess.run(fresh_argv, check=True, capture_output=True), args.commands)
        print(f"{'per command':<34}{'llamapod (shared)':>20}{'fresh ssh each':>18}{'ratio':>8}")
        print(f"{'`true` on the head node, ms':<34}{median_ms(shared):>20.1f}{median_ms(fresh):>18.1f}"
              f"{median_ms(fresh) / median_ms(shared):>7.1f}x")

        if not args.no_env:
            fsx = tmp / "fsx"
            fsx.mkdir()
            layout = RemoteLayout(str(fsx))
            options = EnvOptions(base_python=sys.executable, system_site_packages=True, pip_no_index=True)
            start = time.perf_counter()
            wheel = local_wheel()
            first_env = prepare_environment(shell, layout, wheel, options)
            first = time.perf_counter() - start
            start = time.perf_counter()
            again = prepare_environment(shell, layout, wheel, options)
            reuse = time.perf_counter() - start
            if first_env.reused or not again.reused:
                sys.exit("unexpected: the first run reused an environment, or the second built one")
            print(f"{'environment, s':<34}{'first run':>20}{'later runs':>18}{'ratio':>8}")
            print(f"{'wheel + venv + install / reuse':<34}{first:>20.2f}{reuse:>18.2f}{first / reuse:>7.0f}x")


if __name__ == "__main__":
    main()

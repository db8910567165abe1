"""Wall time of `llamapod --help` and `llamapod plan`, as a user starts them (a fresh process each run).

    python benchmarks/cli_latency.py [--runs 7]

Measured, median of ``--runs`` runs each, side by side with the targets (0.3 s and 1 s):
- ``llamapod --help`` (must import neither boto3 nor torch);
- ``llamapod plan`` with its look-ups (account id, AZ resolution) answered by a local AWS
  emulator (moto's HTTP server, warmed up first so its own start-up is not counted);
- ``llamapod plan`` with an unreachable endpoint (the look-ups fail, artifacts still written);
- for scale: a bare ``python -c pass`` (the interpreter's own start-up, part of every figure).
Wall and CPU time (user + system) are both printed: on a busy machine the wall time
mostly measures the other processes.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

TARGETS = {"llamapod --help": 0.3, "llamapod plan (emulator)": 1.0, "llamapod plan (no endpoint)": 1.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _median_times(argv: list[str], env: dict[str, str], cwd: str, runs: int) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system) of ``runs`` fresh processes.

    CPU time is printed too because on a shared machine wall time mostly measures the
    other processes; CPU time is what the command itself costs.
    """
    walls, cpus = [], []
    for _ in range(runs):
        cpu_before = _cpu_of_children()
        start = time.perf_counter()
        proc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu_of_children() - cpu_before)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.decode()[-500:]}")
    return statistics.median(walls), statistics.median(cpus)


def _warm_emulator(endpoint: str) -> None:
    import boto3

    kwargs = {"endpoint_url": endpoint, "region_name": "us-east-1"}
    boto3.client("sts", **kwargs).get_caller_identity()
    boto3.client("ec2", **kwargs).describe_availability_zones()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    workdir = tempfile.mkdtemp(prefix="llamapod-bench-")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "LLAMAPOD_CONFIG"}
    base_env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_EC2_METADATA_DISABLED="true")
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    try:
        _warm_emulator(endpoint)
        llamapod = [sys.executable, "-m", "llamapod"]
        emulator_env = dict(base_env, LLAMAPOD_AWS_ENDPOINT_URL=endpoint)
        offline_env = dict(base_env, LLAMAPOD_AWS_ENDPOINT_URL="http://127.0.0.1:9")
        figures = {
            "python -c pass": _median_times([sys.executable, "-c", "pass"], base_env, workdir, args.runs),
            "llamapod --help": _median_times(llamapod + ["--help"], base_env, workdir, args.runs),
            "llamapod plan (emulator)": _median_times(llamapod + ["plan"], emulator_env, workdir, args.runs),
            "llamapod plan (no endpoint)": _median_times(llamapod + ["plan"], offline_env, workdir, args.runs),
        }
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    load = os.getloadavg()[0]
    print(f"median of {args.runs} runs, fresh process each, {os.cpu_count()} CPUs, load average {load:.1f}")
    print(f"{'command':<30} {'wall (s)':>9} {'cpu (s)':>8} {'target (s)':>11} {'wall/target':>12}")
    for name, (wall, cpu) in figures.items():
        target = TARGETS.get(name)
        ratio = f"{wall / target:.2f}" if target else "-"
        print(f"{name:<30} {wall:>9.3f} {cpu:>8.3f} {target if target else '-':>11} {ratio:>12}")


if __name__ == "__main__":
    main()

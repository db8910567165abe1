"""The configuration people train in on GPUs, run by CPU workers: bf16, activation
checkpointing, compile, CPU offload, activation offload, gradient accumulation, hybrid
sharding, async checkpoints, TensorBoard; and the seed's command line with its defaults.

The only branches no CPU test reaches are listed in docs/training.md ("GPU-only code").
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
# A tiny model on the built-in corpus, a metrics line every step, no warmup so the loss
# falls from the first steps.
BASE = ["--preset=tiny", "--recipe=quickstart", "--max_steps=8", "--logging_freq=1", "--warmup=0",
        "--lr=3e-3", "--validation_batches=1", "--val_batch_size=2", "--train_batch_size=4", "--seed=11"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE",
                 "GROUP_WORLD_SIZE"):
        env.pop(name, None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def _train(cwd: Path, *flags: str, nproc: int = 1) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "llamapod.cli.main", "train", "--nproc", str(nproc), *flags], cwd)


def _losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "tokens_per_s" in r]


def _falls(losses: list[float]) -> bool:
    return all(map(lambda v: v == v and abs(v) != float("inf"), losses)) and sum(losses[-3:]) < sum(losses[:3])


def test_bf16_trains_on_one_and_two_workers_close_to_fp32(tmp_path):
    _train(tmp_path, *BASE, "--bf16=0", "--run_dir=fp32")
    _train(tmp_path, *BASE, "--bf16=1", "--run_dir=bf16-1")
    out = _train(tmp_path, *BASE, "--bf16=1", "--run_dir=bf16-2", "--train_batch_size=2", nproc=2)
    assert "bf16 params / fp32 reduce" in out.stderr
    fp32 = _losses(tmp_path / "fp32")
    for name in ("bf16-1", "bf16-2"):
        bf16 = _losses(tmp_path / name)
        assert len(bf16) == 8 and _falls(bf16), (name, bf16)
        # bf16 matmuls round to 8 bits of mantissa: close to fp32, not equal.
        for step, (a, b) in enumerate(zip(bf16, fp32), start=1):
            assert a == pytest.approx(b, rel=0.01), f"{name} step {step}: {a} vs fp32 {b}"


def test_every_gpu_option_runs_on_cpu_workers_and_resumes(tmp_path):
    gpu_like = ["--bf16=1", "--activation_checkpointing=selective", "--compile=1", "--cpu_offload=1",
                "--offload_activations=1", "--grad_accum=2", "--train_batch_size=2", "--sharding_strategy=hybrid",
                "--async_save=1", "--checkpoint_freq=4", "--tensorboard_dir=tb", "--run_dir=run"]
    first = _train(tmp_path, *BASE, *gpu_like, "--max_steps=4", nproc=2)
    assert "--cpu_offload saves no memory without a GPU" in first.stderr
    more = _train(tmp_path, *BASE, *gpu_like, "--resume_from_checkpoint=run/checkpoints", nproc=2)
    assert "resumed from run/checkpoints/step_00000004 (step 4)" in more.stderr
    losses = _losses(tmp_path / "run")
    assert len(losses) == 8 and _falls(losses), losses
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith("step_")) == [
        "step_00000004", "step_00000008"]
    scalars = _tensorboard_scalars(tmp_path / "tb")
    assert [step for step, _ in scalars["Training/loss"]] == list(range(1, 9))
    for tag in ("Training/lr", "Throughput/tokens_per_s", "Throughput/mfu", "Memory/peak_gib", "Validation/loss"):
        assert scalars.get(tag), tag


def _tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list(directory.glob("events.out.tfevents.*")), f"no event files in {directory}"
    scalars: dict[str, dict[int, float]] = {}
    for events in sorted(directory.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                scalars.setdefault(tag, {})[event.step] = event.value
    return {tag: sorted(values.items()) for tag, values in scalars.items()}


# The seed's step-7 command line with 7B sizes shrunk: everything it does not name takes
# the reference's defaults. Offline, the reference's hub dataset and tokenizer give way to
# the built-in ones (with a warning), so nothing else is added.
SEED_SHRUNK = ["--max_context_width=32", "--num_key_value_heads=2", "--llama_intermediate_size=96",
               "--hidden_width=64", "--num_layers=2", "--num_heads=4", "--model_type=llama_v2",
               "--checkpoint_freq=500", "--validation_freq=500", "--checkpoint_dir=./checkpoints",
               "--train_batch_size=1", "--val_batch_size=4", "--epochs=1", "--validation_batches=1",
               "--resume_from_checkpoint=./checkpoints"]


def test_the_seed_command_line_trains_with_the_references_defaults(tmp_path):
    out = _run([sys.executable, "-m", "llamapod", "worker", *SEED_SHRUNK, "--max_steps=3", "--bf16=1",
                "--tensorboard_dir=./tb", "--run_dir=run"], tmp_path)
    assert "--dataset not given and its reference default allenai/c4 needs the Hugging Face hub" in out.stderr
    meta = json.loads((tmp_path / "checkpoints" / "step_00000003" / "meta.json").read_text())
    config = meta["train_config"]
    assert (config["lr"], config["min_lr"], config["weight_decay"], config["warmup"]) == (1e-4, 1e-5, 0.2, 0.0032)
    assert (config["activation_checkpointing"], config["logging_freq"], config["recipe"]) == ("full", 1, "reference")
    assert len(_losses(tmp_path / "run")) == 3
    assert len(_tensorboard_scalars(tmp_path / "tb")["Training/loss"]) == 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("strategy, nodes", [("full", 1), ("hybrid", 2)])
def test_gradient_accumulation_keeps_gradients_sharded_and_equals_one_large_batch(tmp_path, strategy, nodes):
    """2 micro-batches of 1 sequence = 1 batch of 2, with every gradient a reduce-scattered
    shard after the first micro-batch (not an unsharded gradient kept inside FSDP2).

    Hybrid runs on 2 "nodes" of 2 workers (two torchrun agents on one rendezvous), so the
    all-reduce across replicas that waits for the last micro-batch is real.
    """
    out = tmp_path / "result.json"
    port = _free_port()
    command = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", "--nproc_per_node=2",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id=accum-{port}",
               str(HERE / "accum_worker.py"), str(out), strategy]
    agents = [subprocess.Popen(command, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True) for _ in range(nodes)]
    logs = [agent.communicate(timeout=300)[0] for agent in agents]
    assert all(agent.returncode == 0 for agent in agents), "\n".join(logs)
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 * nodes
    assert len(result["layouts"]) == 1
    assert set(result["layouts"][0].values()) == {"sharded"}, result["layouts"][0]
    assert result["max_parameter"] > 0
    assert result["max_difference"] < 2e-5, result  # fp32 summation order; one update moves ~1e-2

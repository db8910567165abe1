"""The trainer under real launchers: plain python, torchrun with 2 processes, `llamapod train`.

Three launches share the work (each costs seconds of torch start-up):
  S  one process, global batch 4, 20 steps straight;
  T  the seed's command line (small sizes) under `torchrun --nproc_per_node 2`, 2 x 2
     sequences per step, stopping after 10 steps with a checkpoint;
  R  the same command line again through `llamapod train --nproc 2` (torch's elastic agent),
     now with --max_steps 20: it resumes from ./checkpoints and trains steps 11-20, with
     hybrid sharding and gradient accumulation (2 micro-steps of 1 sequence per rank).
FSDP2 over gloo on 2 ranks must match one process (fp32, 1e-5 relative), and 10 + resume 10
must match 20 straight, step by step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# The seed's step-7 command line, as written, with small sizes substituted for the 7B ones
# and the default tokenizer (the seed's needs a download).
SEED_FLAGS = [
    "--max_context_width=32", "--num_key_value_heads=2", "--llama_intermediate_size=96", "--hidden_width=64",
    "--num_layers=2", "--num_heads=4", "--model_type=llama_v2", "--checkpoint_freq=10", "--validation_freq=5",
    "--checkpoint_dir=./checkpoints", "--train_batch_size=2", "--val_batch_size=4", "--epochs=1",
    "--validation_batches=1", "--resume_from_checkpoint=./checkpoints",
]
# Settings every launch shares: fp32 CPU, a schedule that does not depend on --max_steps
# (so stopping at 10 and extending to 20 is the same run), a metrics line every step.
COMMON = ["--logging_freq=1", "--lr=3e-3", "--min_lr=3e-4", "--warmup=3", "--lr_decay_style=constant",
          "--bf16=0", "--seed=7", "--run_dir=run"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        env.pop(name, None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "tokens_per_s" in r}


def _assert_close(a: dict[int, float], b: dict[int, float], steps: range) -> None:
    for step in steps:
        assert a[step] == pytest.approx(b[step], rel=1e-5), f"step {step}: {a[step]} vs {b[step]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    single = tmp_path_factory.mktemp("single")
    seed_job = tmp_path_factory.mktemp("seed")
    flags_one = [f for f in SEED_FLAGS if not f.startswith(("--train_batch_size", "--resume"))]
    s = _run([sys.executable, "-m", "llamapod", "worker", *flags_one, *COMMON, "--train_batch_size=4",
              "--max_steps=20", "--checkpoint_freq=100"], single)
    t = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "llamapod", "worker", *SEED_FLAGS, *COMMON, "--max_steps=10"], seed_job)
    # The resume also switches to hybrid sharding (a 2-D mesh) and to 2 micro-steps of 1
    # sequence per rank: the same global batch, so the same losses.
    r = _run([sys.executable, "-m", "llamapod.cli.main", "train", "--nproc", "2", *SEED_FLAGS, *COMMON,
              "--max_steps=20", "--sharding_strategy=hybrid", "--train_batch_size=1", "--grad_accum=2"], seed_job)
    return {"single": single, "seed": seed_job, "outputs": (s, t, r)}


def test_two_rank_fsdp_matches_one_process_and_resume_matches_straight_run(runs):
    straight = _losses(runs["single"] / "run")
    sharded = _losses(runs["seed"] / "run")
    assert sorted(straight) == list(range(1, 21))
    assert sorted(sharded) == list(range(1, 21))  # 1-10 from torchrun, 11-20 after the resume
    _assert_close(straight, sharded, range(1, 11))
    _assert_close(straight, sharded, range(11, 21))
    assert straight[20] < straight[1] - 0.5  # it learns


def test_seed_command_line_runs_to_completion_and_resumes(runs):
    _, t, r = runs["outputs"]
    seed_dir = runs["seed"]
    assert "no checkpoint in ./checkpoints yet: starting fresh" in t.stderr
    assert "resumed from checkpoints/step_00000010 (step 10)" in r.stderr
    # (A checkpoint folder outside the run folder holds its own hidden lock file while in use.)
    assert [p.name for p in sorted((seed_dir / "checkpoints").iterdir()) if not p.name.startswith(".")] == [
        "step_00000010", "step_00000020"]
    records = [json.loads(line) for line in (seed_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_ppl" in r] == [5, 10, 15, 20]
    assert records[-1]["event"] == "done" and records[-1]["step"] == 20
    validations = [r["val_loss"] for r in records if "val_ppl" in r]
    assert validations[-1] < validations[0]
    assert (seed_dir / "run" / "metrics.png").stat().st_size > 10_000
    # Rank 0 alone prints: one announcement, one plain line per step, not one per rank.
    assert t.stderr.count("parameters (2 layers, width 64") == 1
    assert t.stderr.count("step 7/10 | loss ") == 1
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("step 20/20 | loss "))
    for part in ("| lr ", "| grad_norm ", "tok/s", "TFLOPS/dev", "MFU ", "GiB", "| data "):
        assert part in line
    # Each run (and each resume) opens with what its MFU divides by; then the step lines.
    assert records[0]["event"] == "start" and records[0]["peak_flops"] > 0
    assert records[0]["peak_flops_source"].startswith("this CPU's measured float32 matmul rate")
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "tokens_per_s_per_device", "tflops_per_device",
                "mfu", "peak_mem_gib", "data_wait_frac"):
        assert key in records[1]
    assert "llamapod sample --checkpoint checkpoints" in r.stdout

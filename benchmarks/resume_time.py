"""Resume time at step 10 vs step 10,000 of the same data: is resuming O(1)?

    python benchmarks/resume_time.py [--trials 3] [--preset tiny]

1. Trains ``--preset`` for 10 steps with ``python -m llamapod worker`` and keeps the step-10
   checkpoint.
2. Builds a step-10,000 checkpoint of the same run: the same shards, with the step and the
   data position that 10,000 steps of this batch size really reach (computed by drawing
   10,000 global batches from a fresh dataset, exactly what the trainer would have read).
   The weights are those of step 10: resume time does not depend on their values, and
   training 10,000 steps on a CPU would take hours.
3. Starts ``python -m llamapod worker --resume_from_checkpoint`` on each, alternately, and
   measures the wall time from process start until the first resumed step appears in
   metrics.jsonl.
4. For reference, times what a replaying resume (the reference FSDP example's) spends
   before its first step: re-reading the 10,000 skipped batches (a lower bound: it also
   re-tokenizes them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = 2
FAR_STEP = 10_000


def train_flags(preset: str, max_steps: int, run_dir: Path) -> list[str]:
    return ["--preset", preset, "--max_steps", str(max_steps), "--checkpoint_freq", str(max_steps),
            "--validation_batches", "0", "--logging_freq", "1", "--train_batch_size", str(BATCH),
            "--device", "cpu", "--bf16", "0", "--seed", "1", "--epochs", "1000",
            "--run_dir", str(run_dir), "--checkpoint_dir", str(run_dir / "checkpoints")]


def run_trainer(flags: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "llamapod", "worker", *flags], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"training failed:\n{proc.stderr[-3000:]}")


def far_checkpoint(near: Path, far_root: Path, preset: str) -> tuple[Path, float, dict]:
    """The step-10 checkpoint relabelled as step 10,000 with its real data position; the replay time."""
    from llamapod.data import build_dataset, load_tokenizer
    from llamapod.shapes import get_preset

    meta = json.loads((near / "meta.json").read_text())
    tokenizer = load_tokenizer(meta.get("tokenizer_spec"))
    data = build_dataset(None, tokenizer, seq_len=get_preset(preset).max_seq_len, split="train", rank=0,
                         world_size=meta["world_size"], seed=meta["data"]["seed"])
    started = time.perf_counter()
    for _ in range(FAR_STEP):
        data.next_batch(BATCH)
    replay_s = time.perf_counter() - started
    meta.update(step=FAR_STEP, data=data.state_dict())
    meta["scheduler"] = {**meta.get("scheduler", {}), "step": FAR_STEP}
    target = far_root / f"step_{FAR_STEP:08d}"
    shutil.copytree(near, target)
    (target / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return target, replay_s, data.state_dict()


def time_to_first_step(checkpoints: Path, step: int, preset: str, scratch: Path) -> float:
    run_dir = scratch / f"resume-{step}-{time.monotonic_ns()}"
    run_dir.mkdir()
    shutil.copytree(checkpoints, run_dir / "checkpoints")
    flags = train_flags(preset, step + 1, run_dir) + ["--resume_from_checkpoint", str(run_dir / "checkpoints")]
    metrics = run_dir / "metrics.jsonl"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "llamapod", "worker", *flags], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    elapsed = None
    deadline = started + 600
    while time.perf_counter() < deadline:
        if metrics.exists() and any(json.loads(line).get("step") == step + 1 and "loss" in json.loads(line)
                                    for line in metrics.read_text().splitlines() if line.strip()):
            elapsed = time.perf_counter() - started
            break
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    _, err = proc.communicate()
    if elapsed is None:
        sys.exit(f"resume at step {step} failed:\n{err[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--preset", default="tiny")
    options = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="llamapod-resume-bench-"))
    try:
        base = scratch / "base"
        run_trainer(train_flags(options.preset, 10, base))
        near_root = base / "checkpoints"
        for extra in near_root.iterdir():
            if extra.name != "step_00000010":
                shutil.rmtree(extra)
        far_root = scratch / "far"
        far_root.mkdir()
        _, replay_s, position = far_checkpoint(near_root / "step_00000010", far_root, options.preset)
        near_times, far_times = [], []
        for _ in range(options.trials):
            near_times.append(time_to_first_step(near_root, 10, options.preset, scratch))
            far_times.append(time_to_first_step(far_root, FAR_STEP, options.preset, scratch))
        near, far = statistics.median(near_times), statistics.median(far_times)
        spread = max(statistics.pstdev(near_times), statistics.pstdev(far_times))
        print(f"preset {options.preset}, batch {BATCH}/rank, 1 process, median of {options.trials} trials")
        print(f"data position at step {FAR_STEP:,}: epoch {position['epoch']}, sequence {position['position']:,}")
        print(f"{'resume at step':<34}{'start -> first step (s)':>24}")
        print(f"{'llamapod, step 10':<34}{near:>24.2f}   trials {', '.join(f'{t:.2f}' for t in near_times)}")
        print(f"{'llamapod, step 10,000':<34}{far:>24.2f}   trials {', '.join(f'{t:.2f}' for t in far_times)}")
        print(f"{'ratio 10,000 / 10':<34}{far / near:>24.3f}   (1.0 = O(1); noise ~{spread:.2f} s)")
        print(f"{'replaying resume, extra at 10,000':<34}{replay_s:>24.2f}   "
              f"(re-reading {FAR_STEP:,} skipped batches, before any re-tokenizing)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()

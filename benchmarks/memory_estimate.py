"""Peak memory per rank: llamapod's analytical estimate vs what a real training step uses.

    python benchmarks/memory_estimate.py             # every configuration, 1 and 2 ranks
    python benchmarks/memory_estimate.py --nproc 2 --config "full ckpt, bf16"

For each configuration, in one run, side by side:

- **estimate**: ``llamapod.sizing.memory.estimate_memory`` for this machine's code path
  (tensor bytes; on a GPU also with the allocator's slack, against ``max_memory_reserved``);
- **tracker**: torch's FSDP2 memory tracker on the real model under fake tensors
  (``llamapod.train.memory_tracker``), what the estimate is fitted against;
- **measured**, from a real step of the real model (``parallelize``, AdamW, the trainer's
  step) on 1 or 2 ranks started by ``torch.distributed.run``:
  - on a GPU: ``torch.cuda.max_memory_allocated`` (every tensor the caching allocator
    handed out, at its peak);
  - on a CPU: the **allocator peak**, from torch.profiler's memory events: the bytes of
    tensors live when the step starts (parameter shards, optimizer states, buffers, the
    batch) plus the highest running sum of the step's allocations and frees. Counted:
    every tensor allocation by torch's CPU allocator on the rank's threads. Not counted:
    gloo's own buffers, Python objects, the allocator's own bookkeeping;
  - on a CPU: the **RSS peak**, the process's resident high-water mark during an
    unprofiled step less its resident size before the model was built, with glibc told
    to return every freed block above 64 KiB (``MALLOC_MMAP_THRESHOLD_``). Counted:
    everything the step made resident (tensors, malloc overhead, gloo buffers, autograd
    and FSDP bookkeeping). Not counted: what was resident before (torch's libraries,
    the interpreter).

Ratios are estimate / measurement; 1.00 is exact, above 1 the estimate is conservative.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys

CONFIG = dict(dim=512, n_layers=4, n_heads=8, n_kv_heads=4, ffn_dim=1536, vocab_size=8192)
SEQ_LEN = 256
BATCH = 8

# name -> the job's settings besides the model and the ranks.
CONFIGS = {
    "no ckpt, fp32": dict(bf16=False, activation_checkpointing="none"),
    "full ckpt, fp32": dict(bf16=False, activation_checkpointing="full"),
    "no ckpt, bf16": dict(bf16=True, activation_checkpointing="none"),
    "selective ckpt, bf16": dict(bf16=True, activation_checkpointing="selective"),
    "full ckpt, bf16, 2 micro-batches": dict(bf16=True, activation_checkpointing="full", grad_accum=2),
}
MIB = 1 << 20
RESULT_TAG = "MEMORY-RESULT "


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, action="append", help="ranks (repeatable; default: 1 and 2)")
    p.add_argument("--config", action="append", choices=list(CONFIGS), help="configurations (default: all)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def memory_job(name: str, world_size: int, device: str):
    from llamapod.sizing.memory import MemoryJob
    from llamapod.shapes import ModelArgs

    return MemoryJob(model=ModelArgs(**CONFIG, max_seq_len=SEQ_LEN), seq_len=SEQ_LEN, batch_size=BATCH,
                     gpus_per_node=world_size, device=device, **CONFIGS[name])


# ---- the worker: one rank of a real training step ---------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_resident_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current resident size (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def _live_tensor_bytes(model, optimizer, tokens) -> int:
    """Bytes of the distinct storages the step starts with: shards, buffers, optimizer state, batch."""
    tensors = [getattr(p, "_local_tensor", p) for p in model.parameters()] + list(model.buffers()) + [tokens]
    for state in optimizer.state.values():
        tensors += [getattr(t, "_local_tensor", t) for t in state.values() if hasattr(t, "untyped_storage")]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def _allocator_peak(events) -> int:
    """The highest running sum of the profiler's allocation (+) and free (-) events, in time order."""
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def _profiled_step_peak(model, optimizer, tokens, job, train_step) -> int:
    from torch.profiler import ProfilerActivity, profile

    start = _live_tensor_bytes(model, optimizer, tokens)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_step(model, optimizer, tokens, job)
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type().name == "CPU"]
    return start + _allocator_peak(events)


def worker(opts) -> None:
    import torch
    import torch.distributed as dist

    from llamapod.train.memory_tracker import sharded_model, train_step
    from llamapod.train.optim import build_optimizer
    from llamapod.train.parallel import (build_mesh, configure_cpu_threads, fill_launch_env, init_distributed,
                                         read_env)

    fill_launch_env()
    env = read_env("auto")
    configure_cpu_threads(env)
    init_distributed(env)
    before_model_kib = _status_kib("VmRSS")
    results = {}
    for name in opts.config:
        job = memory_job(name, env.world_size, env.device.type)
        model = sharded_model(job, build_mesh(env, job.sharding), env.device)
        model.init_weights(seed=0, buffer_device=env.device)
        optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95),
                                    device_type=env.device.type)
        generator = torch.Generator().manual_seed(env.rank)
        tokens = torch.randint(0, job.model.vocab_size, (BATCH, SEQ_LEN + 1), generator=generator).to(env.device)
        train_step(model, optimizer, tokens, job)   # warm-up: optimizer state, kernels, FSDP buffers
        gc.collect()
        if env.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            train_step(model, optimizer, tokens, job)
            torch.cuda.synchronize()
            results[name] = {"allocated": torch.cuda.max_memory_allocated(), "reserved": torch.cuda.max_memory_reserved()}
        else:
            allocator = _profiled_step_peak(model, optimizer, tokens, job, train_step)
            gc.collect()
            dist.barrier()
            _reset_resident_peak()
            train_step(model, optimizer, tokens, job)
            resident = (_status_kib("VmHWM") - before_model_kib) * 1024
            results[name] = {"allocator": allocator, "resident": resident}
        del model, optimizer, tokens
        gc.collect()
        dist.barrier()
    gathered = [None] * env.world_size
    dist.all_gather_object(gathered, results)
    if env.rank == 0:
        # The largest rank's figure for each measure: memory limits are per rank.
        merged = {name: {key: max(rank[name][key] for rank in gathered) for key in gathered[0][name]}
                  for name in opts.config}
        print(RESULT_TAG + json.dumps({"device": env.device.type, "results": merged}), flush=True)
    dist.destroy_process_group()


# ---- the driver: estimate, tracker, measurements, one table -------------------------------


def measure(nproc: int, names: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_=str(64 * 1024))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", __file__,
           "--worker", *[arg for name in names for arg in ("--config", name)]]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    line = next((line for line in result.stdout.splitlines() if line.startswith(RESULT_TAG)), None)
    if result.returncode != 0 or line is None:
        sys.exit(f"the {nproc}-rank run failed:\n{result.stderr[-3000:]}")
    return json.loads(line[len(RESULT_TAG):])


def tracked(job, device: str) -> int:
    from llamapod.train.memory_tracker import track_peak

    return track_peak(job, device=device).total


def _row(name: str, nproc: int, device: str, figures: dict) -> list[tuple[str, float, str]]:
    """(column, value, format) for one configuration: MiB columns and estimate/measurement ratios."""
    from llamapod.sizing.memory import estimate_memory

    job = memory_job(name, nproc, device)
    estimate = estimate_memory(job)
    row = [("estimate", estimate.tensors / MIB, ".1f"), ("tracker", tracked(job, device) / MIB, ".1f")]
    if device == "cuda":
        return row + [("max allocated", figures["allocated"] / MIB, ".1f"),
                      ("est/alloc", estimate.tensors / figures["allocated"], ".3f"),
                      ("est+allocator", estimate.total / MIB, ".1f"),
                      ("max reserved", figures["reserved"] / MIB, ".1f"),
                      ("est/reserved", estimate.total / figures["reserved"], ".3f")]
    return row + [("allocator peak", figures["allocator"] / MIB, ".1f"),
                  ("est/alloc", estimate.tensors / figures["allocator"], ".3f"),
                  ("RSS peak", figures["resident"] / MIB, ".1f"),
                  ("est/RSS", estimate.tensors / figures["resident"], ".3f")]


def report(nproc: int, measured: dict) -> None:
    device = measured["device"]
    rows = {name: _row(name, nproc, device, figures) for name, figures in measured["results"].items()}
    print(f"\n{nproc} rank{'s' if nproc > 1 else ''} on {device} (MiB per rank)")
    columns = [column for column, _, _ in next(iter(rows.values()))]
    print(f"{'config':<34}" + "".join(f"{column:>16}" for column in columns))
    for name, row in rows.items():
        print(f"{name:<34}" + "".join(f"{value:>16{fmt}}" for _, value, fmt in row))


def main() -> None:
    opts = parse()
    opts.config = opts.config or list(CONFIGS)
    if opts.worker:
        from llamapod.train.parallel import exit_without_teardown

        worker(opts)
        exit_without_teardown(0)
    import torch

    print(f"model {CONFIG}, {SEQ_LEN} tokens x {BATCH} sequences per rank per micro-batch; torch {torch.__version__}")
    for nproc in opts.nproc or [1, 2]:
        report(nproc, measure(nproc, opts.config))


if __name__ == "__main__":
    main()

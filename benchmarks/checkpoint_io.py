"""Checkpoint save/load throughput vs the disk, and the training stall of an async save.

    python benchmarks/checkpoint_io.py [--dir /path/on/the/disk/to/test] [--gib 1.0]

In one run, on the same folder:
- the disk's sequential write speed (1 MiB writes + fsync, like a checkpoint) and read
  speed of a file as large as the checkpoint;
- CheckpointManager.save (synchronous: every byte written and fsynced, marker committed)
  and load of a Llama-shaped model plus its AdamW state (~``--gib`` GiB in total);
- what an ``async_save=True`` save adds to the training step after it (the optimizer
  update waits for the background CPU copy of the state), as a share of a synchronous
  save; the first async save also allocates the copy's buffers, later ones reuse them.
  It is split into the time training is blocked (``save()`` plus the copy) and the rest:
  the background write's CPU time, which on a machine whose cores all train comes out of
  the step whatever the writer's priority. The step is ``--batch`` x ``--seq`` tokens.
Before each read, the files' pages are dropped from the page cache (posix_fadvise
DONTNEED on those files only), so both the probe and the checkpoint load read the disk.
Targets: save and load >= 50% of the disk's speed; async stall <= 20% of a sync save.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from llamapod.train.checkpoint import CheckpointManager
from llamapod.train.model import ModelArgs, Transformer

CHUNK = 1 << 20


def model_for(gib: float, seq: int) -> ModelArgs:
    # Parameters + two AdamW moments, fp32: 12 bytes per parameter.
    target_params = gib * 1024**3 / 12
    dim, vocab, ffn = 1024, 32000, 2816
    per_layer = 4 * dim * dim + 3 * dim * ffn + 2 * dim
    layers = max(1, round((target_params - 2 * vocab * dim) / per_layer))
    return ModelArgs(dim=dim, n_layers=layers, n_heads=8, n_kv_heads=8, vocab_size=vocab, ffn_dim=ffn, max_seq_len=seq)


def evict(path: Path) -> None:
    """Drop ``path``'s (already fsynced, so clean) pages from the page cache: the next read hits the disk."""
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def disk_write_read(path: Path, size: int) -> tuple[float, float]:
    block = os.urandom(CHUNK)
    started = time.perf_counter()
    with open(path, "wb") as handle:
        for _ in range(size // CHUNK):
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())
    write_s = time.perf_counter() - started
    evict(path)
    started = time.perf_counter()
    buffer = bytearray(CHUNK * 16)
    with open(path, "rb") as handle:
        while handle.readinto(buffer):
            pass
    read_s = time.perf_counter() - started
    path.unlink()
    return size / write_s, size / read_s


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def train_step(model: Transformer, optimizer: torch.optim.Optimizer, vocab: int, batch: int, seq: int) -> None:
    tokens = torch.randint(0, vocab, (batch, seq + 1))
    loss = model(tokens[:, :-1], targets=tokens[:, 1:])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="folder on the disk to measure (default: a temp dir)")
    parser.add_argument("--gib", type=float, default=1.0, help="model + optimizer state size")
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="sequences per training step")
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    options = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="llamapod-ckpt-bench-", dir=options.dir))
    try:
        args = model_for(options.gib, options.seq)
        model = Transformer(args)
        model.init_weights(seed=0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        step = lambda: train_step(model, optimizer, args.vocab_size, options.batch, options.seq)  # noqa: E731
        step()  # materialises the AdamW moments
        meta = {"model_args": args.to_dict(), "tokenizer": "bench"}

        save_s, load_s, plain_step_s, writes, reads = [], [], [], [], []
        for trial in range(options.trials):
            folder = root / f"sync{trial}"
            manager = CheckpointManager(folder)
            save_s.append(timed(lambda: manager.save(1, model, optimizer, meta)))
            size = folder_bytes(folder / "step_00000001")
            evict(folder)
            load_s.append(timed(lambda: manager.load(folder, model, optimizer)))
            shutil.rmtree(folder)
            # The disk probe runs between the checkpoint runs, so both see the same conditions.
            write, read = disk_write_read(root / "probe", size)
            writes.append(write)
            reads.append(read)
            plain_step_s.append(timed(step))

        # Async: the stall is what a save adds to the training step that follows it (the
        # optimizer update waits for the CPU copy), measured against a step without a save.
        # Of that, "blocked" is the part training must wait for (save() returning plus the
        # copy); the rest is the background write competing with the step for the CPU.
        manager = CheckpointManager(root / "async", async_save=True)
        stall_s, blocked_s = [], []
        for trial in range(options.trials + 1):
            stall_s.append(timed(lambda: (manager.save(2 * trial + 1, model, optimizer, meta), step())))
            manager.wait()
            blocked_s.append(timed(lambda: (manager.save(2 * trial + 2, model, optimizer, meta),
                                            manager.wait_for_staging())))
            manager.wait()
        manager.close()
        plain = statistics.median(plain_step_s)
        cold_stall = stall_s[0] - plain
        warm_stall = statistics.median(stall_s[1:]) - plain
        warm_blocked = statistics.median(blocked_s[1:])

        disk_w, disk_r = statistics.median(writes), statistics.median(reads)
        save, load = statistics.median(save_s), statistics.median(load_s)
        gb = 1e9
        params = sum(p.numel() for p in model.parameters())
        print(f"state: {params / 1e6:.0f}M parameters + AdamW = {size / gb:.2f} GB on disk in {root.parent}; "
              f"median of {options.trials}; a training step alone takes {plain:.2f} s")
        print(f"{'':<34}{'llamapod':>10}{'reference':>11}{'ratio':>8}")
        print(f"{'save (GB/s) vs disk write':<34}{size / save / gb:>10.2f}{disk_w / gb:>11.2f}"
              f"{(size / save) / disk_w:>8.0%}   target >= 50%")
        print(f"{'load (GB/s) vs disk read':<34}{size / load / gb:>10.2f}{disk_r / gb:>11.2f}"
              f"{(size / load) / disk_r:>8.0%}   target >= 50%")
        print(f"{'async stall, first save (s)':<34}{max(cold_stall, 0):>10.2f}{save:>11.2f}"
              f"{max(cold_stall, 0) / save:>8.0%}   vs a sync save (buffers allocated)")
        print(f"{'async stall, later saves (s)':<34}{max(warm_stall, 0):>10.2f}{save:>11.2f}"
              f"{max(warm_stall, 0) / save:>8.0%}   vs a sync save; target <= 20%")
        print(f"{'  of which training is blocked (s)':<34}{warm_blocked:>10.2f}{save:>11.2f}"
              f"{warm_blocked / save:>8.0%}   save() + the CPU copy; the rest is the write's CPU use")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Throughput, FLOPs, MFU, peak memory: measured, written to metrics.jsonl and plotted.

MFU = FLOPs/token × tokens/s per device ÷ peak FLOP/s of the device. The peak comes from
the data sheet for known GPUs (llamapod.instances.PEAK_BF16_FLOPS); a CPU has no data
sheet, so its peak is measured once with a large matmul and cached.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import platform
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llamapod.errors import TrainingError
from llamapod.instances import PEAK_BF16_FLOPS, PEAK_CAVEATS
from llamapod.paths import cache_dir

log = logging.getLogger(__name__)

PROBE_SIZE = 1024
PROBE_SECONDS = 1.0


@dataclass(frozen=True)
class PeakFlops:
    """MFU's divisor, and what it is, so a reader knows what the percentage means."""

    flops: float | None
    source: str

    def describe(self) -> str:
        if self.flops is None:
            return f"MFU not reported: {self.source}"
        rate = f"{self.flops / 1e12:,.1f} TFLOPS" if self.flops >= 1e12 else f"{self.flops / 1e9:,.1f} GFLOPS"
        return f"MFU against {rate} per device: {self.source}"


def gpu_peak_flops(device: torch.device) -> PeakFlops:
    return peak_flops_for_gpu_name(torch.cuda.get_device_name(device))


def peak_flops_for_gpu_name(name: str) -> PeakFlops:
    """Dense bf16 peak of a GPU from its name ("NVIDIA H100 80GB HBM3" -> H100)."""
    upper = name.upper()
    # Longest names first so "L40S" is not taken for "L4", nor "A10G" for "A10".
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key.upper() in upper:
            caveat = PEAK_CAVEATS.get(key)
            source = f"{key} dense bf16 data-sheet peak" + (f" ({caveat})" if caveat else "")
            return PeakFlops(PEAK_BF16_FLOPS[key], source)
    return PeakFlops(None, f"no known peak for {name}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_matmul_peak(dtype: torch.dtype = torch.float32, threads: int | None = None,
                        seconds: float = PROBE_SECONDS) -> float:
    """FLOP/s of repeated PROBE_SIZE² matmuls on the CPU with ``threads`` threads."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a = torch.randn(PROBE_SIZE, PROBE_SIZE, dtype=dtype)
        b = torch.randn(PROBE_SIZE, PROBE_SIZE, dtype=dtype)
        out = torch.empty(PROBE_SIZE, PROBE_SIZE, dtype=dtype)
        torch.mm(a, b, out=out)  # warm up the kernel selection and caches
        best = 0.0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            for _ in range(4):
                torch.mm(a, b, out=out)
            best = max(best, 4 * 2 * PROBE_SIZE ** 3 / (time.perf_counter() - start))
        return best
    finally:
        torch.set_num_threads(previous)


def cpu_peak(dtype: torch.dtype, threads: int) -> PeakFlops:
    flops = cpu_peak_flops(dtype, threads)
    dtype_name = str(dtype).removeprefix("torch.")
    return PeakFlops(flops, f"this CPU's measured {dtype_name} matmul rate with {threads} thread(s) "
                            f"(a CPU has no data-sheet peak)")


def cpu_peak_flops(dtype: torch.dtype, threads: int) -> float:
    """The matmul probe's figure for this CPU, dtype and thread count, measured once and cached."""
    key = f"{_cpu_name()}|{dtype}|threads={threads}|torch={torch.__version__}"
    path = cache_dir() / "cpu_matmul_peak.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}  # a cache another program (or a damaged disk) overwrote: measure again
    if isinstance(cached.get(key), (int, float)) and not isinstance(cached[key], bool):
        return float(cached[key])
    value = measure_matmul_peak(dtype, threads)
    cached[key] = value
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cached, indent=1))
    os.replace(tmp, path)
    return value


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (on a CPU it is done when each call returns)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start the device's peak-memory count afresh (a CPU's high-water mark cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # ru_maxrss is KiB on Linux: the process's resident high-water mark.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@dataclass
class ThroughputMeter:
    """Accumulates step and data-wait time between two log lines."""

    flops_per_token: float
    world_size: int
    peak_flops: float | None
    _tokens: int = 0
    _seconds: float = 0.0
    _data_seconds: float = 0.0
    _started: float = field(default_factory=time.perf_counter)

    def add(self, tokens: int, step_seconds: float, data_seconds: float) -> None:
        self._tokens += tokens
        self._seconds += step_seconds
        self._data_seconds += data_seconds

    def snapshot(self) -> dict[str, float | None]:
        """Figures since the last snapshot (tokens are global, summed over ranks)."""
        seconds = max(self._seconds, 1e-9)
        tokens_per_s = self._tokens / seconds
        per_device = tokens_per_s / self.world_size
        flops = self.flops_per_token * per_device
        out = {
            "tokens_per_s": tokens_per_s,
            "tokens_per_s_per_device": per_device,
            "tflops_per_device": flops / 1e12,
            "mfu": flops / self.peak_flops if self.peak_flops else None,
            "data_wait_frac": self._data_seconds / seconds,
        }
        self._tokens, self._seconds, self._data_seconds = 0, 0.0, 0.0
        return out


class MetricsLog:
    """metrics.jsonl in the run folder: one JSON object per line, appended and flushed."""

    def __init__(self, path: Path, *, append: bool):
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if append:
                _end_damaged_last_line(path)
            self._file = open(path, "a" if append else "w", encoding="utf-8")
        except OSError as exc:
            raise _unwritable(path, exc) from None

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        try:
            self._file.write(json.dumps(clean) + "\n")
            self._file.flush()
        except OSError as exc:
            raise _unwritable(self.path, exc) from None

    def close(self) -> None:
        self._file.close()


# What goes to TensorBoard, under the tags the reference's runs use where it has them.
TENSORBOARD_TAGS = {"loss": "Training/loss", "lr": "Training/lr", "grad_norm": "Training/grad_norm",
                    "tokens_per_s": "Throughput/tokens_per_s", "tokens_per_s_per_device": "Throughput/tokens_per_s_per_device",
                    "tflops_per_device": "Throughput/tflops_per_device", "mfu": "Throughput/mfu",
                    "peak_mem_gib": "Memory/peak_gib", "data_wait_frac": "Throughput/data_wait_frac",
                    "val_loss": "Validation/loss", "val_ppl": "Validation/perplexity"}


class TensorBoardLog:
    """TensorBoard event files (``--tensorboard_dir``), written with the tensorboard package."""

    def __init__(self, directory: Path, *, resumed_at: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrainingError("--tensorboard_dir needs the tensorboard package",
                                "pip install tensorboard (it comes with `pip install llamapod[train]`)") from None
        # purge_step drops events a crashed run wrote past its last checkpoint, so a resumed
        # run's curves do not double back.
        if directory.exists() and not directory.is_dir():
            raise TrainingError(f"--tensorboard_dir {directory} is a file, not a folder",
                                "pass a folder (new or one TensorBoard already writes to)")
        try:
            self._writer = SummaryWriter(log_dir=str(directory), purge_step=resumed_at + 1 if resumed_at else None)
        except OSError as exc:
            raise _unwritable(directory, exc) from None

    def write(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for key, tag in TENSORBOARD_TAGS.items():
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


def _unwritable(path: Path, exc: OSError) -> TrainingError:
    return TrainingError(f"cannot write {path}: {exc.strerror or exc}",
                         "free space or fix the permissions of the run folder, then resume the run from its newest "
                         "checkpoint")


def _end_damaged_last_line(path: Path) -> None:
    """Terminate a last line cut short by a killed writer, so appended records start on their own line.

    The damaged line itself stays (readers skip it with a warning): nothing a run wrote is lost.
    """
    try:
        with open(path, "rb+") as handle:
            if handle.seek(0, os.SEEK_END) == 0:
                return
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
    except FileNotFoundError:
        return


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; damaged lines (a crash mid-write) are skipped with one warning."""
    records, damaged = [], []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = _parse_record(line)
            if record is None:
                damaged.append(number)
            else:
                records.append(record)
    if damaged:
        shown = ", ".join(str(n) for n in damaged[:5]) + (", ..." if len(damaged) > 5 else "")
        log.warning("%s: skipped %d damaged line%s (%s %s): a write cut short by a crash or a full disk",
                    path, len(damaged), "s" if len(damaged) > 1 else "", "lines" if len(damaged) > 1 else "line",
                    shown)
    return records


def _parse_record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def format_step_line(step: int, total: int, record: dict[str, Any]) -> str:
    """The plain log line (`llamapod logs` shows the last one): 'step n/N | loss x | ...'."""
    parts = [f"step {step}/{total}", f"loss {record['loss']:.4f}", f"lr {record['lr']:.2e}",
             f"grad_norm {record['grad_norm']:.3f}", f"{record['tokens_per_s']:,.0f} tok/s",
             f"{record['tflops_per_device']:.3f} TFLOPS/dev"]
    if record.get("mfu") is not None:
        parts.append(f"MFU {100 * record['mfu']:.1f}%")
    parts.append(f"mem {record['peak_mem_gib']:.2f} GiB")
    parts.append(f"data {100 * record['data_wait_frac']:.0f}%")
    return " | ".join(parts)


def plot_metrics(jsonl: Path, png: Path) -> Path:
    """Loss (train and validation) and throughput against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(jsonl)
    train = [r for r in records if _numbers(r, "step", "loss", "tokens_per_s")]
    val = [r for r in records if _numbers(r, "step", "val_loss")]
    fig, (ax_loss, ax_tput) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if val:
        ax_loss.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss (nats/token)")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_tput.plot([r["step"] for r in train], [r["tokens_per_s"] for r in train], color="tab:green")
    ax_tput.set_xlabel("step")
    ax_tput.set_ylabel("tokens/s (all devices)")
    ax_tput.grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def _numbers(record: dict[str, Any], *keys: str) -> bool:
    # A line that parses but holds text where a number belongs is as damaged as a cut one.
    return all(isinstance(record.get(k), numbers.Real) and not isinstance(record.get(k), bool) for k in keys)


def write_plot(jsonl: Path, png: Path) -> Path | None:
    """``plot_metrics``, except that a plot that cannot be written is a warning: the run itself succeeded."""
    try:
        return plot_metrics(jsonl, png)
    except (OSError, ValueError) as exc:
        log.warning("%s was not written: %s", png, exc)
        return None

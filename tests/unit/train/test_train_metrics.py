"""Metrics: log lines, throughput/MFU arithmetic, the cached CPU peak, the plot; launch env."""

from __future__ import annotations

import json

import pytest
import torch

from llamapod.train import metrics as m
from llamapod.train.parallel import fill_launch_env, mesh_shape, read_env
from llamapod.errors import TrainingError


def test_step_line_starts_with_step_and_loss():
    record = {"loss": 4.25, "lr": 3e-4, "grad_norm": 0.5, "tokens_per_s": 12345.6, "tflops_per_device": 0.0421,
              "mfu": 0.613, "peak_mem_gib": 1.5, "data_wait_frac": 0.02}
    assert m.format_step_line(7, 100, record) == (
        "step 7/100 | loss 4.2500 | lr 3.00e-04 | grad_norm 0.500 | 12,346 tok/s | 0.042 TFLOPS/dev | MFU 61.3% | "
        "mem 1.50 GiB | data 2%")
    assert "MFU" not in m.format_step_line(7, 100, {**record, "mfu": None})


def test_throughput_meter_reports_per_device_flops_and_mfu():
    meter = m.ThroughputMeter(flops_per_token=1e6, world_size=2, peak_flops=1e9)
    meter.add(tokens=1000, step_seconds=0.5, data_seconds=0.05)
    meter.add(tokens=1000, step_seconds=0.5, data_seconds=0.05)
    snap = meter.snapshot()
    assert snap["tokens_per_s"] == pytest.approx(2000)
    assert snap["tokens_per_s_per_device"] == pytest.approx(1000)
    assert snap["tflops_per_device"] == pytest.approx(1e-3)
    assert snap["mfu"] == pytest.approx(1.0)
    assert snap["data_wait_frac"] == pytest.approx(0.1)


def test_gpu_peaks_come_from_the_table():
    assert m.peak_flops_for_gpu_name("NVIDIA H100 80GB HBM3").flops == 989e12
    assert m.peak_flops_for_gpu_name("NVIDIA L40S").flops == 362e12
    assert m.peak_flops_for_gpu_name("NVIDIA H100 PCIe").flops == 756e12
    assert m.peak_flops_for_gpu_name("NVIDIA H100 NVL").flops == 835e12
    assert m.peak_flops_for_gpu_name("NVIDIA H200").flops == 989e12
    assert m.peak_flops_for_gpu_name("NVIDIA L4").flops == 121e12
    assert m.peak_flops_for_gpu_name("Tesla T4").flops is None
    assert m.peak_flops_for_gpu_name("Tesla T4").describe() == "MFU not reported: no known peak for Tesla T4"
    # Every MFU says what it divides by; the A10G's figure is the A10's, and says so.
    h100 = m.peak_flops_for_gpu_name("NVIDIA H100 80GB HBM3")
    assert h100.describe() == "MFU against 989.0 TFLOPS per device: H100 dense bf16 data-sheet peak"
    a10g = m.peak_flops_for_gpu_name("NVIDIA A10G")
    assert a10g.flops == 125e12
    assert "the A10's data-sheet figure, above the A10G's real peak: MFU reads low" in a10g.describe()


def test_cpu_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMAPOD_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(m, "measure_matmul_peak", lambda dtype, threads: calls.append(threads) or 5e10)
    assert m.cpu_peak_flops(torch.float32, 1) == 5e10
    assert m.cpu_peak_flops(torch.float32, 1) == 5e10
    assert calls == [1]
    assert list(json.loads((tmp_path / "cache" / "cpu_matmul_peak.json").read_text()).values()) == [5e10]


def test_matmul_probe_measures_a_positive_rate():
    assert m.measure_matmul_peak(torch.float32, 1, seconds=0.05) > 1e8


def test_plot_and_jsonl(tmp_path):
    log = m.MetricsLog(tmp_path / "metrics.jsonl", append=False)
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 5.0 - step, "lr": 1e-3, "tokens_per_s": 100.0 * step})
    log.write({"step": 3, "val_loss": 2.5, "val_ppl": 12.2})
    log.write({"event": "done", "step": 3, "loss": 2.0, "val_loss": float("nan")})
    log.close()
    records = m.read_metrics(tmp_path / "metrics.jsonl")
    assert records[-1] == {"event": "done", "step": 3, "loss": 2.0, "val_loss": None}
    png = m.plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "metrics.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_damaged_lines_are_skipped_with_one_warning_and_appends_start_on_a_new_line(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    log = m.MetricsLog(path, append=False)
    for step in (1, 2):
        log.write({"step": step, "loss": 4.0 - step, "lr": 1e-3, "tokens_per_s": 10.0})
    log.close()
    # A writer killed mid-line (SIGKILL, a full disk) leaves a cut-short last line.
    with open(path, "a") as handle:
        handle.write('{"step": 3, "loss": 1.')
    assert [r["step"] for r in m.read_metrics(path)] == [1, 2]
    assert caplog.messages == [f"{path}: skipped 1 damaged line (line 3): a write cut short by a crash or a full disk"]

    resumed = m.MetricsLog(path, append=True)
    resumed.write({"step": 3, "loss": 0.5, "lr": 1e-3, "tokens_per_s": 10.0})
    resumed.close()
    lines = path.read_text().splitlines()
    assert lines[2] == '{"step": 3, "loss": 1.', "the damaged line is kept, not silently dropped"
    assert [r["step"] for r in m.read_metrics(path)] == [1, 2, 3]
    # Text where a number belongs is skipped by the plot too.
    with open(path, "a") as handle:
        handle.write('[1, 2]\n{"step": "four", "loss": "x", "tokens_per_s": 1}\n')
    assert m.plot_metrics(path, tmp_path / "metrics.png").read_bytes()[:4] == b"\x89PNG"


def test_a_plot_that_cannot_be_written_is_a_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0, "tokens_per_s": 3.0}\n')
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert m.write_plot(path, blocker / "metrics.png") is None
    assert caplog.messages[-1].startswith(f"{blocker / 'metrics.png'} was not written: ")


def test_srun_without_torchrun_derives_ranks_from_slurm(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "4",
                        "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "node-a,node-b",
                        "SLURM_JOB_ID": "1234"}.items():
        monkeypatch.setenv(name, value)
    fill_launch_env()
    env = read_env("cpu")
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size, env.nodes) == (5, 8, 1, 4, 2)
    import os

    assert os.environ["MASTER_ADDR"] == "node-a" and os.environ["MASTER_PORT"] == "21234"
    assert mesh_shape("hybrid", 8, 2, 4) == (2, 4) and mesh_shape("full", 8, 2, 4) == (8,)
    with pytest.raises(TrainingError, match=r"nodes\(2\) \* gpus_per_node\(8\) != world_size\(12\)"):
        mesh_shape("hybrid", 12, 2, 8)

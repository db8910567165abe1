"""Decisions the trainer takes differently on a GPU, made on a CPU: which GPU a worker
takes, how many CPU threads it uses, pinned memory, AdamW's kernel, how an async save
copies GPU state. Fake CUDA tensors (FakeTensorMode) stand in for real ones."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from llamapod.errors import TrainingError
from llamapod.train.checkpoint.staging import settle_device_writes, staging_options, state_devices
from llamapod.train.optim import adamw_kernel
from llamapod.train.parallel import DistEnv, configure_cpu_threads, cpu_offload_policy, cuda_device_index


@pytest.mark.parametrize("local_rank, local_world, visible, expected", [
    (3, 8, 8, 3),    # torchrun, or srun giving each task the node's GPUs
    (5, 8, 1, 0),    # srun --gpus-per-task=1: each task sees its own GPU only
    (0, 1, 4, 0),    # one worker on a multi-GPU machine
])
def test_each_worker_takes_its_own_gpu(local_rank, local_world, visible, expected):
    assert cuda_device_index(local_rank, local_world, visible) == expected


def test_two_workers_never_share_a_gpu():
    with pytest.raises(TrainingError, match="8 workers on this node but only 4 GPUs"):
        cuda_device_index(5, 8, 4)
    with pytest.raises(TrainingError, match="no CUDA GPU is visible"):
        cuda_device_index(0, 1, 0)


def test_gpu_workers_get_their_share_of_the_cores(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(96)), raising=False)
    env = DistEnv(rank=1, world_size=8, local_rank=1, local_world_size=8, nodes=1, device=torch.device("cuda", 1))
    try:
        torch.set_num_threads(1)  # what torchrun's OMP_NUM_THREADS=1 leaves
        configure_cpu_threads(env)
        assert torch.get_num_threads() == 12
    finally:
        torch.set_num_threads(before)


def test_pinned_memory_follows_the_training_device_not_the_host():
    assert cpu_offload_policy("cuda").pin_memory is True
    assert cpu_offload_policy("cpu").pin_memory is False


def test_adamw_is_fused_for_gpu_parameters_only():
    with FakeTensorMode():
        gpu = [torch.empty(4, device="cuda")]
    cpu = [torch.empty(4)]
    assert adamw_kernel(gpu, "cuda") == {"fused": True}
    assert adamw_kernel(cpu, "cuda") == {"foreach": True}  # --cpu_offload: the parameters are in host memory
    assert adamw_kernel(cpu, "cpu") == {"foreach": True}


def test_async_save_of_gpu_state_stages_through_pinned_memory_after_the_gpu_settles():
    with FakeTensorMode():
        state = {"model": {"w": torch.empty(2, device="cuda:1")},
                 "optimizer": {"state": {"w": {"exp_avg": torch.empty(2, device="cuda:1")}}, "param_groups": [{}]}}
    devices = state_devices(state)
    assert devices == {torch.device("cuda", 1)}
    options = staging_options(devices)
    assert options.use_pinned_memory and options.use_non_blocking_copy
    settled = []
    settle_device_writes(devices | {torch.device("cpu")}, synchronize=settled.append)
    assert settled == [torch.device("cuda", 1)]
    plain = staging_options({torch.device("cpu")})
    assert not plain.use_pinned_memory and not plain.use_non_blocking_copy


def _gpu_benchmark():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "gpu_train.py"
    spec = importlib.util.spec_from_file_location("gpu_train_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_runs_the_target_configurations_first_and_keeps_to_its_budget():
    bench = _gpu_benchmark()
    assert bench.configurations(False)[:2] == [(False, "none"), (True, "none")]
    assert bench.configurations(True) == [(False, "none"), (False, "selective"), (False, "full")]
    now = [0.0]
    budget = bench.Budget(480, started=0.0, reserve_s=40, clock=lambda: now[0])
    assert budget.allows(("llamapod", True))  # nothing measured yet: the first of a kind always runs
    now[0] = 330.0
    budget.record(("llamapod", True), 120.0)
    assert not budget.allows(("llamapod", True))  # 330 + 120 + 40 > 480
    assert budget.allows(("llamapod", False))


def test_gpu_benchmark_reports_a_failed_configuration_and_goes_on():
    from types import SimpleNamespace

    bench = _gpu_benchmark()

    def build(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    opts = SimpleNamespace(preset="tiny", seq=16, batch=1, steps=1, warmup=0, device="cpu")
    row = bench.measure_or_fail(opts, "transformers", build, None, None, torch.device("cpu"), "none", False, None)
    assert row.error == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert "OutOfMemoryError" in bench.format_row(row)
    assert bench.ratio_lines([row]) == []


def test_llamapod_train_starts_one_worker_per_gpu_unless_told_to_train_on_the_cpu(monkeypatch):
    from llamapod.train.launch import default_nproc

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert default_nproc("auto") == default_nproc("cuda") == 8
    assert default_nproc("cpu") == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_nproc("auto") == 2


def test_gpu_benchmark_says_whether_the_targets_are_met():
    bench = _gpu_benchmark()
    rows = [bench.Row("llamapod", True, "none", 1200.0, 0.47, 30.0, 28.0),
            bench.Row("transformers", True, "none", 1000.0, 0.39, 40.0, 28.0),
            bench.Row("llamapod", False, "none", 1000.0, 0.38, 30.0, 28.0),
            bench.Row("transformers", False, "none", 950.0, 0.36, 40.0, 28.0)]
    lines = bench.target_lines(rows)
    assert "best 47.0% (AC none): met" in lines[0]
    assert "smallest 1.05x (eager, AC none): NOT met" in lines[1]


def test_the_gradient_norm_stays_on_the_device_until_the_trainer_reads_it():
    from llamapod.train.optim import clip_gradients

    model = torch.nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    model(torch.ones(1, 4)).sum().backward()  # every gradient element is 1: the norm is 4
    norm = clip_gradients(model, 1.0)
    assert isinstance(norm, torch.Tensor) and norm.device == model.weight.device and norm.ndim == 0
    assert float(norm) == pytest.approx(4.0)
    assert float(model.weight.grad.norm()) == pytest.approx(1.0, rel=1e-4)


def test_more_local_workers_than_gpus_is_refused_before_any_starts(monkeypatch):
    """Every local worker sees every GPU: a ninth worker on 8 GPUs would share one, which NCCL refuses."""
    from llamapod.config.train import TrainSpec
    from llamapod.errors import ConfigError
    from llamapod.train.launch import _require_workers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    _require_workers(TrainSpec(), 8)
    with pytest.raises(ConfigError, match=r"--nproc 9 is more workers than this machine's 8 GPU\(s\)"):
        _require_workers(TrainSpec(), 9)
    _require_workers(TrainSpec(device="cpu"), 2)

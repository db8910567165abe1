"""The torch-free memory estimate and the fit check: the seed's job, refusals, suggestions, the CLI lines.

The estimate itself is checked against torch's FSDP2 memory tracker in
test_train_memory_tracker.py; here: what users see before anything is submitted.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from llamapod.instances import instance_info, usable_gpu_memory_gib
from llamapod.sizing.memory import GIB, MemoryJob, estimate_memory
from llamapod.sizing.fit import TOKENIZER_VOCAB, assess_memory, require_fit
from llamapod.shapes import get_preset

SEVEN_B = get_preset("llama2-7b")
G5 = ["--nodes", "4", "--instance-type", "ml.g5.48xlarge"]
NO_CHECKPOINTING = ["--preset", "llama2-7b", "--max_context_width", "4096", "--train_batch_size", "1",
                    "--activation_checkpointing", "0"]
MUST_REFUSE = [*NO_CHECKPOINTING, *G5]
MEMORY_LINE = re.compile(r"^memory: (\d+\.\d) GiB of 22\.0 GiB usable per A10G \(estimate\)$", re.M)


def _seven_b(**changes) -> MemoryJob:
    values = dict(model=SEVEN_B.replace(max_seq_len=4096), seq_len=4096, batch_size=1, nodes=4, gpus_per_node=8,
                  activation_checkpointing="full")
    values.update(changes)
    return MemoryJob(**values)


def test_a10g_usable_memory_is_the_driver_total_less_context_and_nccl():
    # nvidia-smi reports 23,028 MiB on a g5's A10G; 0.5 GiB go to the CUDA context and NCCL.
    assert usable_gpu_memory_gib(instance_info("ml.g5.48xlarge")) == pytest.approx(23028 / 1024 - 0.5)
    assert f"{usable_gpu_memory_gib(instance_info('ml.g5.48xlarge')):.1f}" == "22.0"
    assert usable_gpu_memory_gib(instance_info("ml.p4de.24xlarge")) > usable_gpu_memory_gib(
        instance_info("ml.p4d.24xlarge"))  # A100 80 GB vs 40 GB
    assert usable_gpu_memory_gib(instance_info("ml.trn1.32xlarge")) is None


def test_estimate_moves_the_way_each_setting_moves_memory():
    base = estimate_memory(_seven_b(activation_checkpointing="none")).total
    selective = estimate_memory(_seven_b(activation_checkpointing="selective")).total
    full = estimate_memory(_seven_b()).total
    assert base > selective > full
    assert estimate_memory(_seven_b(activation_checkpointing="none", offload_activations=True)).total < base / 2
    # Full sharding spreads the state over more GPUs; hybrid keeps a copy per node.
    assert estimate_memory(_seven_b(nodes=8)).total < full
    assert estimate_memory(_seven_b(nodes=8, sharding="hybrid")).total > full
    assert estimate_memory(_seven_b(batch_size=2)).total > full
    assert estimate_memory(_seven_b(bf16=False)).total > full
    offloaded = estimate_memory(_seven_b(cpu_offload=True))
    assert offloaded.sharded_params == offloaded.optimizer_states == 0 and offloaded.total < full


def test_seven_b_without_checkpointing_matches_the_known_figures():
    # Per A10G for the seed's 7B on 32 GPUs: about 18 GiB without checkpointing at 2048
    # tokens, about 29 GiB at 4096, and 7-8 GiB with checkpointing (FACTS.md).
    at = {(seq, ac): estimate_memory(_seven_b(model=SEVEN_B.replace(max_seq_len=seq), seq_len=seq,
                                              activation_checkpointing=ac)).total / GIB
          for seq in (2048, 4096) for ac in ("none", "full")}
    assert 15 < at[2048, "none"] < 20
    assert 26 < at[4096, "none"] < 31
    assert 5 < at[2048, "full"] < 9 and at[4096, "full"] < 9


def test_parts_add_up_and_the_overhead_is_the_allocators():
    estimate = estimate_memory(_seven_b())
    assert sum(size for _, size in estimate.parts()) == estimate.total
    assert estimate.tensors == estimate.total - estimate.overhead
    assert 0 < estimate.overhead < estimate.total * 0.15
    # On CPU there is no caching allocator to pay for.
    assert estimate_memory(_seven_b(device="cpu")).overhead == 0


def test_known_tokenizers_size_the_vocabulary():
    from llamapod.config.train import resolve_model_args
    from llamapod.config.train_flags import read_train_args

    spec = read_train_args(["--preset", "llama2-7b", "--tokenizer", "EleutherAI/gpt-neox-20b"]).spec
    fit = assess_memory(spec, resolve_model_args(spec), instance_type="ml.g5.48xlarge", nodes=4, gpus_per_node=8)
    assert fit.job.model.vocab_size == 50277
    spec = read_train_args(["--preset", "llama2-7b", "--tokenizer", "my/own-tokenizer"]).spec
    fit = assess_memory(spec, resolve_model_args(spec), instance_type="ml.g5.48xlarge", nodes=4, gpus_per_node=8)
    assert fit.job.model.vocab_size == SEVEN_B.vocab_size


def test_default_tokenizer_vocabulary_is_the_built_in_one():
    from llamapod.data.default import VOCAB_SIZE

    assert TOKENIZER_VOCAB["default"] == VOCAB_SIZE


def test_cpu_nodes_have_nothing_to_fit():
    from llamapod.config.train import resolve_model_args
    from llamapod.config.train_flags import read_train_args

    spec = read_train_args(["--preset", "tiny"]).spec
    assert assess_memory(spec, resolve_model_args(spec), instance_type="ml.c5.xlarge", nodes=1, gpus_per_node=2) is None


def test_refusal_names_the_gpu_and_the_settings_that_fit():
    from llamapod.config.train import resolve_model_args
    from llamapod.config.train_flags import read_train_args
    from llamapod.errors import TrainingError

    spec = read_train_args(NO_CHECKPOINTING).spec
    fit = assess_memory(spec, resolve_model_args(spec), instance_type="ml.g5.48xlarge", nodes=4, gpus_per_node=8)
    assert not fit.fits
    with pytest.raises(TrainingError) as raised:
        require_fit(fit)
    message, hint = raised.value.message, raised.value.hint
    assert re.fullmatch(r"the job needs an estimated \d+\.\d GiB per GPU \(peak [a-z ]+\), more than the 22\.0 GiB "
                        r"usable on an A10G \(ml\.g5\.48xlarge\): it would run out of memory", message), message
    assert hint.startswith("it fits with --activation_checkpointing 1 (est. ") and hint.endswith(
        "; or pass --force to submit it anyway")


def _dry_run(tmp_path, *flags):
    """`llamapod train --slurm --dry-run FLAGS` in a subprocess, in an empty folder (no llamapod.toml)."""
    return subprocess.run([sys.executable, "-m", "llamapod", "train", "--slurm", "--dry-run", *flags],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_dry_run_refuses_a_job_that_cannot_fit_before_writing_anything(tmp_path):
    result = _dry_run(tmp_path, *MUST_REFUSE)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: the job needs an estimated ") and "22.0 GiB usable on an A10G" in lines[0]
    assert lines[1].startswith("  hint: it fits with --activation_checkpointing 1 (est. ")
    assert len(lines) == 2 and result.stdout == ""
    assert not (tmp_path / "runs").exists()


def test_every_suggestion_fits_when_applied_with_its_stated_estimate(tmp_path):
    hint = _dry_run(tmp_path, *MUST_REFUSE).stderr.splitlines()[1]
    suggestions = re.findall(r"(--[a-z_-]+ [^ ;]+(?: --grad_accum \d+)?) \(est\. (\d+\.\d) GiB\)", hint)
    assert len(suggestions) >= 2, hint
    for flags, estimate in suggestions:
        result = _dry_run(tmp_path, *MUST_REFUSE, *flags.split())
        assert result.returncode == 0, (flags, result.stderr)
        assert MEMORY_LINE.search(result.stderr).group(1) == estimate, (flags, result.stderr)


def test_same_job_with_checkpointing_prints_its_estimate_and_writes_the_script(tmp_path):
    result = _dry_run(tmp_path, *NO_CHECKPOINTING[:-1], "1", *G5)
    assert result.returncode == 0, result.stderr
    assert float(MEMORY_LINE.search(result.stderr).group(1)) < 22.0
    assert re.search(r"^  .*GiB \(peak [a-z ]+\)$", result.stderr, re.M)
    assert (tmp_path / "runs" / "llamapod" / "job.sbatch").is_file()
    assert result.stdout.strip() == str(tmp_path / "runs" / "llamapod" / "job.sbatch")


def test_force_writes_the_script_with_a_warning(tmp_path):
    result = _dry_run(tmp_path, *MUST_REFUSE, "--force")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^warning: the job is estimated not to fit \(\d+\.\d > 22\.0 GiB per A10G\); "
                     r"going ahead because of --force$", result.stderr, re.M)
    assert (tmp_path / "runs" / "llamapod" / "job.sbatch").is_file()


def test_seed_job_from_init_fits_on_its_cluster(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli("init")[0] == 0
    result = subprocess.run([sys.executable, "-m", "llamapod", "train", "--slurm", "--dry-run"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    estimate = float(MEMORY_LINE.search(result.stderr).group(1))
    assert 5 < estimate < 9  # Llama 2 7B, seq 2048, batch 1, checkpointing on, 32 x A10G
    assert "wrote the sbatch script for 4 nodes x 8 workers (ml.g5.48xlarge)" in result.stderr


def test_plan_estimates_the_train_table_on_the_worker_group(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLAMAPOD_CONFIG", raising=False)
    # A port nothing listens on: the plan is complete without AWS look-ups.
    monkeypatch.setenv("LLAMAPOD_AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    code, out, err = run_cli("plan", "--out", "p")
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("[train] job"))
    assert re.fullmatch(r"\[train\] job on 4 x ml\.g5\.48xlarge: memory: \d\.\d GiB of 22\.0 GiB usable per A10G "
                        r"\(estimate\)", line), line
    # The same job on 2 x ml.g5.12xlarge (8 A10G instead of 32), with a [train] table that
    # turns checkpointing off: plan warns and says what would fit.
    (tmp_path / "llamapod.toml").write_text(
        '[cluster]\nname = "small"\n[[cluster.workers]]\nname = "w"\ninstance_type = "ml.g5.12xlarge"\ncount = 2\n'
        '[train]\npreset = "llama2-7b"\nmax_context_width = 4096\ntrain_batch_size = 1\n'
        "activation_checkpointing = 0\n")
    code, out, err = run_cli("plan", "--out", "q")
    assert code == 0, err
    assert re.search(r"^\[train\] job on 2 x ml\.g5\.12xlarge: memory: \d+\.\d GiB of 22\.0 GiB usable per A10G",
                     out, re.M), out
    assert re.search(r"^warning: the \[train\] job would not fit in GPU memory: it fits with "
                     r"--activation_checkpointing 1 \(est\. \d+\.\d GiB\)", err, re.M), err


def test_estimate_and_fit_check_run_without_torch():
    # `llamapod plan` runs on laptops without torch: neither module may pull it in.
    code = ("import sys, llamapod.sizing.fit, llamapod.cli.cloud_cmds; "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr

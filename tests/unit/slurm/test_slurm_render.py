"""Golden tests of the rendered sbatch script, plus `bash -n` and shellcheck on each.

Set LLAMAPOD_UPDATE_GOLDEN=1 to rewrite the golden files after an intended change
(then read the diff: these files are what users edit and submit).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from llamapod.config.train_flags import parse_train_args
from llamapod.slurm.render import network_env, render_sbatch
from llamapod.slurm.spec import SlurmJob

GOLDEN = Path(__file__).parent / "golden"

# The seed's step 7 command line, as its guide writes it (WALKTHROUGH.md).
SEED_FLAGS = """--max_context_width=2048 --num_key_value_heads=32 --llama_intermediate_size=11008
--hidden_width=4096 --num_layers=32 --num_heads=32 --model_type=llama_v2
--tokenizer=hf-internal-testing/llama-tokenizer --checkpoint_freq=500
--validation_freq=500 --checkpoint_dir=./checkpoints --train_batch_size=1
--val_batch_size=4 --epochs=1 --validation_batches=1
--resume_from_checkpoint=./checkpoints""".split()


def seed_cluster_job() -> SlurmJob:
    """The seed's cluster: 4 x ml.g5.48xlarge (8 x A10G each) on HyperPod, /fsx shared."""
    return SlurmJob(job_name="llama2-7b", nodes=4, instance_type="ml.g5.48xlarge", hyperpod=True,
                    output_dir="/fsx/ubuntu/runs", workdir="/fsx/ubuntu",
                    env_setup=["source /fsx/ubuntu/.llamapod/env/bin/activate"])


def p5_cluster_job() -> SlurmJob:
    return SlurmJob(job_name="llama3-70b", nodes=16, instance_type="p5.48xlarge", hyperpod=False,
                    partition="train", time="2-00:00:00", account="research", output_dir="/fsx/runs",
                    python="/fsx/envs/llamapod/bin/python", env={"NCCL_DEBUG": "INFO"},
                    sbatch_options=["--mem=0"])


CASES = {
    "seed_g5_hyperpod.sbatch": (SEED_FLAGS, seed_cluster_job),
    "p5_efa.sbatch": (["--preset=llama3-70b", "--sharding_strategy=hybrid", "--bf16=1", "--max_steps=5000",
                       "--dataset=allenai/c4", "--dataset_config_name=en", "--activation_checkpointing=1"],
                      p5_cluster_job),
}


def _render(name: str) -> str:
    flags, job = CASES[name]
    return render_sbatch(parse_train_args(list(flags)), job())


@pytest.mark.parametrize("name", sorted(CASES))
def test_slurm_render_matches_golden(name):
    text = _render(name)
    path = GOLDEN / name
    if os.environ.get("LLAMAPOD_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text()


@pytest.mark.parametrize("name", sorted(CASES))
def test_slurm_render_is_valid_bash_and_shellcheck_clean(name, tmp_path):
    script = tmp_path / name
    script.write_text(_render(name))
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    lint = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


def test_slurm_seed_script_essentials():
    text = _render("seed_g5_hyperpod.sbatch")
    assert "#SBATCH --nodes=4\n" in text and "#SBATCH --exclusive\n" in text and "#SBATCH --requeue\n" in text
    assert "srun --auto-resume=1 torchrun \\\n" in text
    assert '--nnodes "$SLURM_JOB_NUM_NODES"' in text and "--nproc_per_node 8 \\" in text
    assert '--rdzv_endpoint "$(hostname):29500"' in text
    # The seed's relative folders are anchored at the job's working directory.
    assert "--resume_from_checkpoint=/fsx/ubuntu/checkpoints \\" in text
    # g5.48xlarge has one EFA interface but no GPUDirect RDMA.
    assert "export FI_PROVIDER=efa" in text and "FI_EFA_USE_DEVICE_RDMA" not in text


def test_slurm_script_arguments_survive_bash_quoting(tmp_path):
    """The torchrun line, as bash parses it, carries every training flag unchanged."""
    spec = parse_train_args(["--preset=tiny", "--dataset=/data/my corpus/it's.txt", "--max_steps=7"])
    job = SlurmJob(job_name="q", output_dir="/runs", python="/usr/bin/python3", hyperpod=False)
    text = render_sbatch(spec, job)
    launch = text[text.index("srun "):]
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    # Stand-ins for srun and hostname that only print their arguments: bash does the real parsing.
    (fake_bin / "srun").write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    (fake_bin / "hostname").write_text("#!/bin/bash\necho node-1\n")
    for tool in fake_bin.iterdir():
        tool.chmod(0o755)
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": "77"}
    result = subprocess.run(["bash", "-c", launch], capture_output=True, text=True, env=env)
    argv = result.stdout.splitlines()
    assert argv[:18] == ["/usr/bin/python3", "-m", "torch.distributed.run", "--nnodes", "2",
                         "--nproc_per_node", "2", "--rdzv_id", "77", "--rdzv_backend", "c10d",
                         "--rdzv_endpoint", "node-1:29500", "-m", "llamapod", "worker", "--recipe=quickstart",
                         "--preset=tiny"]
    assert "--dataset=/data/my corpus/it's.txt" in argv
    assert "--resume_from_checkpoint=/runs/q/checkpoints" in argv and "--run_dir=/runs/q" in argv
    assert shlex.quote("--dataset=/data/my corpus/it's.txt") in text


@pytest.mark.parametrize("instance_type, expected", [
    ("ml.g5.12xlarge", ["NCCL_DEBUG", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_SOCKET_IFNAME"]),
    ("ml.g5.48xlarge", ["NCCL_DEBUG", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_SOCKET_IFNAME", "FI_PROVIDER",
                        "FI_EFA_FORK_SAFE"]),
    ("ml.p4d.24xlarge", ["NCCL_DEBUG", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_SOCKET_IFNAME", "FI_PROVIDER",
                         "FI_EFA_FORK_SAFE", "FI_EFA_USE_DEVICE_RDMA"]),
    (None, []),
])
def test_slurm_network_settings_follow_the_instance_type(instance_type, expected):
    job = SlurmJob(instance_type=instance_type)
    assert [name for name, _ in network_env(job)] == expected


def test_slurm_cpu_job_has_two_workers_and_no_gpu_settings():
    spec = parse_train_args(["--preset=tiny"])
    text = render_sbatch(spec, SlurmJob(job_name="cpu", output_dir="/tmp/runs", hyperpod=False))
    assert "--nproc_per_node 2 \\" in text
    assert "export NCCL" not in text and "export FI_" not in text and "--auto-resume" not in text
    assert "# CPU nodes: 2 workers per node on gloo, no NCCL/EFA settings" in text

"""The sbatch script of `llamapod data prepare --slurm`, written with --dry-run (no daemons)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from llamapod.slurm.prepare_render import PrepareRequest, default_job_name, render_prepare_sbatch
from llamapod.slurm.spec import SlurmJob


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLAMAPOD_CONFIG", raising=False)
    (tmp_path / "my corpus").mkdir()
    (tmp_path / "my corpus" / "c4-train.00000-of-00001.json.gz").write_bytes(b"")
    return tmp_path


def test_dry_run_writes_one_task_per_node_with_the_jobs_run_id(project, run_cli):
    code, out, err = run_cli("data", "prepare", "my corpus", "--out", "shards/c4 en", "--tokenizer", "EleutherAI/gpt-neox-20b",
                             "--text-field", "content", "--max-tokens", "1000000", "--shard-mb", "16",
                             "--slurm", "--dry-run", "--nodes", "4", "--time", "2:00:00", "--partition", "cpu")
    assert code == 0, err
    script = project / "runs" / "prepare-c4-en" / "job.sbatch"
    assert out == f"{script}\n"
    assert "✓ wrote the sbatch script for 4 nodes, all cores of each" in err
    text = script.read_text()
    assert ("#SBATCH --job-name=prepare-c4-en\n#SBATCH --nodes=4\n#SBATCH --ntasks-per-node=1\n#SBATCH --exclusive\n"
            "#SBATCH --partition=cpu\n#SBATCH --time=2:00:00\n") in text
    assert f"#SBATCH --output={project}/runs/prepare-c4-en/slurm-%j.out\n" in text
    assert "#SBATCH --requeue\n" in text
    assert text.endswith(
        f"srun {sys.executable} -m llamapod data prepare \\\n"
        f"    '{project}/my corpus' \\\n"
        f"    --out '{project}/shards/c4 en' \\\n"
        "    --tokenizer EleutherAI/gpt-neox-20b \\\n"
        "    --text-field content \\\n"
        "    --max-tokens 1000000 \\\n"
        "    --shard-mb 16.0 \\\n"
        '    --run-id "slurm-${SLURM_JOB_ID}-${SLURM_RESTART_COUNT:-0}"\n')
    assert script.stat().st_mode & 0o111


def test_the_script_is_valid_bash_and_shellcheck_clean(tmp_path):
    job = SlurmJob(job_name="prepare-c4", nodes=2, python="/opt/venv/bin/python", workdir="/fsx/runs",
                   env_setup=["source /opt/venv/bin/activate"], env={"LLAMAPOD_HOME": "/fsx/llamapod/home"})
    request = PrepareRequest(source="/fsx/data/c4/en/c4-train.*.json.gz", out="/fsx/data/c4-gpt", workers=96,
                             options={"data_files": ["a.json", "b.json"], "streaming": True}, overwrite=True)
    script = tmp_path / "job.sbatch"
    script.write_text(render_prepare_sbatch(request, job))
    text = script.read_text()
    assert "    '/fsx/data/c4/en/c4-train.*.json.gz' \\\n" in text     # the glob reaches llamapod, not bash
    assert "    --streaming \\\n    --data-files a.json \\\n    --data-files b.json \\\n    --workers 96 \\\n" in text
    assert "    --overwrite \\\n" in text and "export LLAMAPOD_HOME=/fsx/llamapod/home\n" in text
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    lint = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


@pytest.mark.parametrize("out, name", [("/fsx/data/c4-gpt", "prepare-c4-gpt"), ("shards/c4 en!", "prepare-c4-en"),
                                       ("/", "prepare"), ("x" * 80, "prepare-" + "x" * 56)])
def test_default_job_names_are_valid_slurm_names(out, name):
    assert default_job_name(out) == name
    SlurmJob(job_name=name)


def test_launch_flags_need_slurm_or_a_cluster(project, run_cli):
    code, _, err = run_cli("data", "prepare", "my corpus", "--out", "x", "--nodes", "2")
    assert code == 2 and "--nodes only applies with --slurm or --cluster" in err
    code, _, err = run_cli("data", "prepare", "my corpus", "--out", "x", "--dry-run")
    assert code == 2 and "--dry-run only applies with --slurm or --cluster" in err
    code, _, err = run_cli("data", "prepare", "my corpus", "--out", "x", "--slurm", "--run-id", "mine")
    assert code == 2 and "--run-id is chosen by the job (its job id); drop it with --slurm or --cluster" in err


def test_submitting_without_slurm_is_one_line(project, run_cli, monkeypatch):
    monkeypatch.setenv("PATH", str(project))
    code, out, err = run_cli("data", "prepare", "my corpus", "--out", "x", "--slurm")
    assert code == 1 and out == ""
    assert err == ("error: Slurm is not installed on this machine: `sbatch` is not on PATH\n"
                   "  hint: submit from the cluster's login or head node, use --cluster NAME from a laptop, "
                   "or add --dry-run to only write the script\n")

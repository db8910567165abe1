"""`llamapod train --slurm --dry-run` and the errors of `--slurm` without Slurm (no daemons needed)."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLAMAPOD_CONFIG", raising=False)
    (tmp_path / "llamapod.toml").write_text("""
[train]
preset = "tiny"
max_steps = 12

[slurm]
job_name = "tiny-run"
nodes = 2
instance_type = "ml.g5.48xlarge"
hyperpod = false
""")
    return tmp_path


def test_slurm_dry_run_writes_the_script_in_the_run_folder(project, run_cli):
    code, out, err = run_cli("train", "--slurm", "--dry-run", "--nodes", "3", "--time", "2:00:00", "--lr", "1e-3")
    assert code == 0, err
    script = project / "runs" / "tiny-run" / "job.sbatch"
    assert out == f"{script}\n"
    assert "✓ wrote the sbatch script for 3 nodes x 8 workers (ml.g5.48xlarge)" in err
    assert f"submit it with `sbatch {script}`" in err
    text = script.read_text()
    assert "#SBATCH --nodes=3\n#SBATCH --ntasks-per-node=1\n#SBATCH --exclusive\n#SBATCH --time=2:00:00\n" in text
    assert f"#SBATCH --chdir={project}\n" in text
    assert f"srun {sys.executable} -m torch.distributed.run \\\n" in text
    assert "    --preset=tiny \\\n    --max_steps=12 \\\n    --lr=0.001 \\\n" in text
    assert f"    --resume_from_checkpoint={project}/runs/tiny-run/checkpoints \\\n" in text
    assert script.stat().st_mode & 0o111


def test_slurm_dry_run_needs_no_slurm(project, run_cli, monkeypatch):
    monkeypatch.setenv("PATH", str(project))
    code, out, err = run_cli("train", "--slurm", "--dry-run")
    assert code == 0, err
    assert out.strip().endswith("runs/tiny-run/job.sbatch")


def test_slurm_submit_without_slurm_is_one_line(project, run_cli, monkeypatch):
    monkeypatch.setenv("PATH", str(project))
    code, out, err = run_cli("train", "--slurm")
    assert code == 1 and out == ""
    assert err == ("error: Slurm is not installed on this machine: `sbatch` is not on PATH\n"
                   "  hint: submit from the cluster's login or head node, use --cluster NAME from a laptop, "
                   "or add --dry-run to only write the script\n")
    assert not (project / "runs").exists()


def test_slurm_bad_flag_value_is_one_line(project, run_cli):
    code, _, err = run_cli("train", "--slurm", "--dry-run", "--instance-type", "ml.g5.48xl")
    assert code == 2
    assert err.splitlines()[0] == ("error: --instance-type: unknown instance type; did you mean ml.g5.48xlarge? "
                                   "(got 'ml.g5.48xl')")
    assert err.splitlines()[1] == "  hint: fix --instance-type"


def test_slurm_hyperpod_is_detected_and_adds_auto_resume(project, run_cli, monkeypatch):
    import llamapod.cli.slurm_cmds as slurm_cmds

    (project / "llamapod.toml").write_text("[slurm]\njob_name = 'hp'\n")
    code, out, _ = run_cli("train", "--slurm", "--dry-run")
    assert code == 0 and "srun --auto-resume=1" not in (project / "runs" / "hp" / "job.sbatch").read_text()
    marker = project / "sagemaker_cluster"
    marker.mkdir()
    monkeypatch.setattr(slurm_cmds, "HYPERPOD_MARKER", str(marker))
    code, out, _ = run_cli("train", "--slurm", "--dry-run")
    assert code == 0
    assert f"srun --auto-resume=1 {sys.executable} -m torch.distributed.run" in (project / "runs" / "hp" / "job.sbatch").read_text()


def test_slurm_run_dir_flag_holds_the_script_and_logs(project, run_cli):
    code, out, err = run_cli("train", "--slurm", "--dry-run", "--run_dir", "experiments/a1")
    assert code == 0, err
    script = project / "experiments" / "a1" / "job.sbatch"
    assert out == f"{script}\n"
    text = script.read_text()
    assert f"#SBATCH --output={project}/experiments/a1/slurm-%j.out" in text
    assert f"--resume_from_checkpoint={project}/experiments/a1/checkpoints" in text

    code, out, err = run_cli("train", "--slurm", "--dry-run", "--run_dir", "my run")
    assert code == 2 and out == ""
    assert err == (f"error: run_dir '{project}/my run' must not contain spaces, quotes, backslashes, '#' or '%' "
                   "(sbatch reads #SBATCH lines itself)\n"
                   "  hint: choose a run_dir without spaces, quotes, backslashes, '#', '%' or control characters\n")

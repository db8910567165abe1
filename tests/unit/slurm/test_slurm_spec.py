"""The [slurm] table: validation, flag overrides, and the one-line errors a user sees."""

from __future__ import annotations

import pytest

from llamapod.errors import ConfigError
from llamapod.slurm.spec import SlurmJob, build_slurm_job, load_slurm_job


def _config(tmp_path, body: str):
    path = tmp_path / "llamapod.toml"
    path.write_text(body)
    return path


def test_slurm_table_with_flag_overrides(tmp_path):
    path = _config(tmp_path, """
[slurm]
job_name = "seed"
nodes = 4
instance_type = "ml.g5.48xlarge"
partition = "dev"
output_dir = "/fsx/runs"
env_setup = '''
source /fsx/env/bin/activate
export HF_HOME=/fsx/hf
'''
""")
    job = load_slurm_job(path, {"nodes": 2, "time": "1:00:00"})
    assert (job.nodes, job.time, job.partition, job.workers_per_node) == (2, "1:00:00", "dev", 8)
    assert job.env_setup == ["source /fsx/env/bin/activate", "export HF_HOME=/fsx/hf"]
    assert job.run_dir == "/fsx/runs/seed"


def test_slurm_defaults_and_derived_values():
    job = SlurmJob()
    assert (job.nodes, job.workers_per_node, job.exclusive, job.requeue, job.rdzv_port) == (1, 2, True, True, 29500)
    assert SlurmJob(instance_type="p4d.24xlarge").instance_type == "ml.p4d.24xlarge"
    assert SlurmJob(instance_type="ml.g5.12xlarge").workers_per_node == 4
    assert SlurmJob(gpus_per_node=3, instance_type="ml.g5.48xlarge").workers_per_node == 3
    assert SlurmJob(output_dir="runs", workdir="/home/me/project", job_name="a").run_dir == "/home/me/project/runs/a"


def test_slurm_unknown_setting_suggests_the_right_one(tmp_path):
    path = _config(tmp_path, "[slurm]\npartiton = 'dev'\n")
    with pytest.raises(ConfigError) as err:
        load_slurm_job(path)
    assert err.value.message == f"config file {path} [slurm]: unknown setting 'partiton'"
    assert err.value.hint == "did you mean 'partition'?"


def test_slurm_bad_values_are_all_reported(tmp_path):
    path = _config(tmp_path, "[slurm]\nnodes = 0\njob_name = 'my job'\nrdzv_port = 80\n")
    with pytest.raises(ConfigError) as err:
        load_slurm_job(path)
    assert err.value.message == (f"[slurm] job_name in {path}: must be letters, digits, '.', '_' or '-' "
                                 "(at most 64), starting with a letter or digit (got 'my job')")
    assert err.value.problems == [f"[slurm] nodes in {path}: must be >= 1 (got 0)",
                                  f"[slurm] rdzv_port in {path}: must be >= 1024 (got 80)"]
    assert err.value.hint == "fix the [slurm] table of llamapod.toml (see docs/slurm.md)"


@pytest.mark.parametrize("values, message", [
    ({"time": "5 hours"}, "--time: must be a Slurm time limit: MINUTES, HH:MM:SS, DAYS-HH:MM:SS or unlimited "
                          "(got '5 hours')"),
    ({"instance_type": "ml.p5.48xlage"}, "--instance-type: unknown instance type; did you mean ml.p5.48xlarge? "
                                         "(got 'ml.p5.48xlage')"),
    ({"partition": "dev partition"}, "--partition: must be letters, digits, '_', '.', ',' or '-' "
                                     "(got 'dev partition')"),
])
def test_slurm_bad_flags_name_the_flag(values, message):
    sources = {key: {"time": "--time", "instance_type": "--instance-type", "partition": "--partition"}[key]
               for key in values}
    with pytest.raises(ConfigError) as err:
        build_slurm_job(values, sources)
    assert err.value.message == message
    assert err.value.hint == f"fix {sources[next(iter(values))]}"


@pytest.mark.parametrize("field, value", [
    ("output_dir", "/fsx/my runs"), ("output_dir", "/fsx/runs/%j"), ("env", {"BAD-NAME": "1"}),
    ("sbatch_options", ["mem=0"]),
])
def test_slurm_values_that_would_break_the_script_are_refused(field, value):
    with pytest.raises(ConfigError):
        build_slurm_job({field: value})


@pytest.mark.parametrize("limit", ["30", "30:00", "4:00:00", "2-00", "2-12:00", "2-12:00:00", "UNLIMITED"])
def test_slurm_time_limits_slurm_accepts(limit):
    assert SlurmJob(time=limit).time == limit


def test_slurm_every_setting_is_documented():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[3] / "docs" / "slurm.md").read_text()
    missing = [name for name in SlurmJob.model_fields if f"| `{name}` |" not in docs]
    assert missing == []

"""`llamapod init`, `doctor`, `plan` and `operator-policy` as a user runs them, against the emulator.

These commands only read from AWS, so the emulator is not reset between tests (moto builds
its EC2 data once per reset). Quotas and the IAM policy simulation, which moto lacks, are
injected as in test_cloud_doctor_checks.py (documented response shapes, botocore level).
"""

from __future__ import annotations

import json
import tomllib

import pytest
from fixtures.aws_answers import inject_seed_answers

from llamapod.cloud import plan as planning
from llamapod.config.cluster import load_cluster_spec, spec_from_table

ACCOUNT = "123456789012"


@pytest.fixture
def emulator(aws_endpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMAPOD_AWS_ENDPOINT_URL", aws_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_endpoint)
    monkeypatch.delenv("LLAMAPOD_CONFIG", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.chdir(tmp_path)
    return aws_endpoint


def test_init_writes_the_seed_and_refuses_to_overwrite(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("init")
    assert (code, out.strip()) == (0, "llamapod.toml")
    assert "wrote llamapod.toml: cluster ml-4-g5-48x-cluster in us-east-1, 1 x ml.c5.xlarge, 4 x ml.g5.48xlarge" in err
    data = tomllib.loads((tmp_path / "llamapod.toml").read_text())
    assert load_cluster_spec(tmp_path / "llamapod.toml", {}) == spec_from_table({})
    assert data["train"]["llama_intermediate_size"] == 11008 and data["slurm"]["nodes"] == 4
    before = (tmp_path / "llamapod.toml").read_text()
    code, out, err = run_cli("init", "--workers", "2")
    assert code == 2
    assert err.splitlines() == ["error: llamapod.toml already exists",
                                "  hint: pass --force to overwrite it, or --path to write elsewhere"]
    assert (tmp_path / "llamapod.toml").read_text() == before
    code, _, _ = run_cli("init", "--workers", "2", "--worker-type", "ml.p5.48xlarge", "--name", "p5",
                         "--az", "use1-az4", "--force")
    spec = load_cluster_spec(tmp_path / "llamapod.toml", {})
    assert code == 0
    assert (spec.name, spec.workers[0].count, spec.workers[0].instance_type, spec.availability_zone) == \
        ("p5", 2, "ml.p5.48xlarge", "use1-az4")


def test_init_seed_train_section_is_accepted_by_the_trainer(tmp_path, run_cli, monkeypatch):
    from llamapod.config.train_flags import parse_train_args
    from llamapod.slurm.spec import load_slurm_job

    monkeypatch.chdir(tmp_path)
    assert run_cli("init")[0] == 0
    spec = parse_train_args([], tmp_path / "llamapod.toml")
    assert (spec.hidden_width, spec.num_layers, spec.num_heads, spec.num_key_value_heads,
            spec.intermediate_size, spec.max_context_width) == (4096, 32, 32, 32, 11008, 2048)
    assert spec.tokenizer == "hf-internal-testing/llama-tokenizer"
    # The table is the seed's TRAINING_ARGS exactly (step 7 of the guide), no more, no less;
    # the rest is the reference's defaults.
    table = tomllib.loads((tmp_path / "llamapod.toml").read_text())["train"]
    assert table == {
        "max_context_width": 2048, "num_key_value_heads": 32, "llama_intermediate_size": 11008, "hidden_width": 4096,
        "num_layers": 32, "num_heads": 32, "model_type": "llama_v2", "tokenizer": "hf-internal-testing/llama-tokenizer",
        "checkpoint_freq": 500, "validation_freq": 500, "checkpoint_dir": "./checkpoints", "train_batch_size": 1,
        "val_batch_size": 4, "epochs": 1, "validation_batches": 1, "resume_from_checkpoint": "./checkpoints"}
    assert (spec.recipe, spec.lr, spec.activation_checkpointing, spec.max_steps) == ("reference", 1e-4, "full", 5000)
    job = load_slurm_job(tmp_path / "llamapod.toml")
    assert (job.nodes, job.instance_type, job.rdzv_port) == (4, "ml.g5.48xlarge", 29500)


def test_init_reports_every_bad_flag_and_writes_nothing(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("init", "--name", "my_cluster", "--workers", "0", "--region", "mars-1")
    assert code == 2
    assert err.splitlines() == [
        "error: the [cluster] settings have 3 problems",
        "  hint: fix them in llamapod.toml (or the flags), then re-run",
        "  - --name must be 1-63 letters, digits or hyphens, starting and ending with a letter or digit "
        "(got 'my_cluster')",
        "  - --region must be an AWS region code such as us-east-1 (got 'mars-1')",
        "  - --workers must be a whole number from 1 to 6758 (got 0)",
    ]
    assert not (tmp_path / "llamapod.toml").exists()


def test_a_bad_flag_on_top_of_a_file_is_named_as_the_flag(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "llamapod.toml").write_text('[cluster]\nthreads_per_core = 4\n')
    code, out, err = run_cli("plan", "--worker-type", "ml.g5.48xl")
    assert code == 2
    assert err.splitlines()[2:] == [
        "  - --worker-type must be an instance type HyperPod offers, e.g. ml.g5.48xlarge (got 'ml.g5.48xl'; "
        "did you mean ml.g5.48xlarge?)",
        "  - cluster.threads_per_core must be 1 or 2 (1 turns hyperthreading off) (got 4)"]
    code, out, err = run_cli("doctor", "--workers", "0")
    assert err.splitlines()[0] == ("error: the [cluster] settings have 2 problems")
    code, out, err = run_cli("doctor", "--config", "none.toml")
    assert (code, err.splitlines()[0]) == (2, "error: config file none.toml does not exist")


def test_plan_looks_up_account_and_az_and_writes_artifacts(run_cli, emulator, tmp_path):
    code, out, err = run_cli("plan", "--az", "us-east-1d")
    assert code == 0, err
    assert "`llamapod up` would create in us-east-1 (account 123456789012):" in out
    spec = spec_from_table({"availability_zone": "us-east-1d"})
    bucket = planning.lifecycle_bucket_name(spec, ACCOUNT)
    for name in ("llamapod-ml-4-g5-48x-cluster-network", bucket, planning.execution_role_name(spec)):
        assert name in out
    assert "total                               5      $81.68" in out
    folder = tmp_path / "llamapod-plan"
    summary = json.loads((folder / "plan.json").read_text())
    assert summary["availability_zone_id"] == "use1-az4"
    params = json.loads((folder / "network-parameters.json").read_text())
    assert {"ParameterKey": "AvailabilityZoneId", "ParameterValue": "use1-az4"} in params
    config = json.loads((folder / "cluster-config.json").read_text())
    assert config["InstanceGroups"][1]["ExecutionRole"] == planning.execution_role_arn(spec, ACCOUNT)
    assert "  VpcConfig.Subnets: exists once the network stack is created" in out.splitlines()


def test_plan_without_an_endpoint_still_writes_placeholders(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLAMAPOD_CONFIG", raising=False)
    # A port nothing listens on: every look-up fails to connect.
    monkeypatch.setenv("LLAMAPOD_AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    code, out, err = run_cli("plan", "--out", "p")
    assert code == 0, err
    assert "warning: account not looked up (the endpoint does not answer get_caller_identity" in err
    summary = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert summary["account"] == "<account-id>"
    assert set(summary["placeholders"]) >= {"account", "AvailabilityZoneId"}
    # An AZ given as an ID is used as it is; only a name needs the look-up.
    assert run_cli("plan", "--out", "q", "--az", "use1-az4")[0] == 0
    summary = json.loads((tmp_path / "q" / "plan.json").read_text())
    assert summary["availability_zone_id"] == "use1-az4" and "AvailabilityZoneId" not in summary["placeholders"]


def test_doctor_cli_reports_each_check(run_cli, emulator, monkeypatch):
    from llamapod.cli import cloud_cmds
    from llamapod.cloud.session import AwsSession

    def session_with_answers(region, profile):
        session = AwsSession(region=region, profile=profile)
        inject_seed_answers(session, g5_quota=2.0)
        return session

    monkeypatch.setattr(cloud_cmds, "_session", session_with_answers)
    code, out, err = run_cli("doctor", "--az", "use1-az4")
    assert code == 1
    lines = out.splitlines()
    assert lines[0].split() == ["check", "result", "detail"]
    assert any(line.startswith("quota: ml.g5.48xlarge for cluster usage") and "FAIL" in line
               and "2 allowed in us-east-1, 4 needed" in line for line in lines)
    assert ("quota: ml.g5.48xlarge for cluster usage: request an increase of 'ml.g5.48xlarge for cluster usage' "
            "to at least 4") in err
    assert "error: 1 check failed" in err


def test_doctor_cli_warns_for_unknown_and_strict_fails(run_cli, emulator):
    code, out, err = run_cli("doctor", "--json")
    assert code == 0, err
    statuses = {c["name"]: c["status"] for c in json.loads(out)}
    assert statuses == {"credentials": "ok", "region": "ok", "availability zone": "ok", "quotas": "unknown",
                        "permissions": "unknown"}
    assert ("warning: 2 checks could not be answered by this endpoint; `up` will go ahead "
            "(use --strict to require them)") in err
    code, out, err = run_cli("doctor", "--strict", "--json")
    assert code == 1
    assert "error: 0 checks failed, 2 could not be answered" in err


def test_operator_policy_prints_the_scoped_policy(run_cli, emulator):
    from llamapod.cloud.operator_policy import operator_policy

    code, out, err = run_cli("operator-policy")
    assert code == 0, err
    assert json.loads(out) == operator_policy(ACCOUNT)
    code, out, err = run_cli("operator-policy", "--account", "12345")
    assert code == 2
    assert "error: --account must be a 12-digit AWS account id (got '12345')" in err

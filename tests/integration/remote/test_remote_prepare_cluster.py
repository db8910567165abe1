"""`llamapod data prepare --cluster NAME`: reaching the cluster as `train --cluster` does.

The dry run resolves a HyperPod cluster through the AWS emulator (every node of the worker
group, paths on /fsx). The real run goes through an OpenSSH server standing in for the head
node, the real Slurm behind it and a temporary folder for /fsx: the checkout's wheel is
installed into an environment there, the local corpus and tokenizer are synced, the job
prepares the shards, and they equal a local prepare byte for byte.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

import boto3
import pytest

from fixtures.data import make_documents, train_small_bpe
from llamapod.cli.main import main
from llamapod.data.prepare import prepare
from llamapod.data.tokenizer import load_tokenizer

LIFECYCLE = {"SourceS3Uri": "s3://sagemaker-demo-lifecycle/src", "OnCreate": "on_create.sh"}
ROLE = "arn:aws:iam::123456789012:role/demo-exec"


def _cli(capfd, *args):
    code = main(list(args))
    out, err = capfd.readouterr()
    return code, out, err


def _toml(path: Path, tables: dict[str, dict]) -> str:
    lines = []
    for name, table in tables.items():
        lines += [f"[{name}]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()] + [""]
    path.write_text("\n".join(lines))
    return str(path)


def _corpus(folder: Path) -> Path:
    folder.mkdir(parents=True)
    docs = make_documents(600, seed=12, min_words=40, max_words=160)
    for number in range(3):
        with gzip.open(folder / f"c4-train.{number:05d}-of-00003.json.gz", "wt") as handle:
            for doc in docs[number * 200:(number + 1) * 200]:
                handle.write(json.dumps({"text": doc}) + "\n")
    return folder


@pytest.mark.sshd
def test_prepare_dry_run_on_hyperpod_uses_every_worker_node(aws, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("LLAMAPOD_HOME", str(tmp_path / "lp"))
    monkeypatch.chdir(tmp_path)
    groups = [("controller-machine", "ml.c5.xlarge", 1), ("worker-group-1", "ml.c5.18xlarge", 3)]
    boto3.client("sagemaker").create_cluster(
        ClusterName="demo",
        InstanceGroups=[{"InstanceGroupName": g, "InstanceType": t, "InstanceCount": n, "LifeCycleConfig": LIFECYCLE,
                         "ExecutionRole": ROLE, "ThreadsPerCore": 1} for g, t, n in groups],
        VpcConfig={"SecurityGroupIds": ["sg-12345678"], "Subnets": ["subnet-12345678"]})
    config = _toml(tmp_path / "llamapod.toml", {"remote": {"ssh_config_file": "none"}})
    _corpus(tmp_path / "c4")
    code, out, err = _cli(capfd, "data", "prepare", "c4", "--out", "c4-gpt", "--tokenizer", "EleutherAI/gpt-neox-20b",
                          "--max-tokens", "300000000", "--cluster", "demo", "--config", config, "--dry-run")
    assert code == 0, err
    assert out.startswith("# would run on cluster demo: 3 node(s), output /fsx/llamapod/data/c4-gpt\n"
                          f"# would upload c4 -> /fsx/llamapod/data/inputs/c4\n")
    assert "#SBATCH --job-name=prepare-c4-gpt\n#SBATCH --nodes=3\n#SBATCH --ntasks-per-node=1\n#SBATCH --exclusive\n" in out
    assert "#SBATCH --output=/fsx/llamapod/runs/prepare-c4-gpt/slurm-%j.out\n" in out
    assert "export LLAMAPOD_HOME=/fsx/llamapod/home\n" in out
    assert ("    /fsx/llamapod/data/inputs/c4 \\\n    --out /fsx/llamapod/data/c4-gpt \\\n"
            "    --tokenizer EleutherAI/gpt-neox-20b \\\n    --max-tokens 300000000 \\\n") in out
    assert '    --run-id "slurm-${SLURM_JOB_ID}-${SLURM_RESTART_COUNT:-0}"\n' in out
    assert err.endswith("dry run: nothing was uploaded or submitted to demo\n")


@pytest.mark.sshd
@pytest.mark.slurm
@pytest.mark.slow
def test_prepare_on_a_cluster_syncs_inputs_and_writes_the_local_bytes(tmp_path, capfd, monkeypatch, slurm_head_node):
    fsx = tmp_path / "fsx"
    fsx.mkdir()
    remote = slurm_head_node.remote_table(fsx, base_python=sys.executable, system_site_packages=True,
                                          pip_no_index=True)
    config = _toml(tmp_path / "llamapod.toml", {"remote": remote, "slurm": {"time": "10:00", "exclusive": False}})
    corpus = _corpus(tmp_path / "c4")
    tokenizer = train_small_bpe(tmp_path / "tok", make_documents(200, seed=1))
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli(capfd, "data", "prepare", "c4", "--out", "c4-small", "--tokenizer", "tok/tokenizer.json",
                          "--shard-mb", "0.02", "--workers", "1", "--cluster", "demo", "--config", config)
    assert code == 0, err
    assert "syncing c4 to " in err and f"{fsx}/llamapod/data/inputs/tokenizer.json" in err
    match = re.search(r"submitted job (\d+) on demo: 1 node\(s\) preparing (\S+)", err)
    assert match and match.group(2) == f"{fsx}/llamapod/data/c4-small", err
    assert re.search(r"^prepare \| 3/3 parts \| [\d,]+ tokens \| .* \| 100% \| ETA 0:00:00$", err, re.M), err
    assert f"job {match.group(1)} finished on demo" in err

    out_dir = fsx / "llamapod" / "data" / "c4-small"
    script = (fsx / "llamapod" / "runs" / "prepare-c4-small" / "job.sbatch").read_text()
    env_dir = next((fsx / "llamapod" / "envs").iterdir())
    assert f"srun {env_dir}/bin/python -m llamapod data prepare \\\n" in script
    local = tmp_path / "local"
    prepare(str(corpus), local, tokenizer=load_tokenizer(str(tokenizer)), workers=1, shard_chars=20_000)
    shards = sorted(p.name for p in local.iterdir())
    assert sorted(p.name for p in out_dir.iterdir()) == shards
    # The index records the source by its path: on the cluster that is the synced copy.
    for name in shards:
        if name not in ("index.json", "prepare.json"):
            assert (out_dir / name).read_bytes() == (local / name).read_bytes(), name
    remote_index, local_index = (json.loads((d / "index.json").read_text()) for d in (out_dir, local))
    assert remote_index["shards"] == local_index["shards"] and remote_index["num_tokens"] == local_index["num_tokens"]

    # `llamapod jobs --cluster` shows the tokenizing job's last progress line.
    code, out, err = _cli(capfd, "jobs", "--cluster", "demo")
    assert code == 0 and match.group(1) in out and "prepare | 3/3 parts" in out, out + err

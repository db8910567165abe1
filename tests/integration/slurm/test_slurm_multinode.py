"""A 2-node job on two Slurm nodes that are network namespaces of this machine.

Each node has its own address, host name and slurmd; the job's torchrun agents (one per
node, 2 CPU workers each) meet at the rendezvous on `$(hostname)` of the first node, so
the job only completes if the rendezvous and gloo traffic cross from n2 to n1.
"""

from __future__ import annotations

import json
import re
import sys

import pytest

from llamapod.config.train_flags import parse_train_args
from llamapod.slurm.jobs import SlurmJobs

pytestmark = [pytest.mark.slurm, pytest.mark.netns, pytest.mark.slow]


def test_slurm_two_node_job_rendezvous_crosses_nodes(slurm_two_nodes, tmp_path, monkeypatch, capsys):
    from llamapod.cli.slurm_cmds import train_with_slurm

    monkeypatch.chdir(tmp_path)
    shell = slurm_two_nodes.shell()
    spec = parse_train_args(["--preset=tiny", "--max_steps=6", "--checkpoint_freq=6", "--logging_freq=1",
                             "--validation_batches=1", "--train_batch_size=2"])
    code = train_with_slurm(spec, config_path=None, dry_run=False, shell=shell,
                            slurm_overrides={"nodes": 2, "job_name": "two-nodes", "exclusive": False})
    assert code == 0
    job_id = capsys.readouterr().out.strip()
    script = (tmp_path / "runs" / "two-nodes" / "job.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and f"srun {sys.executable} -m torch.distributed.run" in script

    jobs = SlurmJobs(shell, poll_interval_s=0.2)
    final = jobs.wait(job_id, timeout=300)
    log = jobs.log_text(job_id)
    assert final.state == "COMPLETED", log + slurm_two_nodes.log_tail("slurmd-n2")
    assert final.nodes == 2 and final.node_list == "n[1-2]"
    assert "on 2 node(s) n[1-2], attempt 1" in log
    assert "FSDP2 full sharding on 4 CPU workers" in log
    assert re.search(r"^step 6/6 \| loss ", log, re.MULTILINE)
    records = [json.loads(line) for line in (tmp_path / "runs" / "two-nodes" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["event"] == "done" and records[-1]["step"] == 6

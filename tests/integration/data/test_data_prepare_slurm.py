"""`llamapod data prepare --slurm` on a real Slurm with two compute nodes (network namespaces
of this machine, one slurmd each, the file system shared as /fsx is on a cluster).

The job's two tasks claim parts of a C4-shaped corpus (``c4-train.0000k-of-0000n.json.gz``)
through the output directory; the shards must equal a one-machine `prepare` byte for byte.
A job cancelled half-way and submitted again must keep every shard the first job finished
(same inode, same modification time) and write only the rest.
"""

from __future__ import annotations

import gzip
import json
import re
import time
from pathlib import Path

import pytest

from fixtures.data import make_documents, train_small_bpe
from llamapod.data.prepare import prepare
from llamapod.data.tokenizer import load_tokenizer
from llamapod.slurm.jobs import SlurmJobs
from llamapod.slurm.prepare_render import PrepareRequest

pytestmark = [pytest.mark.slurm, pytest.mark.netns, pytest.mark.slow]

FILES = 8
DOCS_PER_FILE = 700
SHARD_MB = 0.05
JOB_TIMEOUT_S = 300


def tree(directory: Path) -> dict[str, bytes]:
    """Every file below ``directory`` (hidden ones included) with its bytes."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def shard_identities(directory: Path) -> dict[str, tuple[int, int]]:
    """Complete shards (those with a manifest): name -> (inode, mtime) of their token file."""
    found = {}
    for manifest in directory.glob("shard_*.json"):
        tokens = manifest.with_suffix(".tokens")
        stat = tokens.stat()
        found[manifest.stem] = (stat.st_ino, stat.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def c4_like(tmp_path_factory) -> dict:
    """A corpus laid out like C4's download, a small tokenizer, and the one-machine result."""
    root = tmp_path_factory.mktemp("c4-like")
    corpus = root / "c4" / "en"
    corpus.mkdir(parents=True)
    docs = make_documents(FILES * DOCS_PER_FILE, seed=21, min_words=60, max_words=260)
    for number in range(FILES):
        with gzip.open(corpus / f"c4-train.{number:05d}-of-{FILES:05d}.json.gz", "wt") as handle:
            for doc in docs[number * DOCS_PER_FILE:(number + 1) * DOCS_PER_FILE]:
                handle.write(json.dumps({"text": doc, "timestamp": "2019-04-25T12:57:54Z", "url": "https://x"}) + "\n")
    tokenizer_file = train_small_bpe(root / "tok", make_documents(200, seed=1))
    reference = root / "reference"
    index = prepare(str(corpus), reference, tokenizer=load_tokenizer(str(tokenizer_file)), workers=1,
                    shard_chars=int(SHARD_MB * 1_000_000))
    assert len(index["shards"]) > 20
    return {"root": root, "corpus": corpus, "tokenizer": tokenizer_file, "reference": reference, "index": index}


def submit(cluster, c4_like: dict, out: Path, name: str, workers: int | None) -> str:
    from llamapod.cli.data_jobs import prepare_with_slurm

    request = PrepareRequest(source=str(c4_like["corpus"]), out=str(out), tokenizer=str(c4_like["tokenizer"]),
                             workers=workers, shard_mb=SHARD_MB)
    job_id = prepare_with_slurm(request, config_path=None, dry_run=False, shell=cluster.shell(),
                                slurm_overrides={"nodes": 2, "job_name": name, "exclusive": False,
                                                 "output_dir": str(c4_like["root"] / "runs")})
    assert job_id and job_id.isdigit()
    return job_id


def test_two_nodes_prepare_the_same_bytes_as_one_machine(slurm_two_nodes, c4_like):
    out = c4_like["root"] / "two-nodes"
    jobs = SlurmJobs(slurm_two_nodes.shell(), poll_interval_s=0.2)
    # Default workers: every node uses all its cores (a reader and tokenizer processes).
    job_id = submit(slurm_two_nodes, c4_like, out, "prepare-two", workers=None)
    final = jobs.wait(job_id, timeout=JOB_TIMEOUT_S)
    log = jobs.log_text(job_id)
    assert final.state == "COMPLETED", log + slurm_two_nodes.log_tail("slurmd-n2")
    assert final.nodes == 2 and final.node_list == "n[1-2]"
    assert "on 2 node(s) n[1-2], attempt 1" in log
    # Both tasks ran `data prepare` with the job's run id; one of them wrote the index.
    assert log.count(f"run slurm-{job_id}-0)") == 2, log
    assert tree(out) == tree(c4_like["reference"])
    # `llamapod jobs` shows the job's last progress line.
    assert re.fullmatch(r"prepare \| \d+/\d+ parts \| [\d,]+ tokens \| [\d,]+ tokens/s \| \d+% \| ETA \d+:\d\d:\d\d"
                        r"( \| \d processes)?", jobs.last_metrics(final)), log


def test_a_cancelled_job_resubmitted_rewrites_only_the_unfinished_shards(slurm_two_nodes, c4_like):
    out = c4_like["root"] / "cancelled"
    expected = {info["name"] for info in c4_like["index"]["shards"]}
    jobs = SlurmJobs(slurm_two_nodes.shell(), poll_interval_s=0.2)
    first = submit(slurm_two_nodes, c4_like, out, "prepare-cancel", workers=1)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while len(shard_identities(out) if out.is_dir() else {}) < len(expected) // 3:
        assert time.monotonic() < deadline, "no shard appeared"
        assert not jobs.info(first).ended, jobs.log_text(first)
        time.sleep(0.05)
    slurm_two_nodes.nodes["ctl"].run(["scancel", first], env=slurm_two_nodes.env, check=True)
    assert jobs.wait(first, timeout=60).state == "CANCELLED"
    kept = shard_identities(out)
    assert not (out / "index.json").exists()
    assert 0 < len(kept) < len(expected), f"cancelled with {len(kept)} of {len(expected)} shards done"

    second = submit(slurm_two_nodes, c4_like, out, "prepare-cancel", workers=1)
    final = jobs.wait(second, timeout=JOB_TIMEOUT_S)
    assert final.state == "COMPLETED", jobs.log_text(second)
    after = shard_identities(out)
    assert set(after) == expected
    unchanged = {name for name, identity in kept.items() if after[name] == identity}
    assert unchanged == set(kept), f"rewritten although finished: {sorted(set(kept) - unchanged)}"
    assert tree(out) == tree(c4_like["reference"])

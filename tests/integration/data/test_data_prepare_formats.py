"""`data prepare` over the files people download (.json.gz, .jsonl.zst, parquet, folders and
globs of them), the same bytes however the work is spread (worker processes, several
processes sharing a run, a --max_tokens cut), and one line for a damaged file."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard

from fixtures.data import make_documents
from llamapod.data.prepare import prepare
from llamapod.data.shards import ShardSet
from llamapod.data.tokenizer import load_tokenizer

DOCS = make_documents(1200, seed=9, min_words=40, max_words=200)
SHARD_CHARS = 20_000


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMAPOD_HOME", str(tmp_path / "home"))


def tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def records(docs: list[str]) -> bytes:
    return "".join(json.dumps({"text": d, "url": "https://example.org"}) + "\n" for d in docs).encode()


def c4_folder(root: Path, files: int = 6) -> Path:
    folder = root / "c4" / "en"
    folder.mkdir(parents=True)
    per_file = len(DOCS) // files
    for number in range(files):
        chunk = DOCS[number * per_file:(number + 1) * per_file]
        (folder / f"c4-train.{number:05d}-of-{files:05d}.json.gz").write_bytes(gzip.compress(records(chunk)))
    return folder


def stream_of(directory: Path) -> np.ndarray:
    shards = ShardSet(directory)
    return np.concatenate([np.asarray(shards.tokens(i)) for i in range(len(shards.shards))])


def test_every_download_format_gives_the_documents_own_tokens(tmp_path, small_tokenizer_file):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tok = load_tokenizer(str(small_tokenizer_file))
    expected = np.concatenate([tok.document_ids(tok.encode(d)) for d in DOCS])
    zst = tmp_path / "zst"
    zst.mkdir()
    (zst / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(records(DOCS[:500])))
    (zst / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(records(DOCS[500:])))
    parquet = tmp_path / "parquet"
    parquet.mkdir()
    pq.write_table(pa.table({"text": DOCS[:700]}), parquet / "train-00000-of-00002.parquet", row_group_size=100)
    pq.write_table(pa.table({"text": DOCS[700:]}), parquet / "train-00001-of-00002.parquet", row_group_size=100)
    c4 = c4_folder(tmp_path)
    sources = {"zst": str(zst), "parquet": str(parquet), "c4": str(c4),
               "glob": f"{c4}/c4-train.*-of-00006.json.gz"}
    for name, source in sources.items():
        index = prepare(source, tmp_path / f"out-{name}", tokenizer=tok, workers=1, shard_chars=SHARD_CHARS)
        assert index["num_documents"] == len(DOCS), name
        np.testing.assert_array_equal(stream_of(tmp_path / f"out-{name}"), expected, err_msg=name)


def test_worker_processes_and_shared_runs_write_the_same_bytes(tmp_path, small_tokenizer_file, monkeypatch):
    c4 = c4_folder(tmp_path)
    tok = load_tokenizer(str(small_tokenizer_file))
    prepare(str(c4), tmp_path / "one", tokenizer=tok, workers=1, shard_chars=SHARD_CHARS)
    # A reader thread and two tokenizer processes, batches small enough to interleave.
    prepare(str(c4), tmp_path / "pool", tokenizer=tok, workers=2, shard_chars=SHARD_CHARS, batch_chars=3_000)
    assert tree(tmp_path / "pool") == tree(tmp_path / "one")
    # Two readers (the thread and a reader process), as on a node with many cores.
    import llamapod.data.pipeline as pipeline

    monkeypatch.setattr(pipeline, "READERS_PER_WORKERS", 1)
    prepare(str(c4), tmp_path / "readers", tokenizer=tok, workers=2, shard_chars=SHARD_CHARS, batch_chars=3_000)
    assert tree(tmp_path / "readers") == tree(tmp_path / "one")

    # Two processes given one run id split the parts between them, as the nodes of a job do.
    shared = tmp_path / "shared"
    command = [sys.executable, "-m", "llamapod", "data", "prepare", str(c4), "--tokenizer", str(small_tokenizer_file),
               "--out", str(shared), "--shard-mb", str(SHARD_CHARS / 1e6), "--workers", "1", "--run-id", "by-hand"]
    env = dict(os.environ, SLURM_PROCID="0")
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.run(command, env={**env, "SLURM_PROCID": "1"}, capture_output=True, text=True, timeout=120)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, err + second.stderr
    assert "run by-hand" in err and "run by-hand" in second.stderr
    assert tree(shared) == tree(tmp_path / "one")


def test_max_tokens_is_the_same_cut_however_the_work_is_spread(tmp_path, small_tokenizer_file):
    c4 = c4_folder(tmp_path)
    tok = load_tokenizer(str(small_tokenizer_file))
    full = prepare(str(c4), tmp_path / "full", tokenizer=tok, workers=1, shard_chars=SHARD_CHARS)
    counts = np.cumsum([s["tokens"] for s in full["shards"]])
    limit = int(counts[len(counts) // 2]) - 10   # inside a shard in the middle of the corpus
    kept = len(counts) // 2 + 1
    one = prepare(str(c4), tmp_path / "cut-one", tokenizer=tok, workers=1, shard_chars=SHARD_CHARS, max_tokens=limit)
    pool = prepare(str(c4), tmp_path / "cut-pool", tokenizer=tok, workers=2, shard_chars=SHARD_CHARS,
                   batch_chars=3_000, max_tokens=limit)
    assert one["shards"] == pool["shards"] == [{**s, "number": i} for i, s in enumerate(full["shards"][:kept])]
    assert one["num_tokens"] == int(counts[kept - 1]) >= limit
    # Same files, nothing past the cut left behind.
    assert tree(tmp_path / "cut-pool") == tree(tmp_path / "cut-one")

    # Two processes of one run: each learns where the cut lies from the parts the other finished.
    shared = tmp_path / "cut-shared"
    command = [sys.executable, "-m", "llamapod", "data", "prepare", str(c4), "--tokenizer", str(small_tokenizer_file),
               "--out", str(shared), "--shard-mb", str(SHARD_CHARS / 1e6), "--workers", "1", "--run-id", "cut",
               "--max-tokens", str(limit)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.run(command, capture_output=True, text=True, timeout=120)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, err + second.stderr
    assert tree(shared) == tree(tmp_path / "cut-one")


def test_a_damaged_member_is_one_line_and_the_rerun_keeps_what_was_done(tmp_path, run_cli, small_tokenizer_file):
    c4 = c4_folder(tmp_path)
    victim = c4 / "c4-train.00004-of-00006.json.gz"
    intact = victim.read_bytes()
    victim.write_bytes(intact[:len(intact) // 2])
    out = tmp_path / "out"
    # Each file bigger than a part, as C4's are: one part per file, whatever its size.
    part_bytes = len(intact) // 4
    command = ["data", "prepare", str(c4), "--tokenizer", str(small_tokenizer_file), "--shard-mb", str(part_bytes / 1e6)]
    args = [*command, "--out", str(out), "--workers", "1"]
    expected = [
        f"error: {victim} is truncated: the file ends at compressed byte {len(intact) // 2:,} before the end of "
        "its gzip data",
        "  hint: re-download the file (or move it out of the corpus), then re-run the same command: finished "
        "shards are kept"]
    # Found by a reader beside tokenizer processes: the same line, and the processes are gone.
    code, _, stderr = run_cli(*command, "--out", str(tmp_path / "pool"), "--workers", "2")
    assert code == 1 and stderr.splitlines()[-2:] == expected
    assert not multiprocessing.active_children()
    code, _, stderr = run_cli(*args)
    assert code == 1 and stderr.splitlines()[-2:] == expected
    # The damaged file's shards before the damage were written too.
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.tokens")}
    assert {name.split("_")[1] for name in written} == {"000000", "000001", "000002", "000003", "000004"}
    before_damage = {name: mtime for name, mtime in written.items() if not name.startswith("shard_000004_")}

    victim.write_bytes(intact)   # downloaded again: its part is redone, the others kept
    code, _, stderr = run_cli(*args)
    assert code == 0, stderr
    assert {name: (out / name).stat().st_mtime_ns for name in before_damage} == before_damage
    assert all((out / name).stat().st_mtime_ns != mtime for name, mtime in written.items() if name not in before_damage)
    tok = load_tokenizer(str(small_tokenizer_file))
    prepare(str(c4), tmp_path / "fresh", tokenizer=tok, workers=1, shard_chars=part_bytes)
    assert tree(out) == tree(tmp_path / "fresh")

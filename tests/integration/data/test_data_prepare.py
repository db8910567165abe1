"""`llamapod data prepare` / `inspect` end to end: real worker processes, a real SIGKILL,
and the shards read back by the trainer's dataset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fixtures.data import make_documents, train_small_bpe
from llamapod.data import build_dataset, load_tokenizer
from llamapod.data.shards import ShardSet, write_shard
from llamapod.errors import DataError


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMAPOD_HOME", str(tmp_path / "home"))


def write_corpus(path: Path, count: int, seed: int = 5) -> Path:
    path.write_text("".join(json.dumps({"text": d, "n": i}) + "\n" for i, d in enumerate(make_documents(count, seed=seed))))
    return path


def tree_bytes(directory: Path) -> dict[str, bytes]:
    """Every file below ``directory``, hidden ones (run state) included."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_prepare_and_inspect_from_the_command_line(tmp_path, run_cli, small_tokenizer_file):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 400)
    out = tmp_path / "shards"
    code, stdout, stderr = run_cli("data", "prepare", str(corpus), "--tokenizer", str(small_tokenizer_file),
                                   "--out", str(out), "--shard-mb", "0.01", "--workers", "2")
    assert code == 0, stderr
    index = json.loads((out / "index.json").read_text())
    assert stdout.strip() == str(out)
    assert f"✓ {index['num_tokens']:,} tokens in 400 documents, {len(index['shards'])} shard(s) (" in stderr
    assert len(index["shards"]) > 3 and index["dtype"] == "<u2"

    code, stdout, stderr = run_cli("data", "inspect", str(out), "--tokens", "12", "--verify")
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert f"documents            400" in lines
    assert f"tokens               {index['num_tokens']:,}" in lines
    assert lines[-2] == "document 0, first 12 tokens:"
    assert lines[-1] == load_tokenizer(str(small_tokenizer_file)).decode(
        load_tokenizer(str(small_tokenizer_file)).encode(make_documents(400, seed=5)[0])[:12])

    # Same command again: nothing redone, nothing left behind.
    before = tree_bytes(out)
    code, _, stderr = run_cli("data", "prepare", str(corpus), "--tokenizer", str(small_tokenizer_file),
                              "--out", str(out), "--shard-mb", "0.01")
    assert code == 0 and f"{out} is already prepared ({index['num_tokens']:,} tokens)" in stderr
    assert tree_bytes(out) == before


def test_prepare_killed_midway_then_rerun_is_byte_identical(tmp_path, run_cli, small_tokenizer_file):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 4_000)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    args = ["data", "prepare", str(corpus), "--tokenizer", str(small_tokenizer_file), "--shard-mb", "0.01"]
    assert run_cli(*args, "--out", str(reference), "--workers", "1")[0] == 0

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "llamapod", *args, "--out", str(resumed), "--workers", "2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while len(list(resumed.glob("shard_*.json"))) < 4:
            assert proc.poll() is None, "prepare finished before it could be interrupted"
            assert time.monotonic() < deadline, "prepare wrote no shard within 120 s"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: parent and its worker processes
        proc.wait()
    assert not (resumed / "index.json").exists()
    with pytest.raises(DataError) as err:
        ShardSet(resumed)
    assert err.value.message == f"{resumed} has no index.json: it is not a prepared dataset (or preparation did not finish)"
    with pytest.raises(DataError) as err:
        build_dataset(str(resumed), load_tokenizer(str(small_tokenizer_file)), seq_len=8, split="train",
                      rank=0, world_size=1, seed=0)
    assert err.value.message == f"{resumed}: `llamapod data prepare` did not finish for this directory"

    # Resumed with another worker count: the chunking never depends on it.
    assert run_cli(*args, "--out", str(resumed), "--workers", "1")[0] == 0
    assert tree_bytes(resumed) == tree_bytes(reference)


def test_training_from_shards_sees_the_same_stream_as_from_raw_text(tmp_path, run_cli, small_tokenizer_file):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 300)
    out = tmp_path / "shards"
    assert run_cli("data", "prepare", str(corpus), "--tokenizer", str(small_tokenizer_file), "--out", str(out),
                   "--shard-mb", "0.005", "--workers", "1")[0] == 0
    tok = load_tokenizer(str(small_tokenizer_file))
    for split in ("train", "val"):
        for rank in range(2):
            raw = build_dataset(str(corpus), tok, seq_len=32, split=split, rank=rank, world_size=2, seed=9)
            shards = build_dataset(str(out), tok, seq_len=32, split=split, rank=rank, world_size=2, seed=9)
            assert raw.num_sequences == shards.num_sequences
            for _ in range(5):
                np.testing.assert_array_equal(raw.next_batch(3), shards.next_batch(3))
    # And that stream is the documents' own encoding, packed with EOS after each.
    expected = np.concatenate([tok.document_ids(tok.encode(d)) for d in make_documents(300, seed=5)])
    stored = ShardSet(out)
    np.testing.assert_array_equal(np.concatenate([stored.tokens(i) for i in range(len(stored.shards))]), expected)


def test_shards_of_another_tokenizer_are_refused(tmp_path, run_cli, small_tokenizer_file):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 100)
    out = tmp_path / "shards"
    assert run_cli("data", "prepare", str(corpus), "--tokenizer", str(small_tokenizer_file), "--out", str(out),
                   "--workers", "1")[0] == 0
    other = load_tokenizer(str(train_small_bpe(tmp_path / "other-bpe", make_documents(50, seed=11), vocab_size=300)))
    with pytest.raises(DataError) as err:
        build_dataset(str(out), other, seq_len=16, split="train", rank=0, world_size=1, seed=0)
    mine = load_tokenizer(str(small_tokenizer_file))
    assert err.value.message == f"{out} was tokenized with {mine.name}, not with the configured tokenizer {other.name}"


def test_prepare_errors_are_one_line(tmp_path, run_cli, small_tokenizer_file):
    tok = ["--tokenizer", str(small_tokenizer_file), "--workers", "1"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n{"text": "   "}\n')
    code, _, stderr = run_cli("data", "prepare", str(empty), *tok, "--out", str(tmp_path / "o1"))
    assert code == 1 and f"error: {empty} contains no documents (every record is empty)" in stderr
    assert not (tmp_path / "o1" / "index.json").exists()

    first = write_corpus(tmp_path / "a.jsonl", 50)
    second = write_corpus(tmp_path / "b.jsonl", 60, seed=8)
    out = tmp_path / "o2"
    assert run_cli("data", "prepare", str(first), *tok, "--out", str(out))[0] == 0
    code, _, stderr = run_cli("data", "prepare", str(second), *tok, "--out", str(out))
    assert code == 1 and stderr.splitlines()[-2:] == [
        f"error: {out} already holds a dataset prepared from another source or tokenizer",
        "  hint: choose another --out, or pass --overwrite to replace it"]
    assert run_cli("data", "prepare", str(second), *tok, "--out", str(out), "--overwrite")[0] == 0
    assert ShardSet(out).num_documents == 60

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    code, _, stderr = run_cli("data", "prepare", str(first), *tok, "--out", str(busy))
    assert code == 1 and f"error: {busy} is not empty (1 other file(s), e.g. notes.txt)" in stderr

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": "cut off\n{"text": "ok"}\n')
    code, _, stderr = run_cli("data", "prepare", str(broken), *tok, "--out", str(tmp_path / "o3"))
    assert code == 1 and stderr.splitlines()[-2:] == [
        f"error: {broken}: line 2 (byte 17) is not valid JSON",
        "  hint: fix or remove that record (or pass --text_field if the text is under another key), then re-run"]
    assert not (tmp_path / "o3" / "index.json").exists()

    code, _, stderr = run_cli("data", "inspect", str(tmp_path / "nowhere"))
    assert code == 1 and f"error: {tmp_path / 'nowhere'} has no index.json" in stderr


def test_token_ids_beyond_the_vocabulary_and_wide_vocabularies(tmp_path):
    with pytest.raises(DataError) as err:
        write_shard(tmp_path, 0, [[1, 2, 500]], vocab_size=320)
    assert err.value.message == "token id 500 is beyond the vocabulary (320 ids)"
    assert not list(tmp_path.iterdir()), "nothing may be left behind"
    info = write_shard(tmp_path, 0, [[1, 70_000], [65_536]], vocab_size=100_000)
    assert (tmp_path / "shard_00000.tokens").stat().st_size == 4 * info.tokens == 12


def test_max_tokens_cuts_at_whole_shards_deterministically(tmp_path, small_tokenizer_file):
    from llamapod.data.prepare import prepare

    corpus = write_corpus(tmp_path / "corpus.jsonl", 300)
    tok = load_tokenizer(str(small_tokenizer_file))
    full = prepare(str(corpus), tmp_path / "full", tokenizer=tok, workers=1, shard_chars=5_000)
    counts = np.cumsum([s["tokens"] for s in full["shards"]])
    limit = int(counts[2]) - 1  # reached inside the third shard: three shards are kept
    cut = prepare(str(corpus), tmp_path / "cut", tokenizer=tok, workers=1, shard_chars=5_000, max_tokens=limit)
    assert len(cut["shards"]) == 3 and cut["num_tokens"] == int(counts[2])
    assert cut["shards"] == full["shards"][:3]


def test_a_single_document_cannot_feed_validation(tmp_path, run_cli, small_tokenizer_file):
    book = tmp_path / "book.txt"
    book.write_text("\n\n".join(make_documents(40, seed=2)))
    tok = load_tokenizer(str(small_tokenizer_file))
    train = build_dataset(str(book), tok, seq_len=16, split="train", rank=0, world_size=1, seed=0)
    assert train.num_sequences > 100
    with pytest.raises(DataError) as err:
        build_dataset(str(book), tok, seq_len=16, split="val", rank=0, world_size=1, seed=0)
    assert err.value.message.endswith(" holds a single document: no whole document is left to hold out for validation")
    by_paragraph = build_dataset(str(book), tok, seq_len=16, split="val", rank=0, world_size=1, seed=0,
                                 txt_document="paragraph")
    assert by_paragraph.num_sequences >= 1

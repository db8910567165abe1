"""The built-in corpus and tokenizer the main job trains on (built once into LLAMAPOD_HOME)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from llamapod.data import build_dataset, load_tokenizer
from llamapod.data.default import (VOCAB_SIZE, _tokenizer_key, default_corpus, default_corpus_shards,
                                   default_tokenizer_path)
from llamapod.data.shards import ShardSet


def test_default_tokenizer_round_trips_and_has_bos_eos():
    tok = load_tokenizer()
    assert tok.vocab_size == VOCAB_SIZE
    assert tok.name.startswith("llamapod-default-bpe8k@") and tok.name == load_tokenizer(None).name
    assert tok.decode([tok.bos_id]) == "<|begin_of_text|>" and tok.decode([tok.eos_id]) == "<|end_of_text|>"
    text = default_corpus().texts[0]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text) / 2.5, "the BPE should compress Python source well"
    assert tok.encode_batch([text, "x = 1\n"]) == [ids, tok.encode("x = 1\n")]


def test_default_corpus_is_cached_split_and_deterministic(tmp_path):
    tok = load_tokenizer()
    train = build_dataset(None, tok, seq_len=128, split="train", rank=0, world_size=1, seed=0)
    val = build_dataset(None, tok, seq_len=128, split="val", rank=0, world_size=1, seed=0)
    assert train.num_sequences > 10_000 and val.num_sequences > 300
    assert val.num_sequences < train.num_sequences / 10

    shards = default_corpus_shards(tok)
    index_mtime = (shards.directory / "index.json").stat().st_mtime_ns
    again = build_dataset(None, tok, seq_len=128, split="train", rank=0, world_size=1, seed=0)
    assert (shards.directory / "index.json").stat().st_mtime_ns == index_mtime, "the cache was rebuilt"
    np.testing.assert_array_equal(train.next_batch(4), again.next_batch(4))

    index = json.loads((shards.directory / "index.json").read_text())
    assert index["tokenizer"]["name"] == tok.name and index["dtype"] == "<u2"
    assert index["source"]["documents"] == list(default_corpus().names)
    assert ShardSet(shards.directory).num_documents == len(default_corpus().names)


def test_cache_key_changes_with_the_corpus():
    corpus = default_corpus()
    changed = dataclasses.replace(corpus, digest="0" * 64)
    assert _tokenizer_key(corpus) != _tokenizer_key(changed)
    assert _tokenizer_key(corpus) in str(default_tokenizer_path())


def test_default_corpus_is_python_source_from_the_running_interpreter():
    corpus = default_corpus()
    assert corpus.names == tuple(sorted(corpus.names))
    assert all(name.endswith(".py") and "site-packages" not in name for name in corpus.names)
    assert 5_000_000 < sum(map(len, corpus.texts)) < 8_000_000

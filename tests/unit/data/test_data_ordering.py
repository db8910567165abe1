"""The ordering contract between the trainer and the data (CONTRACTS.md, Trainer <-> Data)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from fixtures.data import make_documents
from llamapod.data.dataset import TokenStream, dataset_from_shards, split_runs, validation_documents
from llamapod.data.shards import ShardSet, write_index, write_shard
from llamapod.data.tokenizer import HFJsonTokenizer
from llamapod.errors import DataError

SEQ_LEN = 16


@pytest.fixture
def shard_set(tmp_path, small_tokenizer_file):
    """Three shards of real tokenized documents."""
    tok = HFJsonTokenizer.from_file(small_tokenizer_file, add_bos=True)
    docs = make_documents(90, seed=7)
    infos = []
    for number in range(3):
        part = docs[number * 30:(number + 1) * 30]
        infos.append(write_shard(tmp_path, number, [tok.document_ids(ids) for ids in tok.encode_batch(part)], tok.vocab_size))
    write_index(tmp_path, infos, tok, {"kind": "test"})
    return ShardSet(tmp_path), tok


def make(shard_set, *, rank=0, world_size=1, seed=3, split="train", seq_len=SEQ_LEN):
    shards, tok = shard_set
    return dataset_from_shards(shards, tok, seq_len=seq_len, split=split, rank=rank, world_size=world_size, seed=seed)


def split_stream(shard_set, split="train") -> np.ndarray:
    shards, _ = shard_set
    runs = split_runs(shards, split, 0.05)
    return np.concatenate([np.asarray(shards.tokens(int(s))[int(a):int(b)]) for s, a, b in runs])


def all_windows(stream: np.ndarray, seq_len: int) -> list[tuple[int, ...]]:
    count = (len(stream) - 1) // seq_len
    return [tuple(stream[j * seq_len:j * seq_len + seq_len + 1].tolist()) for j in range(count)]


def test_two_ranks_are_disjoint_and_cover_the_split_in_an_epoch(shard_set):
    ranks = [make(shard_set, rank=r, world_size=2) for r in range(2)]
    total, batch = ranks[0].num_sequences, 5
    seen: list[dict[int, tuple]] = [{}, {}]  # global position -> row, per rank
    step = 0
    while ranks[0].epoch == 0:
        for r, ds in enumerate(ranks):
            for k, row in enumerate(ds.next_batch(batch).tolist()):
                seen[r][step * batch * 2 + k * 2 + r] = tuple(row)
        step += 1
    first_epoch = [{p: row for p, row in rank_rows.items() if p < total} for rank_rows in seen]
    assert abs(len(first_epoch[0]) - len(first_epoch[1])) <= 1
    # Disjoint: no window of the split reaches both ranks; union: every window exactly once.
    union = Counter(list(first_epoch[0].values()) + list(first_epoch[1].values()))
    assert union == Counter(all_windows(split_stream(shard_set), SEQ_LEN))
    assert ranks[0].epoch == ranks[1].epoch == 1


def test_one_rank_with_batch_2b_equals_two_ranks_with_batch_b(shard_set):
    single = make(shard_set, world_size=1)
    pair = [make(shard_set, rank=r, world_size=2) for r in range(2)]
    for _ in range(single.num_sequences // 6 + 3):  # crosses the end of the first epoch too
        whole = single.next_batch(6)
        halves = [ds.next_batch(3) for ds in pair]
        for k in range(3):
            for r in range(2):
                np.testing.assert_array_equal(whole[2 * k + r], halves[r][k])
    assert single.state_dict() == pair[0].state_dict() == pair[1].state_dict()
    assert single.epoch >= 1


def test_resume_on_a_different_world_size_continues_exactly(shard_set):
    reference = make(shard_set, world_size=1)
    reference_rows = [reference.next_batch(8) for _ in range(6)]

    two = [make(shard_set, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        for ds in two:
            ds.next_batch(4)
    state = json.loads(json.dumps(two[0].state_dict()))  # JSON-serialisable, as a checkpoint stores it

    four = [make(shard_set, rank=r, world_size=4) for r in range(4)]
    for ds in four:
        ds.load_state_dict(state)
    for step in range(3, 6):
        batches = [ds.next_batch(2) for ds in four]
        for k in range(2):
            for r in range(4):
                np.testing.assert_array_equal(batches[r][k], reference_rows[step][4 * k + r])


def test_state_dict_is_small_and_constant_size(shard_set):
    ds = make(shard_set)
    before = json.dumps(ds.state_dict())
    for _ in range(40):
        ds.next_batch(4)
    after = json.dumps(ds.state_dict())
    assert len(after) < 400 and set(json.loads(after)) == set(json.loads(before))


def test_rows_are_windows_of_seq_len_plus_one_with_eos_between_documents(shard_set):
    _, tok = shard_set
    ds = make(shard_set)
    batch = ds.next_batch(4)
    assert batch.shape == (4, SEQ_LEN + 1) and batch.dtype == np.int64
    stream = split_stream(shard_set)
    for row, number in zip(batch, make(shard_set).sequence_numbers(4)):
        np.testing.assert_array_equal(row, stream[number * SEQ_LEN:number * SEQ_LEN + SEQ_LEN + 1])
    assert (stream == tok.eos_id).sum() == (stream == tok.bos_id).sum() > 10
    assert stream[-1] == tok.eos_id


def test_new_epoch_uses_a_new_permutation_and_reset_replays(shard_set):
    ds = make(shard_set)
    n = ds.num_sequences
    first = ds.sequence_numbers(n).tolist()
    ds.next_batch(n)
    assert ds.epoch == 1 and ds.state_dict()["position"] == 0
    second = ds.sequence_numbers(n).tolist()
    assert sorted(first) == sorted(second) == list(range(n)) and first != second
    ds.reset()
    assert ds.sequence_numbers(n).tolist() == first
    other_seed = make(shard_set, seed=4)
    assert other_seed.sequence_numbers(n).tolist() != first


def test_validation_split_holds_whole_documents_apart_from_training(shard_set):
    shards, tok = shard_set
    mask = validation_documents(90, 0.05)
    assert mask.sum() == round(0.05 * 90) and np.array_equal(mask, validation_documents(90, 0.05))
    train_runs, val_runs = split_runs(shards, "train", 0.05), split_runs(shards, "val", 0.05)
    covered = Counter()
    for s, a, b in np.concatenate([train_runs, val_runs]):
        covered[int(s)] += int(b - a)
    assert [covered[i] for i in range(3)] == [info.tokens for info in shards.shards]
    val_stream = split_stream(shard_set, "val")
    assert val_stream[0] == tok.bos_id and val_stream[-1] == tok.eos_id
    val = make(shard_set, split="val")
    assert val.num_sequences == (len(val_stream) - 1) // SEQ_LEN


def test_position_from_other_data_is_refused(shard_set):
    ds = make(shard_set)
    state = ds.state_dict()
    other = make(shard_set, seq_len=SEQ_LEN * 2)
    with pytest.raises(DataError) as err:
        other.load_state_dict(state)
    assert err.value.message == (f"the checkpoint's data position belongs to different data: seq_len {SEQ_LEN} != {SEQ_LEN * 2}, "
                                 f"num_sequences {ds.num_sequences} != {other.num_sequences}")
    assert err.value.hint == "resume with the same dataset, tokenizer, --seed and --max_context_width"


def test_split_smaller_than_one_sequence_is_a_clear_error(shard_set):
    with pytest.raises(DataError) as err:
        make(shard_set, split="val", seq_len=100_000)
    assert err.value.message.startswith("the val split has ") and err.value.message.endswith(
        " tokens, fewer than one sequence of 100001")


def test_token_stream_reads_across_runs():
    a = np.arange(10, dtype=np.uint16)
    b = np.arange(100, 110, dtype=np.uint16)
    stream = TokenStream([a, b], np.array([[0, 2, 5], [1, 0, 4], [0, 8, 10]]))
    out = np.empty(9, dtype=np.int64)
    stream.read(0, 9, out)
    assert out.tolist() == [2, 3, 4, 100, 101, 102, 103, 8, 9]
    stream.read(4, 4, out[:4])
    assert out[:4].tolist() == [101, 102, 103, 8]


def test_document_segments_mark_boundaries_after_each_eos():
    from llamapod.data import document_segments

    batch = np.array([[5, 6, 1, 0, 7, 1, 0, 8], [1, 0, 9, 9, 9, 9, 9, 1]])
    assert document_segments(batch, eos_id=1).tolist() == [[0, 0, 0, 1, 1, 1, 2, 2], [0, 1, 1, 1, 1, 1, 1, 1]]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_permutation_is_a_bijection_that_changes_with_seed_and_epoch(n):
    from llamapod.data.dataset import Permutation

    values = [Permutation(n, 11, 0)[i] for i in range(n)]
    assert sorted(values) == list(range(n))
    if n >= 64:
        assert values != [Permutation(n, 11, 1)[i] for i in range(n)]
        assert values != [Permutation(n, 12, 0)[i] for i in range(n)]


def test_large_corpora_hold_out_blocks_of_documents():
    mask = validation_documents(1_000_000, 0.05)
    assert 0.049 < mask.mean() < 0.051
    runs = np.count_nonzero(np.diff(mask.astype(np.int8)) == 1) + int(mask[0])
    assert runs <= round(0.05 * 4096), "the held-out documents form few, long runs"
    np.testing.assert_array_equal(validation_documents(1_000_000, 0.05, 500_000, 1000), mask[500_000:501_000])

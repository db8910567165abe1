"""Packed training sequences over token shards, sharded across ranks, resumable in O(1).

The split's documents form one token stream (each document already [BOS] ids [EOS]);
sequence ``j`` is the window ``stream[j*seq_len : j*seq_len + seq_len + 1]`` so every token
is a target exactly once per epoch. All ranks walk the same seeded permutation of sequence
numbers; rank ``r`` takes global positions ``pos + k*world_size + r``, so ranks are disjoint,
their union is the split, and a position counted in global sequences resumes exactly on any
world size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llamapod.data.shards import ShardSet
from llamapod.errors import DataError

SPLITS = ("train", "val")
DEFAULT_VAL_FRACTION = 0.05
STATE_VERSION = 1


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fixed, seed-independent hash, so the validation split never
    changes with --seed or between runs."""
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


# The held-out split is chosen among at most this many blocks of consecutive documents, so
# choosing it, and the train split's runs of documents, stay small for corpora of any size.
MAX_SPLIT_BLOCKS = 4096


def block_starts(num_documents: int) -> np.ndarray:
    """First document of each block (and the end): ``min(n, MAX_SPLIT_BLOCKS)`` near-equal blocks."""
    blocks = min(num_documents, MAX_SPLIT_BLOCKS)
    return (np.arange(blocks + 1, dtype=np.int64) * num_documents) // max(blocks, 1)


def validation_blocks(num_blocks: int, val_fraction: float) -> np.ndarray:
    """Boolean mask of held-out blocks: the ``round(fraction*blocks)`` with the smallest hash
    (at least one when the fraction is > 0, never all of them)."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}", "use e.g. 0.05 for 5% of the documents")
    mask = np.zeros(num_blocks, dtype=bool)
    if val_fraction == 0.0 or num_blocks < 2:
        return mask
    count = min(num_blocks - 1, max(1, round(val_fraction * num_blocks)))
    mask[np.argpartition(_mix64(np.arange(num_blocks)), count - 1)[:count]] = True
    return mask


def validation_documents(num_documents: int, val_fraction: float, first: int = 0, count: int | None = None) -> np.ndarray:
    """Held-out mask for documents ``first .. first+count`` (default: all) of a corpus of
    ``num_documents``: whole documents, a fixed function of the document count."""
    count = num_documents - first if count is None else count
    starts = block_starts(num_documents)
    held_out = validation_blocks(len(starts) - 1, val_fraction)
    if not held_out.any():
        return np.zeros(count, dtype=bool)
    blocks = np.searchsorted(starts, np.arange(first, first + count, dtype=np.int64), side="right") - 1
    return held_out[blocks]


FEISTEL_ROUNDS = 4
_U64 = (1 << 64) - 1


def _mix64_int(z: int) -> int:
    """splitmix64 on a Python int (a batch is a handful of indices: faster than numpy)."""
    z = (z + 0x9E3779B97F4A7C15) & _U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return z ^ (z >> 31)


class Permutation:
    """A pseudo-random permutation of ``range(n)`` seeded by (seed, epoch), evaluated per
    element without materialising it: a Feistel network is a bijection on ``[0, 4**k)``
    (the smallest power of 4 >= n), and cycle-walking (re-applying it until the value falls
    below n) restricts it to a bijection on ``[0, n)``. O(1) memory for any corpus size."""

    def __init__(self, n: int, seed: int, epoch: int) -> None:
        self.n = n
        self.half_bits = max(1, ((n - 1).bit_length() + 1) // 2)
        self.mask = (1 << self.half_bits) - 1
        epoch_key = _mix64_int(epoch ^ _mix64_int(seed % (1 << 64)))
        self.keys = [_mix64_int(epoch_key + r) for r in range(FEISTEL_ROUNDS)]

    def _feistel(self, x: int) -> int:
        left, right = x >> self.half_bits, x & self.mask
        for key in self.keys:
            left, right = right, left ^ (_mix64_int(right ^ key) & self.mask)
        return (left << self.half_bits) | right

    def __getitem__(self, index: int) -> int:
        value = self._feistel(index)
        while value >= self.n:
            value = self._feistel(value)
        return value


class TokenStream:
    """Contiguous runs (shard, start, end) of shard tokens read as one virtual array."""

    def __init__(self, arrays: list[np.ndarray], runs: np.ndarray) -> None:
        self._arrays = arrays
        self._runs = runs.reshape(-1, 3).astype(np.int64)
        lengths = self._runs[:, 2] - self._runs[:, 1]
        self._starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def read(self, start: int, count: int, out: np.ndarray) -> None:
        run = int(np.searchsorted(self._starts, start, side="right")) - 1
        filled = 0
        while filled < count:
            shard, run_start, run_end = (int(v) for v in self._runs[run])
            offset = start + filled - int(self._starts[run])
            take = min(count - filled, run_end - run_start - offset)
            out[filled:filled + take] = self._arrays[shard][run_start + offset:run_start + offset + take]
            filled += take
            run += 1


def split_runs(shards: ShardSet, split: str, val_fraction: float) -> np.ndarray:
    """Token runs of the split's documents, adjacent documents merged into one run."""
    runs: list[np.ndarray] = []
    first_doc = 0
    for number, info in enumerate(shards.shards):
        keep = validation_documents(shards.num_documents, val_fraction, first_doc, info.documents)
        first_doc += info.documents
        if split == "train":
            keep = ~keep
        offsets = np.asarray(shards.offsets(number), dtype=np.int64)
        # Edges where membership flips delimit maximal runs of kept documents.
        padded = np.concatenate([[False], keep, [False]])
        edges = np.flatnonzero(padded[1:] != padded[:-1])
        begins, ends = edges[0::2], edges[1::2]
        if begins.size:
            runs.append(np.stack([np.full(begins.size, number), offsets[begins], offsets[ends]], axis=1))
    return np.concatenate(runs) if runs else np.zeros((0, 3), dtype=np.int64)


class PackedDataset:
    """Fixed-length packed sequences for one rank (see the module docstring for the order)."""

    def __init__(self, stream: TokenStream, *, seq_len: int, split: str, rank: int, world_size: int,
                 seed: int, tokenizer_name: str, document_runs: np.ndarray | None = None) -> None:
        if seq_len < 1:
            raise DataError(f"seq_len must be at least 1, got {seq_len}", "set --max_context_width to a positive number")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world size {world_size}", "launch with torchrun or srun")
        self._stream = stream
        self.seq_len = seq_len
        self.split = split
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.tokenizer_name = tokenizer_name
        self.num_sequences = (len(stream) - 1) // seq_len if len(stream) > 0 else 0
        if self.num_sequences < 1:
            raise DataError(f"the {split} split has {len(stream)} tokens, fewer than one sequence of {seq_len + 1}",
                            "use a larger corpus, a smaller --max_context_width, or a different val_fraction")
        self.epoch = 0
        self.pos = 0
        self._permutations: dict[int, Permutation] = {}

    def _permutation(self, epoch: int) -> Permutation:
        if epoch not in self._permutations:
            # Only the current epoch and the next (a batch may straddle them) are ever needed.
            self._permutations = {e: p for e, p in self._permutations.items() if e >= epoch - 1}
            self._permutations[epoch] = Permutation(self.num_sequences, self.seed, epoch)
        return self._permutations[epoch]

    def sequence_numbers(self, batch_size: int) -> np.ndarray:
        """The sequence numbers this rank's next batch holds (without advancing)."""
        numbers = np.empty(batch_size, dtype=np.int64)
        for k in range(batch_size):
            epochs, index = divmod(self.pos + k * self.world_size + self.rank, self.num_sequences)
            numbers[k] = self._permutation(self.epoch + epochs)[index]
        return numbers

    def next_batch(self, batch_size: int) -> np.ndarray:
        if batch_size < 1:
            raise DataError(f"batch size must be at least 1, got {batch_size}", "set a positive batch size")
        batch = np.empty((batch_size, self.seq_len + 1), dtype=np.int64)
        for row, number in enumerate(self.sequence_numbers(batch_size)):
            self._stream.read(int(number) * self.seq_len, self.seq_len + 1, batch[row])
        self._advance(batch_size * self.world_size)
        return batch

    def _advance(self, global_count: int) -> None:
        epochs, self.pos = divmod(self.pos + global_count, self.num_sequences)
        self.epoch += epochs

    def reset(self) -> None:
        self.epoch = 0
        self.pos = 0

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "split": self.split, "epoch": self.epoch, "position": self.pos,
                "seed": self.seed, "seq_len": self.seq_len, "num_sequences": self.num_sequences,
                "tokenizer": self.tokenizer_name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise DataError(f"unknown data position format {state.get('version')!r}", "resume with the llamapod version that wrote the checkpoint")
        mismatches = [f"{key} {state.get(key)!r} != {getattr(self, attr)!r}"
                      for key, attr in (("seq_len", "seq_len"), ("num_sequences", "num_sequences"),
                                        ("seed", "seed"), ("tokenizer", "tokenizer_name"))
                      if state.get(key) != getattr(self, attr)]
        if mismatches:
            raise DataError("the checkpoint's data position belongs to different data: " + ", ".join(mismatches),
                            "resume with the same dataset, tokenizer, --seed and --max_context_width")
        self.epoch = int(state["epoch"])
        self.pos = int(state["position"])

    def __repr__(self) -> str:
        return (f"<PackedDataset {self.split} seq_len={self.seq_len} sequences={self.num_sequences} "
                f"rank={self.rank}/{self.world_size} epoch={self.epoch} pos={self.pos}>")


def dataset_from_shards(shards: ShardSet, tokenizer, *, seq_len: int, split: str, rank: int, world_size: int,
                        seed: int, val_fraction: float = DEFAULT_VAL_FRACTION) -> PackedDataset:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}", "use 'train' or 'val'")
    shards.check_tokenizer(tokenizer)
    if split == "val" and val_fraction > 0 and shards.num_documents < 2:
        raise DataError(f"{shards.directory} holds a single document: no whole document is left to hold out for validation",
                        "cut it into documents (`llamapod data prepare ... --txt-document paragraph`), "
                        "or pass --validation_batches 0")
    runs = split_runs(shards, split, val_fraction)
    stream = TokenStream([shards.tokens(i) for i in range(len(shards.shards))], runs)
    return PackedDataset(stream, seq_len=seq_len, split=split, rank=rank, world_size=world_size,
                         seed=seed, tokenizer_name=tokenizer.name)


def build_dataset(source: str | None, tokenizer, *, seq_len: int, split: str, rank: int, world_size: int,
                  seed: int, **source_options: Any) -> PackedDataset:
    """The Trainer <-> Data entry point: a rank's share of ``split`` of ``source``.

    ``source`` None is the built-in default corpus; a directory with ``index.json`` is read
    as prepared shards; anything else is tokenized once into the cache and read as shards.
    """
    # Unset options arrive as None from the trainer's flags: they mean "the default".
    source_options = {k: v for k, v in source_options.items() if v is not None}
    val_fraction = float(source_options.pop("val_fraction", DEFAULT_VAL_FRACTION))
    if source is None or source in ("", "default"):
        from llamapod.data.default import default_corpus_shards

        if source_options:
            raise DataError(f"the default corpus takes no source options ({', '.join(sorted(source_options))})",
                            "pass --dataset to use your own data")
        shards = default_corpus_shards(tokenizer)
    else:
        from llamapod.data.sources import shards_for_source

        shards = shards_for_source(source, tokenizer, **source_options)
    return dataset_from_shards(shards, tokenizer, seq_len=seq_len, split=split, rank=rank,
                               world_size=world_size, seed=seed, val_fraction=val_fraction)


def document_segments(batch: np.ndarray, eos_id: int) -> np.ndarray:
    """Per-token document number within each row (0 at the start, +1 after every EOS), for
    document-boundary attention masks: a token attends only to tokens of its own segment."""
    starts = np.zeros(batch.shape, dtype=np.int32)
    starts[:, 1:] = batch[:, :-1] == eos_id
    return np.cumsum(starts, axis=1, dtype=np.int32)

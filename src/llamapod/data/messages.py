"""What the processes of one node's preparation send each other, and the job they share.

Readers send ``Batch``es to tokenizer processes and ``ChunkEnd``/``PartEnd`` to the
assembler; tokenizers send ``Tokens`` back; every message pickles small (texts one way,
numpy ids the other).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llamapod.data.pieces import Part
from llamapod.data.shards import ShardInfo

DEFAULT_BATCH_CHARS = 256 * 1024
SOURCE_PIECE = "source"    # a part that is a whole non-file source (a Hugging Face dataset)


@dataclass
class Batch:
    part: int
    chunk: int
    index: int
    texts: list[str]
    disk_bytes: int            # input bytes read for this batch (progress)


@dataclass
class Tokens:
    part: int
    chunk: int
    index: int
    ids: np.ndarray            # documents packed as [BOS] ids [EOS], back to back
    lengths: np.ndarray        # each document's packed length
    disk_bytes: int


@dataclass
class ChunkEnd:
    part: int
    chunk: int
    batches: int
    reused: ShardInfo | None   # the shard was already complete on disk (verified)
    disk_bytes: int = 0


@dataclass
class PartEnd:
    part: int
    chunks: int
    disk_bytes: int = 0
    reused: list[ShardInfo] | None = None   # every shard of the part verified from an earlier run


@dataclass
class ReaderDone:
    pass


@dataclass
class Failed:
    message: str
    hint: str | None
    crashed: bool = False


# ---- what every process of a run agrees on ------------------------------------------------


@dataclass(frozen=True)
class NodeJob:
    """Everything a reader needs, picklable: the corpus parts and how to cut them."""

    out: str
    run: str
    parts: tuple[Part, ...]
    shard_chars: int
    batch_chars: int
    source: str
    source_options: dict = field(default_factory=dict)

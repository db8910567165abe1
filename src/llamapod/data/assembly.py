"""The assembling process's side: tokenized batches into shards on disk, finished parts
marked, and the ``--max_tokens`` cut found as soon as the parts before it are known."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llamapod.data.messages import ChunkEnd, PartEnd, Tokens
from llamapod.data.pieces import Part
from llamapod.data.reader import CutView
from llamapod.data.shards import ShardInfo, part_shard_stem, write_shard_arrays
from llamapod.data.workdir import Counters, WorkDir


@dataclass
class _PendingChunk:
    batches: dict[int, Tokens] = field(default_factory=dict)
    expected: int | None = None


@dataclass
class _PartState:
    shards: dict[int, ShardInfo] = field(default_factory=dict)
    chunks: int | None = None

    @property
    def complete(self) -> bool:
        return self.chunks is not None and len(self.shards) == self.chunks

    def contiguous(self) -> list[ShardInfo]:
        found = []
        while len(found) in self.shards:
            found.append(self.shards[len(found)])
        return found


class ShardAssembler:
    """Collects tokenized batches into shards, writes them, and marks parts complete."""

    def __init__(self, workdir: WorkDir, counters: Counters, parts: tuple[Part, ...]) -> None:
        self.workdir, self.counters, self.parts = workdir, counters, parts
        self.pending: dict[tuple[int, int], _PendingChunk] = {}
        self.states: dict[int, _PartState] = {}
        self.finished_elsewhere = False

    def handle(self, message: Any) -> None:
        if isinstance(message, Tokens):
            self._chunk(message.part, message.chunk).batches[message.index] = message
            self.counters.disk_bytes += message.disk_bytes
            self.counters.new_disk_bytes += message.disk_bytes
            self._maybe_write(message.part, message.chunk)
        elif isinstance(message, ChunkEnd):
            self.counters.disk_bytes += message.disk_bytes
            if message.reused is not None:
                self.pending.pop((message.part, message.chunk), None)
                self._record(message.part, message.chunk, message.reused, new=False)
            else:
                self._chunk(message.part, message.chunk).expected = message.batches
                self._maybe_write(message.part, message.chunk)
        elif isinstance(message, PartEnd):
            self.counters.disk_bytes += message.disk_bytes
            state = self.states.setdefault(message.part, _PartState())
            state.chunks = message.chunks
            for info in message.reused or []:
                self._record(message.part, info.number, info, new=False)
            self._maybe_finish_part(message.part)

    @property
    def busy(self) -> bool:
        return bool(self.pending)

    def _chunk(self, part: int, chunk: int) -> _PendingChunk:
        return self.pending.setdefault((part, chunk), _PendingChunk())

    def _maybe_write(self, part: int, chunk: int) -> None:
        pending = self.pending[(part, chunk)]
        if pending.expected is None or len(pending.batches) < pending.expected:
            return
        del self.pending[(part, chunk)]
        batches = [pending.batches[i] for i in range(pending.expected)]
        ids = np.concatenate([b.ids for b in batches]) if batches else np.zeros(0, dtype=np.uint16)
        lengths = np.concatenate([b.lengths for b in batches]) if batches else np.zeros(0, dtype=np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype="<u8")
        np.cumsum(lengths, out=offsets[1:])
        name = part_shard_stem(part, chunk)
        try:
            info = write_shard_arrays(self.workdir.out, chunk, name, ids, offsets)
        except FileNotFoundError:
            if not self.workdir.finished():
                raise
            info = None   # the index writer removed our temporary file
        if info is None or self.workdir.finished():
            self._discard(name)   # the index was written meanwhile: this shard lies past the cut
            return
        self._record(part, chunk, info, new=True)
        self._maybe_finish_part(part)

    def _discard(self, name: str) -> None:
        self.finished_elsewhere = True
        for suffix in (".tokens", ".docs", ".json"):
            (self.workdir.out / f"{name}{suffix}").unlink(missing_ok=True)

    def _record(self, part: int, chunk: int, info: ShardInfo, *, new: bool) -> None:
        self.states.setdefault(part, _PartState()).shards[chunk] = info
        self.counters.tokens += info.tokens
        if new:
            self.counters.new_tokens += info.tokens

    def _maybe_finish_part(self, part: int) -> None:
        state = self.states[part]
        if state.complete and self.workdir.write_part(part, [state.shards[c] for c in range(state.chunks)]):
            self.counters.parts_done += 1


# ---- the --max_tokens cut ------------------------------------------------------------------


class CutTracker:
    """Finds the cut from this process's parts and the part markers other processes wrote."""

    def __init__(self, max_tokens: int | None, workdir: WorkDir, assembler: ShardAssembler, cut: CutView) -> None:
        self.max_tokens, self.workdir, self.assembler, self.cut = max_tokens, workdir, assembler, cut
        self._part = 0         # parts before this one are complete and summed
        self._tokens = 0

    def update(self) -> None:
        if self.max_tokens is None or self.cut.get() is not None:
            return
        while self._part < len(self.assembler.parts):
            state = self.assembler.states.get(self._part)
            shards = [state.shards[c] for c in range(state.chunks)] if state is not None and state.complete else \
                self.workdir.read_part(self._part, this_run_only=True)
            complete = shards is not None
            if shards is None:
                shards = state.contiguous() if state is not None else []
            running = self._tokens
            for info in shards:
                running += info.tokens
                if running >= self.max_tokens:
                    self.cut.set(self._part, info.number)
                    return
            if not complete:
                return
            self._part, self._tokens = self._part + 1, running

"""Readers: claim parts in corpus order and turn each into batches for the tokenizers,
skipping the shards an earlier run finished and stopping at the ``--max_tokens`` cut."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from llamapod.data.messages import SOURCE_PIECE, Batch, ChunkEnd, NodeJob, PartEnd, ReaderDone
from llamapod.data.pieces import Meter, Part, read_part
from llamapod.data.shards import ShardInfo, part_shard_stem, read_complete_shard
from llamapod.data.workdir import WorkDir


class CutView:
    """Where the ``--max_tokens`` cut lies, once known: the last shard inside it."""

    def __init__(self, shared=None) -> None:
        self._shared = shared      # multiprocessing Array('q', 2) across processes, else local
        self._local = [-1, -1]

    def set(self, part: int, chunk: int) -> None:
        if self._shared is not None:
            with self._shared.get_lock():   # a half-written pair would cut a part short
                self._shared[0], self._shared[1] = part, chunk
        self._local = [part, chunk]

    def get(self) -> tuple[int, int] | None:
        if self._shared is not None:
            with self._shared.get_lock():
                part, chunk = self._shared[0], self._shared[1]
        else:
            part, chunk = self._local
        return None if part < 0 else (part, chunk)

    def excludes(self, part: int, chunk: int) -> bool:
        cut = self.get()
        return cut is not None and (part, chunk) > cut


def verified_part(workdir: WorkDir, part: int) -> list[ShardInfo] | None:
    """An earlier run's complete part, if every one of its shards still checks out."""
    shards = workdir.read_part(part, this_run_only=False)
    if shards is None:
        return None
    for info in shards:
        if read_complete_shard(workdir.out, info.number, info.name) is None:
            return None
    return shards


class PartReader:
    """Claims parts and turns each into batches and chunk/part ends."""

    def __init__(self, job: NodeJob, cut: CutView, send_batch: Callable[[Batch], None],
                 send_event: Callable[[Any], None], opened_source=None) -> None:
        self.job, self.cut = job, cut
        self.send_batch, self.send_event = send_batch, send_event
        self.workdir = WorkDir(Path(job.out), job.run)
        self._source_options = None
        self._opened_source = opened_source   # a non-file source already opened in this process

    def run(self) -> None:
        while not self.workdir.index_exists():
            number = self.workdir.claim_next_part(len(self.job.parts))
            if number is None or self.cut.excludes(number, 0):
                break
            part = self.job.parts[number]
            if self.workdir.part_source_changed(number, part.fingerprint):
                self.workdir.forget_part(number)
            reused = verified_part(self.workdir, number)
            if reused is not None:
                self.send_event(PartEnd(number, len(reused), part.size, reused))
            else:
                self.read(part)
        self.send_event(ReaderDone())

    def documents(self, part: Part, meter: Meter):
        if part.pieces[0].kind == SOURCE_PIECE:
            return self._whole_source().documents()
        from llamapod.data.sources import SourceOptions

        if self._source_options is None:
            self._source_options = SourceOptions.from_kwargs(self.job.source_options)
        return read_part(part, self._source_options, meter)

    def _whole_source(self):
        if self._opened_source is None:
            from llamapod.data.sources import open_source

            self._opened_source = open_source(self.job.source, **self.job.source_options)
        return self._opened_source

    def read(self, part: Part) -> None:
        meter = Meter()
        chunk = _ChunkCutter(self, part.number, meter)
        for text in self.documents(part, meter):
            chunk.add(text)
            if chunk.chars >= self.job.shard_chars:
                chunk.close()
                if self.cut.excludes(part.number, chunk.number + 1):
                    self.send_event(PartEnd(part.number, chunk.number + 1, chunk.unreported(part.size)))
                    return
                chunk = chunk.next()
        if chunk.documents:
            chunk.close()
            chunks = chunk.number + 1
        else:
            chunks = chunk.number
        self.send_event(PartEnd(part.number, chunks, chunk.unreported(part.size)))


class _ChunkCutter:
    """One chunk being read: its batches go out as they fill, unless the shard already exists."""

    def __init__(self, reader: PartReader, part: int, meter: Meter, number: int = 0, reported: int = 0) -> None:
        self.reader, self.part, self.meter, self.number = reader, part, meter, number
        self.reported = reported          # input bytes accounted for in earlier messages of this part
        self.existing = read_complete_shard(reader.workdir.out, number, part_shard_stem(part, number))
        self.chars = 0
        self.documents = 0
        self.batches = 0
        self._texts: list[str] = []
        self._batch_chars = 0

    def add(self, text: str) -> None:
        self.chars += len(text)
        self.documents += 1
        if self.existing is not None:
            return  # read only to find where the chunk ends
        self._texts.append(text)
        self._batch_chars += len(text)
        if self._batch_chars >= self.reader.job.batch_chars:
            self._flush()

    def _progress(self) -> int:
        value = self.meter.value - self.reported
        self.reported += value
        return value

    def _flush(self) -> None:
        if self._texts:
            self.reader.send_batch(Batch(self.part, self.number, self.batches, self._texts, self._progress()))
            self.batches += 1
            self._texts, self._batch_chars = [], 0

    def close(self) -> None:
        self._flush()
        self.reader.send_event(ChunkEnd(self.part, self.number, self.batches, self.existing,
                                        self._progress() if self.existing is not None else 0))

    def next(self) -> "_ChunkCutter":
        return _ChunkCutter(self.reader, self.part, self.meter, self.number + 1, self.reported)

    def unreported(self, part_size: int) -> int:
        """The rest of the part's size, so a part's messages add up to its size exactly."""
        return max(0, part_size - self.reported)

"""One process's share of a preparation: readers, tokenizers and the shard assembler.

Work is cut twice, for two reasons:
- **parts** (``pieces.py``) are what readers claim from the run's shared counter: the
  unit of reading, and of spreading work over nodes;
- each part's document stream is cut into **chunks** of ``shard_chars`` characters
  (chunk ``c`` of part ``k`` becomes shard ``shard_<k>_<c>``: a function of the corpus
  alone), and each chunk into **batches** of about ``batch_chars`` characters: the unit
  handed to a tokenizer process, small enough to keep every core busy to the end.

With one worker everything runs in this process. With more, readers (one per
``READERS_PER_WORKERS`` workers: a thread of this process, then processes) decompress and
parse, tokenizer processes turn batches into numpy ids, and this process assembles batches
into shards, writes them, and marks parts complete. A reader checks, before each chunk, whether the ``--max_tokens`` cut is
known to lie before it, and stops there.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import multiprocessing
import os
import pickle
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from llamapod.data.pieces import Meter, Part, read_part
from llamapod.data.shards import ShardInfo, part_shard_stem, read_complete_shard, token_dtype, write_shard_arrays
from llamapod.data.workdir import Counters, WorkDir
from llamapod.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_BATCH_CHARS = 256 * 1024
# One reader keeps this many tokenizer processes busy on gzip'd JSON lines (measured: a reader
# decompresses and parses ~60x faster than one process tokenizes; half of that, for margin).
READERS_PER_WORKERS = 32
POLL_S = 0.5
_PARALLELISM = "TOKENIZERS_PARALLELISM"   # read by the Rust tokenizers library at every batch
SOURCE_PIECE = "source"    # a part that is a whole non-file source (a Hugging Face dataset)


# ---- messages between processes --------------------------------------------------------


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


# ---- encoding ----------------------------------------------------------------------------


def encode_documents(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The documents' ids as one array ([BOS] ids [EOS] each) and each document's length.

    One pass over the ids in C (``np.fromiter`` over chained lists): the per-token Python
    work is only what the tokenizer library's list of ids costs already.
    """
    id_lists = tokenizer.encode_batch(texts)
    head = (tokenizer.bos_id,) if tokenizer.add_bos else ()
    tail = (tokenizer.eos_id,)
    lengths = np.fromiter((len(ids) for ids in id_lists), dtype=np.int64, count=len(id_lists)) + len(head) + 1
    dtype = token_dtype(tokenizer.vocab_size)
    stream = itertools.chain.from_iterable(itertools.chain.from_iterable((head, ids, tail) for ids in id_lists))
    try:
        ids = np.fromiter(stream, dtype=dtype, count=int(lengths.sum()))
    except OverflowError:
        raise DataError(f"the tokenizer produced an id beyond its vocabulary ({tokenizer.vocab_size} ids)",
                        "the tokenizer's vocab_size is wrong; use the tokenizer's own files") from None
    if ids.size and int(ids.max()) >= tokenizer.vocab_size:
        raise DataError(f"token id {int(ids.max())} is beyond the vocabulary ({tokenizer.vocab_size} ids)",
                        "the tokenizer's vocab_size is wrong; use the tokenizer's own files")
    return ids, lengths


def tokenize(tokenizer, batch: Batch) -> Tokens:
    ids, lengths = encode_documents(tokenizer, batch.texts)
    return Tokens(batch.part, batch.chunk, batch.index, ids, lengths, batch.disk_bytes)


# ---- reading -----------------------------------------------------------------------------


class CutView:
    """Where the ``--max_tokens`` cut lies, once known: the last shard inside it."""

    def __init__(self, shared=None) -> None:
        self._shared = shared      # multiprocessing Array('q', 2) across processes, else local
        self._local = [-1, -1]

    def set(self, part: int, chunk: int) -> None:
        if self._shared is not None:
            self._shared[0], self._shared[1] = part, chunk
        self._local = [part, chunk]

    def get(self) -> tuple[int, int] | None:
        part, chunk = (self._shared[0], self._shared[1]) if self._shared is not None else self._local
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


# ---- assembling shards (this process) ------------------------------------------------------


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


# ---- running: in this process, or with worker processes --------------------------------------


def readers_for(workers: int) -> int:
    return max(1, math.ceil(workers / READERS_PER_WORKERS))


class NodeRun:
    """This process's share of the run; ``report(counters, final)`` is called now and then,
    and once at the end with ``final``."""

    def __init__(self, job: NodeJob, tokenizer, workers: int, max_tokens: int | None,
                 report: Callable[[Counters, bool], None], report_every_s: float = 5.0, opened_source=None) -> None:
        self.job, self.tokenizer, self.workers = job, tokenizer, workers
        self.opened_source = opened_source
        self.workdir = WorkDir(Path(job.out), job.run)
        self.counters = self.workdir.new_counters()
        self.assembler = ShardAssembler(self.workdir, self.counters, job.parts)
        self.report, self.report_every_s = report, report_every_s
        self.max_tokens = max_tokens
        self._last_report = 0.0

    def tick(self, cut: "CutTracker", final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last_report < self.report_every_s:
            return
        self._last_report = now
        cut.update()
        self.workdir.publish(self.counters)
        self.report(self.counters, final)

    def run(self) -> None:
        payload = pickled(self.tokenizer) if self.workers > 1 else None
        if payload is None:
            self._run_here()
        else:
            self._run_with_processes(payload)

    def _run_here(self) -> None:
        cut_view = CutView()
        cut = CutTracker(self.max_tokens, self.workdir, self.assembler, cut_view)

        def send_batch(batch: Batch) -> None:
            self.assembler.handle(tokenize(self.tokenizer, batch))
            self.tick(cut)

        def send_event(message: Any) -> None:
            self.assembler.handle(message)
            if isinstance(message, PartEnd):
                cut.update()
            self.tick(cut)

        with _one_tokenizer_thread():
            PartReader(self.job, cut_view, send_batch, send_event, self.opened_source).run()
        self.tick(cut, final=True)

    def _run_with_processes(self, payload: bytes) -> None:
        context = multiprocessing.get_context("spawn")  # the parent may run the Rust tokenizer's threads
        readers = readers_for(self.workers)
        batches = context.Queue(maxsize=2 * self.workers)
        results = context.Queue()
        shared_cut = context.Array("q", [-1, -1])
        cut = CutTracker(self.max_tokens, self.workdir, self.assembler, CutView(shared_cut))
        # The first reader is a thread of this process (reading is ~1% of the work, and one
        # process fewer to start); more readers, for many workers, are processes.
        stop = threading.Event()
        thread = threading.Thread(target=_reader_main, daemon=True,
                                  args=(self.job, shared_cut, _StoppablePut(batches, stop), results, self.opened_source))
        processes = [context.Process(target=_reader_main, args=(self.job, shared_cut, batches, results), daemon=True)
                     for _ in range(readers - 1)]
        processes += [context.Process(target=_tokenizer_main, args=(payload, batches, results), daemon=True)
                      for _ in range(self.workers)]
        try:
            for process in processes:
                process.start()
            thread.start()
            self._collect(results, processes, readers, cut)
            for _ in range(self.workers):
                batches.put(None)
            for process in processes:
                process.join(timeout=30)
        finally:
            stop.set()
            started = [process for process in processes if process.pid is not None]
            for process in started:
                if process.is_alive():
                    process.terminate()
            for process in started:
                process.join(timeout=10)
            for q in (batches, results):
                q.cancel_join_thread()
                q.close()

    def _collect(self, results, processes, readers: int, cut: CutTracker) -> None:
        while readers or self.assembler.busy:
            try:
                message = results.get(timeout=POLL_S)
            except queue.Empty:
                _check_alive(processes)
                self.tick(cut)
                continue
            if isinstance(message, Failed):
                if message.crashed:
                    raise RuntimeError(message.message)
                raise DataError(message.message, message.hint)
            if isinstance(message, ReaderDone):
                readers -= 1
            else:
                self.assembler.handle(message)
                if isinstance(message, PartEnd):
                    cut.update()
            self.tick(cut)
        self.tick(cut, final=True)


class _StoppablePut:
    """``queue.put`` for the reader thread that gives up once the run is stopping (the
    tokenizers that would empty the queue may be gone)."""

    def __init__(self, target, stop: threading.Event) -> None:
        self.target, self.stop = target, stop

    def put(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.target.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue
        raise _Stopped()


class _Stopped(Exception):
    pass


@contextlib.contextmanager
def _one_tokenizer_thread():
    """One worker is one core: without this the Rust tokenizer spreads a batch over every
    core of the machine (and N single-worker processes on N nodes of one machine, or beside
    other jobs, would fight for them)."""
    previous = os.environ.get(_PARALLELISM)
    os.environ[_PARALLELISM] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_PARALLELISM, None)
        else:
            os.environ[_PARALLELISM] = previous


def _check_alive(processes) -> None:
    for process in processes:
        if process.exitcode not in (None, 0):
            raise DataError(f"a prepare worker process died (exit code {process.exitcode})",
                            "out of memory? lower --workers (or --shard-mb), then re-run: finished shards are kept")


def pickled(tokenizer) -> bytes | None:
    """The tokenizer as sent to worker processes (identical by construction, no reload)."""
    try:
        return pickle.dumps(tokenizer)
    except Exception:  # a tokenizer holding an unpicklable native object: tokenize in-process
        return None


def _failure(exc: BaseException) -> Failed:
    if isinstance(exc, DataError):
        return Failed(exc.message, exc.hint)
    return Failed(f"internal error in a prepare worker: {''.join(traceback.format_exception(exc)).strip()}", None,
                  crashed=True)


def _reader_main(job: NodeJob, shared_cut, batches, results, opened_source=None) -> None:
    try:
        PartReader(job, CutView(shared_cut), batches.put, results.put, opened_source).run()
    except _Stopped:
        return
    except BaseException as exc:  # reported to the parent, which stops the run
        results.put(_failure(exc))


def _tokenizer_main(payload: bytes, batches, results) -> None:
    # One process per core already: the Rust tokenizer's own thread pool would oversubscribe.
    os.environ[_PARALLELISM] = "false"
    try:
        tokenizer = pickle.loads(payload)
        while True:
            batch = batches.get()
            if batch is None:
                return
            results.put(tokenize(tokenizer, batch))
    except BaseException as exc:
        results.put(_failure(exc))

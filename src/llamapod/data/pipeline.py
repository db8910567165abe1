"""One process's share of a preparation: readers (``reader.py``), tokenizers (here) and the
shard assembler (``assembly.py``), in this process or with worker processes.

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
into shards, writes them, and marks parts complete. A reader checks, before each chunk,
whether the ``--max_tokens`` cut is known to lie before it, and stops there.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import multiprocessing
import os
import pickle  # nosec B403: only passes this process's own tokenizer to its worker processes
import queue
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from llamapod.data.assembly import CutTracker, ShardAssembler
from llamapod.data.messages import Batch, Failed, NodeJob, PartEnd, ReaderDone, Tokens
from llamapod.data.reader import CutView, PartReader
from llamapod.data.shards import token_dtype
from llamapod.data.workdir import Counters, WorkDir
from llamapod.errors import DataError

# Tokenizer processes one reader keeps busy. Measured on 2 KB gzip'd JSON lines (C4's shape): a
# reader yields ~200 MB/s of text, one process tokenizes ~5.5 MB/s (8k BPE): 37x. Faster
# tokenizers (tiktoken) need more readers per worker: 16 leaves them room.
READERS_PER_WORKERS = 16
POLL_S = 0.5
_PARALLELISM = "TOKENIZERS_PARALLELISM"   # read by the Rust tokenizers library at every batch


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
        tokenizer = pickle.loads(payload)  # nosec B301: bytes this process made from its own tokenizer, never read from disk or network
        while True:
            batch = batches.get()
            if batch is None:
                return
            results.put(tokenize(tokenizer, batch))
    except BaseException as exc:
        results.put(_failure(exc))

"""``llamapod data prepare``: tokenize a corpus once into memory-mapped token shards.

The corpus is cut into chunks of about ``shard_chars`` characters in document order (a
function of the source alone, never of the worker count or timing), chunk ``k`` becomes
shard ``k``, and worker processes tokenize chunks in parallel. A shard is complete only
once its manifest exists, and ``index.json`` is written last. Re-running after an
interruption keeps the complete shards (their checksums verified) and redoes the rest,
so the result is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle  # nosec B403: pickle only passes this process's own tokenizer to its worker processes
import shutil
from collections import deque
from pathlib import Path
from typing import Any, Iterator

from llamapod.data.atomic import file_lock, write_json_atomic
from llamapod.data.shards import (INDEX, ShardInfo, ShardSet, read_complete_shard, shard_stem, write_index,
                                  write_shard)
from llamapod.data.sources import DocumentSource, open_source
from llamapod.data.tokenizer import Tokenizer, digest_bytes, load_tokenizer
from llamapod.errors import DataError

PLAN = "prepare.json"
DEFAULT_SHARD_CHARS = 8_000_000       # ~2M tokens, a 4 MB uint16 shard
PLAN_VERSION = 1


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def chunks(documents: Iterator[str], shard_chars: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for text in documents:
        chunk.append(text)
        size += len(text)
        if size >= shard_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def tokenize_chunk(tokenizer: Tokenizer, directory: Path, number: int, texts: list[str]) -> ShardInfo:
    documents = [tokenizer.document_ids(ids) for ids in tokenizer.encode_batch(texts)]
    return write_shard(directory, number, documents, tokenizer.vocab_size)


# ---- worker processes ---------------------------------------------------------------

_worker_tokenizer: Tokenizer | None = None


def _init_worker(pickled_tokenizer: bytes) -> None:
    # One process per core already: the Rust tokenizer's own thread pool would oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    global _worker_tokenizer
    _worker_tokenizer = pickle.loads(pickled_tokenizer)  # nosec B301: bytes made by this process from its own tokenizer, never read from disk or network


def _pickled(tokenizer: Tokenizer) -> bytes | None:
    """The tokenizer as sent to worker processes (identical by construction, no reload)."""
    try:
        return pickle.dumps(tokenizer)
    except Exception:  # a tokenizer holding an unpicklable native object: tokenize in-process
        return None


def _worker_tokenize(directory: str, number: int, texts: list[str]) -> dict:
    return tokenize_chunk(_worker_tokenizer, Path(directory), number, texts).to_dict()


# ---- the plan: what this directory is being prepared from -----------------------------


def make_plan(source: DocumentSource, tokenizer: Tokenizer, shard_chars: int) -> dict:
    plan = {"version": PLAN_VERSION, "source": source.description, "source_fingerprint": source.fingerprint,
            "tokenizer": tokenizer.describe(), "shard_chars": shard_chars}
    plan["digest"] = digest_bytes(json.dumps(plan, sort_keys=True).encode())
    return plan


def _our_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir()
            if p.name in (INDEX, PLAN) or p.name.startswith("shard_") or (p.name.startswith(".") and p.name.endswith(".tmp"))]


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def claim_directory(out: Path, plan: dict, overwrite: bool) -> dict | None:
    """Make ``out`` ready for ``plan``; returns the index if it is already fully prepared."""
    from llamapod.cli import ui

    out.mkdir(parents=True, exist_ok=True)
    index_path, plan_path = out / INDEX, out / PLAN
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        if index.get("plan_digest") == plan["digest"]:
            return index
        if not overwrite:
            raise DataError(f"{out} already holds a dataset prepared from another source or tokenizer",
                            "choose another --out, or pass --overwrite to replace it")
        _remove(_our_files(out))
    elif plan_path.is_file():
        try:
            previous = json.loads(plan_path.read_text()).get("digest")
        except ValueError:
            previous = None
        if previous != plan["digest"]:
            ui.warn(f"{out} holds an unfinished preparation of another source or tokenizer; starting over")
            _remove(_our_files(out))
    else:
        foreign = [p.name for p in out.iterdir() if p not in _our_files(out)]
        if foreign:
            raise DataError(f"{out} is not empty ({len(foreign)} other file(s), e.g. {sorted(foreign)[0]})",
                            "choose a new or empty --out directory")
    # Temporary files of a killed run: never complete, never reused.
    _remove([p for p in out.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")])
    write_json_atomic(plan_path, plan)
    return None


# ---- the pipeline --------------------------------------------------------------------


def prepare(source: str, out: Path, *, tokenizer: Tokenizer | None = None, tokenizer_spec: str | None = None,
            workers: int | None = None, shard_chars: int = DEFAULT_SHARD_CHARS, overwrite: bool = False,
            **source_options: Any) -> dict:
    """Tokenize ``source`` into shards under ``out``; returns the index. Resumable."""
    tokenizer = tokenizer or load_tokenizer(tokenizer_spec)
    opened = open_source(source, **source_options)
    return prepare_opened(opened, Path(out), tokenizer, workers=workers, shard_chars=shard_chars, overwrite=overwrite,
                          max_tokens=max_tokens_option(source_options))


def max_tokens_option(options: dict) -> int | None:
    value = options.get("max_tokens")
    return int(value) if value is not None else None


def prepare_opened(source: DocumentSource, out: Path, tokenizer: Tokenizer, *, workers: int | None,
                   shard_chars: int, overwrite: bool, max_tokens: int | None) -> dict:
    from llamapod.cli import ui

    if shard_chars < 1:
        raise DataError(f"shard size must be positive, got {shard_chars}", "pass e.g. --shard-mb 8")
    plan = make_plan(source, tokenizer, shard_chars)
    done = claim_directory(out, plan, overwrite)
    if done is not None:
        ui.info(f"{out} is already prepared ({done['num_tokens']:,} tokens)")
        return done
    workers = max(1, workers or cpu_count())
    infos = _tokenize_all(source, out, tokenizer, workers, shard_chars, max_tokens)
    if not infos or sum(i.tokens for i in infos) == 0:
        raise DataError(f"{source.description.get('source')} contains no documents (every record is empty)",
                        "check the path and --text_field")
    return write_index(out, infos, tokenizer, source.description,
                       extra={"plan_digest": plan["digest"], "tokenizer_spec": tokenizer.spec})


class _ShardPipeline:
    """Chunks go out to the workers; shard manifests come back in chunk order."""

    def __init__(self, pool, tokenizer: Tokenizer, out: Path, progress, source: DocumentSource) -> None:
        self.pool, self.tokenizer, self.out = pool, tokenizer, out
        self.progress, self.source = progress, source
        self.pending: deque = deque()
        self.results: list[ShardInfo] = []
        self.tokens = 0

    def submit(self, number: int, texts: list[str]) -> None:
        existing = read_complete_shard(self.out, number)
        if existing is not None:
            self.pending.append(existing)
        elif self.pool is None:
            self.pending.append(tokenize_chunk(self.tokenizer, self.out, number, texts))
        else:
            self.pending.append(self.pool.apply_async(_worker_tokenize, (str(self.out), number, texts)))

    def collect(self, *, keep: int | None) -> None:
        """Take finished shards in chunk order, blocking while more than ``keep`` are pending
        (``None``: never block; 0: wait for all)."""
        while self.pending:
            head = self.pending[0]
            if not isinstance(head, ShardInfo):
                must_wait = keep is not None and len(self.pending) > keep
                if not (must_wait or head.ready()):
                    return
                head = ShardInfo.from_dict(head.get())
            self.pending.popleft()
            self.results.append(head)
            self.tokens += head.tokens
            self.progress.update(round(self.source.consumed / 1e6, 1), f"tokenized {self.tokens:,} tokens")


def _tokenize_all(source: DocumentSource, out: Path, tokenizer: Tokenizer, workers: int, shard_chars: int,
                  max_tokens: int | None) -> list[ShardInfo]:
    from llamapod.cli import ui

    total_mb = round(source.total_bytes / 1e6, 1) if source.total_bytes else None
    pool = None
    payload = _pickled(tokenizer) if workers > 1 else None
    if payload is None:
        workers = 1
    else:
        # spawn, not fork: the parent may already run the Rust tokenizer's threads.
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(payload,))
    try:
        with ui.Progress(f"tokenizing with {workers} process(es) [MB read]", total=total_mb) as progress:
            pipeline = _ShardPipeline(pool, tokenizer, out, progress, source)
            for number, texts in enumerate(chunks(source.documents(), shard_chars)):
                if max_tokens is not None:
                    pipeline.collect(keep=0)  # a deterministic cut needs every earlier shard's count
                    if pipeline.tokens >= max_tokens:
                        break
                pipeline.submit(number, texts)
                # Bounded read-ahead: at most two chunks per worker held in memory.
                pipeline.collect(keep=2 * workers)
            pipeline.collect(keep=0)
            progress.update(round(source.consumed / 1e6, 1), f"tokenized {pipeline.tokens:,} tokens", force=True)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    _remove_shards_from(out, len(pipeline.results))
    return pipeline.results


def _remove_shards_from(out: Path, first_unused: int) -> None:
    """Shards past the end (a previous run with a larger max_tokens cut) are not part of this dataset."""
    number = first_unused
    while any((out / f"{shard_stem(number)}{ext}").exists() for ext in (".tokens", ".docs", ".json")):
        _remove([out / f"{shard_stem(number)}{ext}" for ext in (".tokens", ".docs", ".json")])
        number += 1


def cached_shards_for_raw_source(source: str, tokenizer: Tokenizer, **options: Any) -> ShardSet:
    """A raw corpus tokenized once into the cache (the key covers source, options and
    tokenizer), so every later run, and every rank, reads shards."""
    from llamapod import paths

    opened = open_source(source, **options)
    key = digest_bytes(opened.fingerprint.encode(), tokenizer.fingerprint.encode(),
                       json.dumps(tokenizer.describe(), sort_keys=True).encode())[:16]
    root = paths.cache_dir() / "data"
    directory = root / f"prepared-{key}"
    if not (directory / INDEX).is_file():
        with file_lock(root / f".prepared-{key}.lock"):
            if not (directory / INDEX).is_file():
                prepare_opened(opened, directory, tokenizer, workers=None, shard_chars=DEFAULT_SHARD_CHARS,
                               overwrite=False, max_tokens=max_tokens_option(options))
    return ShardSet(directory)

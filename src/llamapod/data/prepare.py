"""``llamapod data prepare``: tokenize a corpus once into memory-mapped token shards, on one
machine or on every node of a Slurm job, with the same bytes out either way.

The corpus is cut into parts and each part's documents into chunks of ``shard_chars``
characters (``pieces.py``, ``pipeline.py``): shard ``shard_<part>_<chunk>`` is a function
of the source and the settings alone, never of how many processes or nodes tokenize it.
Processes started with the same run id (the nodes of one Slurm job) share the work
through the output directory (``workdir.py``); a process started alone gets a run of its
own. A shard is complete once its manifest exists; ``index.json`` is written last, by
whichever process finds every needed part complete. Re-running after an interruption
keeps the complete shards (checksums verified) and redoes the rest.

``--max_tokens`` keeps the shortest run of shards, in corpus order, that holds at least
that many tokens: the same cut however the work was spread.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from llamapod.data.atomic import file_lock, write_json_atomic
from llamapod.data.pieces import Part, Piece
from llamapod.data.messages import DEFAULT_BATCH_CHARS, SOURCE_PIECE, NodeJob
from llamapod.data.pipeline import NodeRun
from llamapod.data.shards import INDEX, ShardInfo, ShardSet, part_shard_stem, read_complete_shard, write_index
from llamapod.data.sources import DocumentSource, FileSource, open_source
from llamapod.data.tokenizer import Tokenizer, digest_bytes, load_tokenizer
from llamapod.data.workdir import STATE_DIR, Counters, WorkDir
from llamapod.errors import DataError

log = logging.getLogger(__name__)

PLAN = "prepare.json"
DEFAULT_SHARD_CHARS = 8_000_000       # ~2M tokens, a 4 MB uint16 shard
PLAN_VERSION = 2


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ---- what a preparation reports -------------------------------------------------------------


@dataclass(frozen=True)
class PrepareStatus:
    """The whole run's progress (every process of it), as one process sees it."""

    parts: int
    parts_done: int
    tokens: int
    input_bytes: int
    total_bytes: int
    tokens_per_s: float
    eta_s: float | None
    processes: int
    max_tokens: int | None = None
    final: bool = False        # this process's last report
    complete: bool = False     # the index is written: the run's last report

    @property
    def fraction(self) -> float:
        if self.complete:
            return 1.0
        return self._fraction

    @property
    def _fraction(self) -> float:
        by_bytes = self.input_bytes / self.total_bytes if self.total_bytes else 0.0
        if self.max_tokens:
            return min(1.0, max(by_bytes, self.tokens / self.max_tokens))
        return min(1.0, by_bytes)


class PrepareReporter:
    """Where a preparation tells what it does; the CLI renders it, this default logs it."""

    def note(self, message: str) -> None:
        log.info(message)

    def warn(self, message: str) -> None:
        log.warning(message)

    def progress(self, status: PrepareStatus) -> None:
        log.debug("prepare: %s tokens, %.0f%%", status.tokens, 100 * status.fraction)


def run_status(parts: list[Part], counters: Counters, workdir: WorkDir, max_tokens: int | None,
               final: bool = False) -> PrepareStatus:
    totals = workdir.totals(counters)
    elapsed = max(time.time() - totals.started, 1e-6)
    total_bytes = sum(part.size for part in parts)
    byte_rate = totals.new_disk_bytes / elapsed
    token_rate = totals.new_tokens / elapsed
    eta = (total_bytes - totals.disk_bytes) / byte_rate if byte_rate > 0 else None
    if max_tokens and token_rate > 0:
        by_tokens = max(0.0, (max_tokens - totals.tokens) / token_rate)
        eta = by_tokens if eta is None else min(eta, by_tokens)
    return PrepareStatus(parts=len(parts), parts_done=totals.parts_done, tokens=totals.tokens,
                         input_bytes=totals.disk_bytes, total_bytes=total_bytes, tokens_per_s=token_rate,
                         eta_s=None if eta is None else max(0.0, eta), processes=totals.processes,
                         max_tokens=max_tokens, final=final)


# ---- the plan: what this directory is being prepared from -----------------------------------


def source_parts(source: DocumentSource, part_bytes: int) -> list[Part]:
    """File sources are cut into parts; any other source is read by one reader as one part."""
    if isinstance(source, FileSource):
        return source.parts(part_bytes)
    piece = Piece(str(source.description.get("source")), SOURCE_PIECE, source.total_bytes or 0)
    return [Part(0, (piece,), source.fingerprint)]


def make_plan(source: DocumentSource, tokenizer: Tokenizer, shard_chars: int, parts: int) -> dict:
    """What is prepared: the files by name (each part keeps the fingerprint of its own files,
    so replacing one file redoes only its parts), the options, tokenizer and shard size."""
    plan = {"version": PLAN_VERSION, "source": source.description, "tokenizer": tokenizer.describe(),
            "shard_chars": shard_chars, "parts": parts}
    plan["digest"] = digest_bytes(json.dumps(plan, sort_keys=True).encode())
    return plan


def _our_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir()
            if p.name in (INDEX, PLAN) or p.name.startswith("shard_") or p.name == STATE_DIR
            or (p.name.startswith(".") and p.name.endswith(".tmp"))]


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.name == STATE_DIR:
            continue  # holds the lock the caller holds: emptied by _start_over, kept
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _start_over(out: Path, workdir: WorkDir) -> None:
    _remove(_our_files(out))
    for entry in workdir.state.iterdir():
        if entry.name != "lock":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)


def _read_index(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _same_dataset(index: dict | None, plan: dict, source_fingerprint: str) -> bool:
    """A finished index of this plan, made from the files as they are now."""
    return (index is not None and index.get("plan_digest") == plan["digest"]
            and index.get("source_fingerprint") == source_fingerprint)


def claim_directory(out: Path, plan: dict, overwrite: bool, workdir: WorkDir, reporter: PrepareReporter,
                    source_fingerprint: str) -> dict | None:
    """Make ``out`` ready for ``plan`` (under the directory's lock: the processes of a run
    arrive together); returns the index if it is already fully prepared."""
    out.mkdir(parents=True, exist_ok=True)
    index_path, plan_path = out / INDEX, out / PLAN
    finished = _read_index(index_path)
    if _same_dataset(finished, plan, source_fingerprint):
        return finished   # read-only: taking the lock would leave .prepare/ in a finished dataset
    with workdir.locked(setting_up=True):
        if index_path.is_file():
            index = json.loads(index_path.read_text())
            if _same_dataset(index, plan, source_fingerprint):
                return index
            if not overwrite:
                raise DataError(f"{out} already holds a dataset prepared from another source or tokenizer",
                                "choose another --out, or pass --overwrite to replace it")
            _start_over(out, workdir)
        elif plan_path.is_file():
            try:
                previous = json.loads(plan_path.read_text()).get("digest")
            except ValueError:
                previous = None
            if previous == plan["digest"]:
                return None   # resuming, or joining the other processes of this run
            reporter.warn(f"{out} holds an unfinished preparation of another source, tokenizer or shard size "
                          "(or small files changed size, which moves part boundaries); starting over")
            _start_over(out, workdir)
        else:
            foreign = [p.name for p in out.iterdir() if p not in _our_files(out)]
            if foreign:
                raise DataError(f"{out} is not empty ({len(foreign)} other file(s), e.g. {sorted(foreign)[0]})",
                                "choose a new or empty --out directory")
        write_json_atomic(plan_path, plan)
    return None


# ---- the end: the index --------------------------------------------------------------------


def _partial_part(out: Path, part: int) -> list[ShardInfo]:
    """The complete, verified shards at the start of an unfinished part."""
    found: list[ShardInfo] = []
    while True:
        info = read_complete_shard(out, len(found), part_shard_stem(part, len(found)))
        if info is None:
            return found
        found.append(info)


def shards_in_dataset(workdir: WorkDir, parts: int, max_tokens: int | None) -> list[ShardInfo] | None:
    """The dataset's shards in corpus order, or None while a needed part is unfinished.

    Only parts this run wrote or re-verified count; the part the cut falls in may be
    unfinished, its shards up to the cut are verified here.
    """
    shards: list[ShardInfo] = []
    tokens = 0
    for part in range(parts):
        complete = workdir.read_part(part, this_run_only=True)
        candidates = complete if complete is not None else (_partial_part(workdir.out, part) if max_tokens else [])
        for info in candidates:
            shards.append(info)
            tokens += info.tokens
            if max_tokens is not None and tokens >= max_tokens:
                return shards
        if complete is None:
            return None
    return shards


def finalize(out: Path, workdir: WorkDir, plan: dict, parts: int, max_tokens: int | None, tokenizer: Tokenizer,
             source: DocumentSource) -> dict | None:
    """Write the index once every needed part is complete; None while some are not."""
    with workdir.locked():
        if workdir.index_exists():
            return json.loads((out / INDEX).read_text())
        shards = shards_in_dataset(workdir, parts, max_tokens)
        if shards is None:
            return None
        if sum(info.tokens for info in shards) == 0:
            raise DataError(f"{source.description.get('source')} contains no documents (every record is empty)",
                            "check the path and --text_field")
        keep = {info.name for info in shards}
        for path in out.iterdir():
            stem = path.name.split(".", 1)[0]
            if (path.name.startswith("shard_") and stem not in keep) or (path.name.startswith(".") and path.name.endswith(".tmp")):
                path.unlink(missing_ok=True)
        index = write_index(out, [info.renumbered(number) for number, info in enumerate(shards)], tokenizer,
                            source.description, extra={"plan_digest": plan["digest"], "tokenizer_spec": tokenizer.spec,
                                                       "source_fingerprint": source.fingerprint})
        workdir.remove_run_state()
    return index


# ---- the entry points ------------------------------------------------------------------------


def prepare(source: str, out: Path, *, tokenizer: Tokenizer | None = None, tokenizer_spec: str | None = None,
            workers: int | None = None, shard_chars: int = DEFAULT_SHARD_CHARS, overwrite: bool = False,
            run_id: str | None = None, reporter: PrepareReporter | None = None,
            batch_chars: int = DEFAULT_BATCH_CHARS, **source_options: Any) -> dict | None:
    """Tokenize ``source`` into shards under ``out``; returns the index, or None when other
    processes of run ``run_id`` are still preparing parts (one of them writes the index).
    Resumable; processes given the same ``run_id`` share the work."""
    tokenizer = tokenizer or load_tokenizer(tokenizer_spec)
    opened = open_source(source, **source_options)
    return prepare_opened(opened, Path(out), tokenizer, workers=workers, shard_chars=shard_chars,
                          overwrite=overwrite, max_tokens=max_tokens_option(source_options), run_id=run_id,
                          reporter=reporter, batch_chars=batch_chars, source_spec=source,
                          source_options=source_options)


def max_tokens_option(options: dict) -> int | None:
    value = options.get("max_tokens")
    return int(value) if value is not None else None


def prepare_opened(source: DocumentSource, out: Path, tokenizer: Tokenizer, *, workers: int | None,
                   shard_chars: int, overwrite: bool, max_tokens: int | None, run_id: str | None = None,
                   reporter: PrepareReporter | None = None, batch_chars: int = DEFAULT_BATCH_CHARS,
                   source_spec: str | None = None, source_options: dict | None = None) -> dict | None:
    reporter = reporter or PrepareReporter()
    if shard_chars < 1:
        raise DataError(f"shard size must be positive, got {shard_chars}", "pass e.g. --shard-mb 8")
    parts = source_parts(source, shard_chars)
    plan = make_plan(source, tokenizer, shard_chars, len(parts))
    options = dict(workers=workers, shard_chars=shard_chars, max_tokens=max_tokens, reporter=reporter,
                   batch_chars=batch_chars, source_spec=source_spec, source_options=source_options)
    finished = _read_index(Path(out) / INDEX)
    if overwrite and run_id is None and finished is not None and not _same_dataset(finished, plan, source.fingerprint):
        # The dataset there stays whole until its replacement is: a failed or interrupted
        # --overwrite leaves it as it was (and a re-run resumes the replacement).
        staging = Path(out).with_name(f".{Path(out).name}.replacing")
        index = _prepare(source, staging, tokenizer, parts, plan, overwrite=True, run_id=None, **options)
        if index is not None:
            _swap_in(staging, Path(out))
        return index
    return _prepare(source, out, tokenizer, parts, plan, overwrite=overwrite, run_id=run_id, **options)


def _swap_in(staging: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.replaced")
    if old.exists():
        shutil.rmtree(old)
    os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old)


def _prepare(source: DocumentSource, out: Path, tokenizer: Tokenizer, parts: list, plan: dict, *,
             workers: int | None, shard_chars: int, overwrite: bool, max_tokens: int | None, run_id: str | None,
             reporter: PrepareReporter, batch_chars: int, source_spec: str | None,
             source_options: dict | None) -> dict | None:
    workdir = WorkDir(out, run_id or f"local-{uuid.uuid4().hex[:12]}")
    done = claim_directory(out, plan, overwrite, workdir, reporter, source.fingerprint)
    if done is not None:
        reporter.note(f"{out} is already prepared ({done['num_tokens']:,} tokens)")
        return done
    job = NodeJob(out=str(out), run=workdir.run, parts=tuple(parts), shard_chars=shard_chars,
                  batch_chars=batch_chars, source=source_spec or str(source.description.get("source")),
                  source_options={k: v for k, v in (source_options or {}).items() if v is not None})
    run = NodeRun(job, tokenizer, max(1, workers or cpu_count()), max_tokens, opened_source=source,
                  report=lambda counters, final: reporter.progress(run_status(parts, counters, workdir, max_tokens,
                                                                              final)))
    run.run()
    last = run_status(parts, run.counters, workdir, max_tokens, final=True)
    index = finalize(out, workdir, plan, len(parts), max_tokens, tokenizer, source)
    if index is not None:
        reporter.progress(replace(last, parts_done=len(parts), tokens=int(index["num_tokens"]),
                                  input_bytes=last.total_bytes, eta_s=0.0, complete=True))
    return index


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
                               overwrite=False, max_tokens=max_tokens_option(options), source_spec=source,
                               source_options=options)
    return ShardSet(directory)

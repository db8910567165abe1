"""Where documents come from: local files, folders, globs, Hugging Face datasets, or
already prepared token shards.

A ``DocumentSource`` yields document texts in a fixed order and has a ``fingerprint`` that
changes when its content may have changed (paths, sizes, modification times; dataset
name/config/split), so caches and resumed preparations never mix two versions of a corpus.

Source options (``build_dataset(..., **options)`` and ``llamapod data prepare``):
``text_field`` (JSONL/Parquet/dataset column, default "text"), ``txt_document``
("file" | "paragraph" | "line": what a document is in a .txt file, default "file"),
``dataset_config_name``, ``dataset_split`` (default "train"), ``streaming``, ``data_files``,
``max_tokens`` (stop reading a source after about this many tokens), ``max_documents`` (only the
first N documents).
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from llamapod.data.pieces import Meter, Part, Piece, kind_of, plan_file_parts, read_piece
from llamapod.data.shards import ShardSet, is_shard_dir
from llamapod.data.tokenizer import digest_bytes
from llamapod.errors import DataError

TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.zst", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst", ".ndjson", ".ndjson.gz", ".ndjson.zst")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
TXT_DOCUMENTS = ("file", "paragraph", "line")
SOURCE_OPTIONS = ("text_field", "txt_document", "dataset_config_name", "dataset_split", "streaming",
                  "data_files", "max_tokens", "max_documents")


@dataclass
class SourceOptions:
    text_field: str = "text"
    txt_document: str = "file"
    dataset_config_name: str | None = None
    dataset_split: str = "train"
    streaming: bool = False
    data_files: str | list[str] | None = None
    max_tokens: int | None = None
    max_documents: int | None = None

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> "SourceOptions":
        unknown = sorted(set(options) - set(SOURCE_OPTIONS))
        if unknown:
            raise DataError(f"unknown source option(s): {', '.join(unknown)}",
                            "valid options: " + ", ".join(SOURCE_OPTIONS))
        parsed = cls(**{k: v for k, v in options.items() if v is not None})
        if parsed.txt_document not in TXT_DOCUMENTS:
            raise DataError(f"txt_document must be one of {', '.join(TXT_DOCUMENTS)}, got {parsed.txt_document!r}",
                            "use 'file' (one document per file), 'paragraph' or 'line'")
        if parsed.max_tokens is not None and int(parsed.max_tokens) < 1:
            raise DataError(f"max_tokens must be positive, got {parsed.max_tokens}", "omit it to read the whole source")
        if parsed.max_documents is not None and int(parsed.max_documents) < 1:
            raise DataError(f"max_documents must be positive, got {parsed.max_documents}",
                            "omit it to read every document")
        return parsed

    def key(self) -> dict:
        """The options that change which documents are produced."""
        return {"text_field": self.text_field, "txt_document": self.txt_document,
                "dataset_config_name": self.dataset_config_name, "dataset_split": self.dataset_split,
                "data_files": self.data_files, "max_tokens": self.max_tokens}


class MalformedRecords:
    """Counts bad records of one file so the error names how many and the first one."""

    def __init__(self, path: Path, unit: str) -> None:
        self.path, self.unit = path, unit
        self.count = 0
        self.first: tuple[int, str] | None = None

    def add(self, number: int, reason: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = (number, reason)

    def raise_if_any(self, hint: str) -> None:
        if self.count:
            number, reason = self.first
            raise DataError(f"{self.path}: {self.count} malformed record(s), first at {self.unit} {number}: {reason}", hint)


@dataclass
class DocumentSource(ABC):
    """Base: subclasses implement ``documents()``; ``consumed`` counts bytes read (progress)."""

    description: dict
    fingerprint: str
    total_bytes: int | None = None
    consumed: int = field(default=0, init=False)

    @abstractmethod
    def documents(self) -> Iterator[str]:
        """The source's documents, in a deterministic order."""


def _suffix_of(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(SUPPORTED, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


class FileSource(DocumentSource):
    """Local files, read in sorted order; ``parts()`` cuts them for parallel readers."""

    def __init__(self, label: str, files: list[Path], options: SourceOptions) -> None:
        stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        description = {"kind": "files", "source": label, "files": [str(p) for p in files], **options.key()}
        fingerprint = digest_bytes(json.dumps([stats, options.key()], sort_keys=True).encode())
        super().__init__(description, fingerprint, total_bytes=sum(s[1] for s in stats))
        self.files = files
        self.options = options

    def parts(self, part_bytes: int) -> list[Part]:
        return plan_file_parts(self.files, part_bytes)

    def documents(self) -> Iterator[str]:
        meter = Meter()
        for path in self.files:
            for text in read_piece(Piece(str(path), kind_of(path), path.stat().st_size), self.options, meter):
                self.consumed = meter.value
                yield text
            self.consumed = meter.value


class HFDatasetSource(DocumentSource):
    """A Hugging Face dataset: a hub name (streaming or not), a builder with ``data_files``,
    or a folder written by ``Dataset.save_to_disk``."""

    def __init__(self, name: str, options: SourceOptions, *, saved_folder: bool = False) -> None:
        self.name, self.options, self.saved_folder = name, options, saved_folder
        self.dataset = self._load()
        identity: Any = getattr(self.dataset, "_fingerprint", None)
        if saved_folder:
            identity = [identity, _folder_stats(Path(name))]
        elif identity is None and options.data_files is not None:
            identity = [_folder_stats(Path(f)) for f in _as_list(options.data_files)]
        description = {"kind": "huggingface-dataset", "source": name, "streaming": bool(options.streaming), **options.key()}
        fingerprint = digest_bytes(json.dumps([description, identity], sort_keys=True, default=str).encode())
        super().__init__(description, fingerprint, total_bytes=None)

    def _load(self):
        try:
            import datasets
        except ImportError:
            raise DataError(f"{self.name} is not a local file or folder, and Hugging Face datasets needs the `datasets` package",
                            "pip install 'llamapod[hf]', or pass local .txt/.jsonl/.parquet files") from None
        from llamapod.data.hub import hub_host, hub_reachable, use_local_cache_only

        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        if "torch" not in sys.modules:
            # We only iterate text records; without this, datasets imports torch (seconds)
            # just to share an epoch counter with torch DataLoader workers.
            datasets.config.TORCH_AVAILABLE = False
        if self.saved_folder:
            loaded = datasets.load_from_disk(self.name)
            if isinstance(loaded, datasets.DatasetDict):
                if self.options.dataset_split not in loaded:
                    raise DataError(f"{self.name} has no split {self.options.dataset_split!r} (splits: {', '.join(loaded)})",
                                    "pass --dataset_split with one of those")
                loaded = loaded[self.options.dataset_split]
            return self._check_column(loaded)
        local_builder = self.options.data_files is not None
        if not hub_reachable():
            use_local_cache_only()  # answer from the cache at once instead of retrying for half a minute
        try:
            loaded = datasets.load_dataset(self.name, self.options.dataset_config_name, split=self.options.dataset_split,  # nosec B615: the user names the dataset and its config, as in the reference script
                                           streaming=bool(self.options.streaming), data_files=self.options.data_files)
        except Exception as exc:  # datasets raises many unrelated types for "cannot load"
            if not local_builder and not hub_reachable():
                raise DataError(f"dataset {self.name!r} is not in the local Hugging Face cache and {hub_host()} is not reachable",
                                "run once where the hub is reachable (it is then cached), or pass local .txt/.jsonl/.parquet files") from None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"cannot load dataset {self.name!r}: {first[:240]}",
                            "check the name, --dataset_config_name and --dataset_split") from None
        return self._check_column(loaded)

    def _check_column(self, dataset):
        columns = getattr(dataset, "column_names", None)
        if columns is not None and self.options.text_field not in columns:
            raise DataError(f"dataset {self.name} has no column {self.options.text_field!r} (columns: {', '.join(columns)})",
                            "pass --text_field with the column that holds the text")
        return dataset

    def documents(self) -> Iterator[str]:
        field_name = self.options.text_field
        bad = MalformedRecords(Path(self.name), "record")
        for number, record in enumerate(self.dataset, start=1):
            value = record.get(field_name)
            if field_name not in record:
                bad.add(number, f"no {field_name!r} field")
            elif not isinstance(value, str):
                bad.add(number, f"{field_name!r} is not a string")
            elif value.strip():
                self.consumed += len(value)
                yield value
        bad.raise_if_any("drop those records, or pass --text_field with the column that holds the text")


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _folder_stats(path: Path) -> list:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def _supported_files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and _suffix_of(p) in SUPPORTED
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class FirstDocuments(DocumentSource):
    """The first ``limit`` documents of another source (the reference's ``--n_samples_*``)."""

    def __init__(self, inner: DocumentSource, limit: int) -> None:
        description = {**inner.description, "max_documents": limit}
        fingerprint = digest_bytes(inner.fingerprint.encode(), f"max_documents={limit}".encode())
        super().__init__(description, fingerprint, total_bytes=inner.total_bytes)
        self.inner, self.limit = inner, limit

    def documents(self) -> Iterator[str]:
        for number, text in enumerate(self.inner.documents()):
            if number >= self.limit:
                return
            self.consumed = self.inner.consumed
            yield text


def open_source(source: str, **options: Any) -> DocumentSource:
    """Resolve ``source`` to a DocumentSource (see the module docstring for the forms)."""
    parsed = SourceOptions.from_kwargs(options)
    opened = _open_source(source, parsed)
    if parsed.max_documents is not None:
        return FirstDocuments(opened, int(parsed.max_documents))
    return opened


def _open_source(source: str, parsed: SourceOptions) -> DocumentSource:
    path = Path(source).expanduser()
    if path.is_dir():
        if _is_saved_dataset(path):
            return HFDatasetSource(str(path), parsed, saved_folder=True)
        files = _supported_files_in(path)
        if not files:
            raise DataError(f"{path} holds no .txt, .jsonl or .parquet files",
                            "point at a folder of text files, a file, a glob, or prepared shards")
        return FileSource(source, files, parsed)
    if path.is_file():
        if _suffix_of(path) not in SUPPORTED:
            raise DataError(f"{path}: unsupported file type {_suffix_of(path) or '(none)'}",
                            "use .txt, .jsonl or .parquet files (.gz or .zst compressed: .jsonl.gz, .json.gz, .jsonl.zst)")
        return FileSource(source, [path], parsed)
    if glob.has_magic(source):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True)
                       if Path(p).is_file() and _suffix_of(Path(p)) in SUPPORTED)
        if not files:
            raise DataError(f"no .txt, .jsonl or .parquet files match {source}", "check the pattern (quote it in the shell)")
        return FileSource(source, files, parsed)
    if parsed.data_files is not None or (_HUB_NAME.match(source) and _suffix_of(path) not in SUPPORTED
                                         and not source.startswith((".", "~"))):
        return HFDatasetSource(source, parsed)
    if path.exists() or path.is_symlink():
        raise DataError(f"{source} is not a regular file or folder (a FIFO, a device, or a broken or looping symbolic "
                        f"link)", "pass a file, folder or glob of text files, or a Hugging Face dataset name")
    raise DataError(f"{source} does not exist", "pass an existing file, folder or glob, or a Hugging Face dataset name")


def shards_for_source(source: str, tokenizer, **options: Any) -> ShardSet:
    """Prepared shards as they are; any other source is tokenized once into the cache.
    (Source options describe raw sources; they are ignored for prepared shards.)"""
    path = Path(source).expanduser()
    if is_shard_dir(path):
        return ShardSet(path)
    if (path / "prepare.json").is_file():
        raise DataError(f"{path}: `llamapod data prepare` did not finish for this directory",
                        f"re-run the same `llamapod data prepare ... --out {path}`; it resumes where it stopped")
    from llamapod.data.prepare import cached_shards_for_raw_source

    return cached_shards_for_raw_source(source, tokenizer, **options)

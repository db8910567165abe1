"""Token shards: the on-disk format shared by ``data prepare``, the default corpus cache and
the loader.

A shard directory holds, per shard (its ``stem``: ``shard_<part>_<chunk>`` from ``data prepare``,
``shard_<k>`` from older versions and the default corpus):
- ``<stem>.tokens``: the documents' ids back to back (each [BOS] + ids + [EOS]), raw
  little-endian uint16 (vocabulary <= 65536) or uint32, memory-mapped by the loader;
- ``<stem>.docs``: uint64 start offsets of the documents in that shard, plus the end,
  so document boundaries survive (validation split by whole documents, boundary masks);
- ``<stem>.json``: the shard's manifest (counts, sha256 of both files), written after
  both files are renamed into place: a shard without its manifest is incomplete.
``index.json`` is written last, once every shard is complete, and lists the shards in
corpus order; a directory without it is not a dataset. Every file is written under a
temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from llamapod.data.atomic import write_bytes_atomic, write_json_atomic
from llamapod.errors import DataError

FORMAT = "llamapod-token-shards"
VERSION = 1
INDEX = "index.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def shard_stem(number: int) -> str:
    return f"shard_{number:05d}"


def part_shard_stem(part: int, chunk: int) -> str:
    """Shard ``chunk`` of corpus part ``part``: names sort in corpus order."""
    return f"shard_{part:06d}_{chunk:05d}"


def part_shard_pattern(part: int) -> str:
    """A glob for every file of every shard of ``part``."""
    return f"shard_{part:06d}_*"


@dataclass(frozen=True)
class ShardInfo:
    number: int               # position in the dataset (the index lists shards in this order)
    tokens: int
    documents: int
    tokens_sha256: str
    docs_sha256: str
    name: str | None = None   # file stem; None: shard_<number>

    @property
    def stem(self) -> str:
        return self.name or shard_stem(self.number)

    def to_dict(self) -> dict:
        d = {"number": self.number, "tokens": self.tokens, "documents": self.documents,
             "tokens_sha256": self.tokens_sha256, "docs_sha256": self.docs_sha256}
        if self.name is not None:
            d["name"] = self.name
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ShardInfo":
        return cls(int(d["number"]), int(d["tokens"]), int(d["documents"]),
                   str(d["tokens_sha256"]), str(d["docs_sha256"]), d.get("name"))

    def renumbered(self, number: int) -> "ShardInfo":
        return ShardInfo(number, self.tokens, self.documents, self.tokens_sha256, self.docs_sha256, self.name)


def pack_documents(token_lists: Sequence[Sequence[int]], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate already-wrapped documents; returns (tokens, start offsets + end)."""
    lengths = np.fromiter((len(t) for t in token_lists), dtype=np.uint64, count=len(token_lists))
    offsets = np.zeros(len(token_lists) + 1, dtype="<u8")
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.empty(int(offsets[-1]), dtype=dtype)
    for ids, start, end in zip(token_lists, offsets[:-1], offsets[1:]):
        tokens[int(start):int(end)] = ids
    return tokens, offsets


def check_vocabulary(tokens: np.ndarray, vocab_size: int) -> None:
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise DataError(f"token id {int(tokens.max())} is beyond the vocabulary ({vocab_size} ids)",
                        "the tokenizer's vocab_size is wrong; use the tokenizer's own files")


def write_shard(directory: Path, number: int, token_lists: Sequence[Sequence[int]], vocab_size: int) -> ShardInfo:
    """Write one complete shard ``shard_<number>`` (tokens, offsets, then its manifest)."""
    tokens, offsets = pack_documents(token_lists, token_dtype(vocab_size))
    check_vocabulary(tokens, vocab_size)
    return write_shard_arrays(directory, number, None, tokens, offsets)


def write_shard_arrays(directory: Path, number: int, name: str | None, tokens: np.ndarray,
                       offsets: np.ndarray) -> ShardInfo:
    """Write a shard from its packed tokens and document offsets (start of each, then the end)."""
    token_bytes, doc_bytes = tokens.tobytes(), np.asarray(offsets, dtype="<u8").tobytes()
    info = ShardInfo(number, int(tokens.size), len(offsets) - 1, hashlib.sha256(token_bytes).hexdigest(),
                     hashlib.sha256(doc_bytes).hexdigest(), name)
    # No fsync per shard: a resumed run re-verifies both checksums before trusting a shard.
    write_bytes_atomic(directory / f"{info.stem}.tokens", token_bytes, durable=False)
    write_bytes_atomic(directory / f"{info.stem}.docs", doc_bytes, durable=False)
    write_json_atomic(directory / f"{info.stem}.json", info.to_dict())
    return info


def read_complete_shard(directory: Path, number: int, name: str | None = None) -> ShardInfo | None:
    """The shard's manifest if the shard is complete and intact on disk, else None."""
    stem = name or shard_stem(number)
    manifest = directory / f"{stem}.json"
    try:
        info = ShardInfo.from_dict(json.loads(manifest.read_text()))
    except (OSError, ValueError, KeyError):
        return None
    tokens_path, docs_path = directory / f"{stem}.tokens", directory / f"{stem}.docs"
    if not tokens_path.exists() or not docs_path.exists():
        return None
    if docs_path.stat().st_size != 8 * (info.documents + 1):
        return None
    if hashlib.sha256(tokens_path.read_bytes()).hexdigest() != info.tokens_sha256:
        return None
    if hashlib.sha256(docs_path.read_bytes()).hexdigest() != info.docs_sha256:
        return None
    return info


def write_index(directory: Path, shards: Sequence[ShardInfo], tokenizer, source: dict, extra: dict | None = None) -> dict:
    index = {
        **(extra or {}),
        "format": FORMAT,
        "version": VERSION,
        "dtype": token_dtype(tokenizer.vocab_size).str,
        "tokenizer": tokenizer.describe(),
        "source": source,
        "num_tokens": sum(s.tokens for s in shards),
        "num_documents": sum(s.documents for s in shards),
        "shards": [s.to_dict() for s in shards],
    }
    write_json_atomic(directory / INDEX, index)
    return index


def is_shard_dir(path: Path) -> bool:
    return (path / INDEX).is_file()


class ShardSet:
    """A prepared shard directory opened read-only: memory-maps, no token is copied."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        index_path = self.directory / INDEX
        if self.directory.exists() and not self.directory.is_dir():
            raise DataError(f"{self.directory} is a file, not a prepared dataset folder",
                            "pass the folder given to `llamapod data prepare --out`")
        if index_path.exists() and not index_path.is_file():
            raise DataError(f"{index_path} is not a regular file", "re-run `llamapod data prepare` for this directory")
        try:
            self.index = json.loads(index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{self.directory} has no {INDEX}: it is not a prepared dataset (or preparation did not finish)",
                            f"run `llamapod data prepare SOURCE --out {self.directory}` (it resumes where it stopped)") from None
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            raise DataError(f"{index_path} is not valid JSON", "re-run `llamapod data prepare` for this directory") from None
        if not isinstance(self.index, dict):
            raise DataError(f"{index_path} is not a dataset index (it holds no JSON object)",
                            "re-run `llamapod data prepare` for this directory")
        written = self.index.get("format"), self.index.get("version")
        if written[0] == FORMAT and isinstance(written[1], int) and written[1] > VERSION:
            raise DataError(f"{self.directory} was prepared by a newer llamapod (index version {written[1]}, "
                            f"this one reads {VERSION})", "upgrade llamapod, or prepare the data again with this one")
        if written != (FORMAT, VERSION):
            raise DataError(f"{self.directory} is not a llamapod token shard directory (format {self.index.get('format')!r})",
                            "prepare it with `llamapod data prepare`")
        try:
            self.dtype = np.dtype(self.index["dtype"])
            self.shards = [ShardInfo.from_dict(d) for d in self.index["shards"]]
            if not isinstance(self.index.get("tokenizer"), dict):
                raise TypeError("'tokenizer' is not an object")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"{index_path} is damaged: {type(exc).__name__}: {exc}",
                            "re-run `llamapod data prepare` for this directory") from None
        self._tokens: list[np.ndarray] = []
        self._offsets: list[np.ndarray] = []
        for info in self.shards:
            self._tokens.append(self._map(f"{info.stem}.tokens", self.dtype, info.tokens))
            self._offsets.append(self._map(f"{info.stem}.docs", np.dtype("<u8"), info.documents + 1))

    def _map(self, name: str, dtype: np.dtype, count: int) -> np.ndarray:
        path = self.directory / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise DataError(f"shard file {path} is missing", "re-run `llamapod data prepare` for this directory") from None
        if size != count * dtype.itemsize:
            raise DataError(f"shard file {path} has {size} bytes, the index says {count * dtype.itemsize}",
                            "the directory was modified after preparation; re-run `llamapod data prepare`")
        if count == 0:
            return np.zeros(0, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=(count,))

    @property
    def tokenizer_info(self) -> dict:
        return self.index["tokenizer"]

    @property
    def num_tokens(self) -> int:
        return int(self.index["num_tokens"])

    @property
    def num_documents(self) -> int:
        return int(self.index["num_documents"])

    def tokens(self, shard: int) -> np.ndarray:
        return self._tokens[shard]

    def offsets(self, shard: int) -> np.ndarray:
        return self._offsets[shard]

    def check_tokenizer(self, tokenizer) -> None:
        recorded = self.tokenizer_info
        if recorded.get("fingerprint") != tokenizer.fingerprint:
            raise DataError(f"{self.directory} was tokenized with {recorded.get('name')}, not with the configured tokenizer {tokenizer.name}",
                            f"pass --tokenizer matching the shards, or re-run `llamapod data prepare` with --tokenizer {tokenizer.label}")

    def document(self, global_index: int) -> np.ndarray:
        """One document's ids (for `data inspect`)."""
        for number, info in enumerate(self.shards):
            if global_index < info.documents:
                offsets = self._offsets[number]
                return np.asarray(self._tokens[number][int(offsets[global_index]):int(offsets[global_index + 1])])
            global_index -= info.documents
        raise IndexError(global_index)

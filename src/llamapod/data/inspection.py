"""``llamapod data inspect``: what a shard directory holds, and a decoded sample."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from llamapod.data.shards import ShardSet
from llamapod.data.tokenizer import Tokenizer, load_tokenizer
from llamapod.errors import DataError


def verify_checksums(shards: ShardSet) -> None:
    for info in shards.shards:
        for suffix, expected in ((".tokens", info.tokens_sha256), (".docs", info.docs_sha256)):
            path = shards.directory / f"{info.stem}{suffix}"
            if hashlib.sha256(path.read_bytes()).hexdigest() != expected:
                raise DataError(f"{path} does not match its checksum: the file was modified or damaged",
                                "re-run `llamapod data prepare` into a new directory")


def tokenizer_for(shards: ShardSet, spec: str | None) -> Tokenizer | None:
    """The tokenizer to decode with: ``spec`` if given (it must match the shards), else the
    one recorded at preparation; None (with a warning) if that one cannot be loaded here."""
    if spec is None:
        recorded = shards.index.get("tokenizer_spec")
        try:
            tokenizer = load_tokenizer(recorded)
            shards.check_tokenizer(tokenizer)
        except DataError as exc:
            from llamapod import report

            report.warn(f"cannot decode with the recorded tokenizer ({exc.message}); showing token ids")
            return None
        return tokenizer
    tokenizer = load_tokenizer(spec)
    shards.check_tokenizer(tokenizer)
    return tokenizer


def inspect_shards(directory: Path, *, tokenizer_spec: str | None, document: int, sample_tokens: int,
                   verify: bool) -> dict:
    shards = ShardSet(Path(directory))
    if verify:
        verify_checksums(shards)
    if document >= shards.num_documents:
        raise DataError(f"document {document} does not exist: {directory} holds {shards.num_documents} documents",
                        f"pass --document between 0 and {shards.num_documents - 1}")
    # Shard by shard: a corpus of billions of documents never needs all offsets in memory.
    longest = max((int(np.diff(np.asarray(shards.offsets(i), dtype=np.int64)).max(initial=0))
                   for i in range(len(shards.shards))), default=0)
    ids = shards.document(document)[:sample_tokens].tolist()
    tokenizer = tokenizer_for(shards, tokenizer_spec)
    info = shards.tokenizer_info
    source = shards.index.get("source", {})
    return {
        "directory": str(shards.directory),
        "tokenizer": info["name"],
        "vocab_size": info["vocab_size"],
        "dtype": "uint16" if shards.dtype.itemsize == 2 else "uint32",
        "source": str(source.get("source", source.get("kind", "?"))),
        "shards": len(shards.shards),
        "documents": shards.num_documents,
        "tokens": shards.num_tokens,
        "mean_document_tokens": shards.num_tokens / max(shards.num_documents, 1),
        "max_document_tokens": longest,
        "bytes": sum(p.stat().st_size for p in shards.directory.iterdir() if p.is_file()),
        "sample_ids": ids,
        "sample_text": tokenizer.decode(ids) if tokenizer is not None else None,
    }

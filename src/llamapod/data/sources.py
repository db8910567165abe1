"""Resolving a ``source`` string to token shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamapod.data.shards import ShardSet, is_shard_dir


def shards_for_source(source: str, tokenizer, **options: Any) -> ShardSet:
    path = Path(source).expanduser()
    if is_shard_dir(path):
        return ShardSet(path)
    from llamapod.data.prepare import cached_shards_for_raw_source

    return cached_shards_for_raw_source(source, tokenizer, **options)

"""Tokenizers, corpora and packed, rank-sharded datasets (numpy only, never torch).

The trainer uses exactly ``load_tokenizer`` and ``build_dataset`` (see docs/data.md).
"""

from llamapod.data.dataset import PackedDataset, build_dataset, document_segments
from llamapod.data.tokenizer import Tokenizer, load_tokenizer

__all__ = ["PackedDataset", "Tokenizer", "build_dataset", "document_segments", "load_tokenizer"]

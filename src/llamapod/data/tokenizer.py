"""Tokenizers behind one small interface (the Trainer <-> Data contract).

Every format keeps its own BOS/EOS convention (``add_bos``: whether a document starts
with BOS when packed) and a ``fingerprint`` of its vocabulary files, so shards and
checkpoints can refuse a different tokenizer even when it has the same file name.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

from llamapod.errors import DataError


def digest_bytes(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(len(chunk).to_bytes(8, "little"))
        h.update(chunk)
    return h.hexdigest()


def vocabulary_fingerprint(tokens_by_id: Sequence[str]) -> str:
    """Identity from the vocabulary itself, so one tokenizer loaded through different routes
    (tokenizer.json, its folder via transformers, a hub id) is recognised as the same."""
    return digest_bytes(json.dumps(list(tokens_by_id), ensure_ascii=False).encode())


def tokens_by_id(vocab: dict[str, int]) -> list[str]:
    return [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]


# Bumped whenever the ids produced for the same text and tokenizer change, so caches rebuild.
# 2: special-token spellings inside text are encoded as text.
ENCODING_VERSION = 2


class Tokenizer(ABC):
    """Text <-> token ids. ``encode`` never adds BOS/EOS; packing adds them per document."""

    kind: str = "tokenizer"
    # The spec it was loaded from ("default" = built-in; None = unknown): worker processes reload it.
    spec: str | None = None

    def __init__(self, *, label: str, fingerprint: str, vocab_size: int, bos_id: int | None,
                 eos_id: int, add_bos: bool) -> None:
        self.label = label
        self.fingerprint = fingerprint
        self.vocab_size = vocab_size
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.add_bos = add_bos and bos_id is not None

    @property
    def name(self) -> str:
        """Stable identity recorded in shards and checkpoints: readable label + content digest."""
        return f"{self.label}@{self.fingerprint[:12]}"

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    def save_files(self, directory: Path) -> list[Path]:
        return []

    def document_ids(self, ids: list[int]) -> list[int]:
        """One document's ids as packed into the stream: [BOS] + ids + [EOS]."""
        prefix = [self.bos_id] if self.add_bos else []
        return prefix + ids + [self.eos_id]

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "fingerprint": self.fingerprint,
                "vocab_size": self.vocab_size, "bos_id": self.bos_id, "eos_id": self.eos_id,
                "add_bos": self.add_bos, "encoding": ENCODING_VERSION}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} vocab={self.vocab_size}>"


# Special-token spellings tried in order when a tokenizer.json does not say which is which.
BOS_CANDIDATES = ("<|begin_of_text|>", "<s>", "<|startoftext|>", "[BOS]", "<bos>", "<|bos|>")
EOS_CANDIDATES = ("<|end_of_text|>", "</s>", "<|endoftext|>", "[EOS]", "<eos>", "<|eos|>")


class HFJsonTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json`` driven by the Rust ``tokenizers`` library."""

    kind = "tokenizer.json"

    def __init__(self, raw, *, label: str, fingerprint: str, bos_token: str | None = None,
                 eos_token: str | None = None, add_bos: bool | None = None) -> None:
        # "</s>" in an HTML page or "<|endoftext|>" in a code file is text, not a document
        # boundary: only packing inserts control tokens.
        raw.encode_special_tokens = True
        self._tok = raw
        vocab = raw.get_vocab(with_added_tokens=True)
        bos_id = _special_id(vocab, bos_token, BOS_CANDIDATES)
        eos_id = _special_id(vocab, eos_token, EOS_CANDIDATES)
        if eos_id is None:
            raise DataError(f"tokenizer {label} has no end-of-text token",
                            "add one of " + ", ".join(EOS_CANDIDATES) + " as a special token")
        if add_bos is None:
            # Follow the tokenizer's own post-processor: BOS per document only if it adds one.
            probe = raw.encode("a", add_special_tokens=True).ids
            add_bos = bos_id is not None and bos_id != eos_id and bool(probe) and probe[0] == bos_id
        super().__init__(label=label, fingerprint=fingerprint, vocab_size=raw.get_vocab_size(with_added_tokens=True),
                         bos_id=bos_id, eos_id=eos_id, add_bos=add_bos)

    @classmethod
    def from_file(cls, path: Path, **conventions) -> "HFJsonTokenizer":
        from tokenizers import Tokenizer as RawTokenizer

        data = path.read_bytes()
        try:
            raw = RawTokenizer.from_str(data.decode("utf-8"))
        except Exception as exc:  # the Rust library raises plain Exception subclasses
            raise DataError(f"{path} is not a valid tokenizer.json: {str(exc).splitlines()[0]}",
                            "pass a tokenizer.json written by Hugging Face tokenizers") from None
        label = path.parent.name if path.name == "tokenizer.json" and path.parent.name else path.stem
        fingerprint = vocabulary_fingerprint(tokens_by_id(raw.get_vocab(with_added_tokens=True)))
        return cls(raw, label=label, fingerprint=fingerprint, **conventions)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # encode_batch_fast skips offset tracking, which we never use (~30% faster).
        encodings = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def save_files(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        json_path = directory / "tokenizer.json"
        self._tok.save(str(json_path))
        config = {"tokenizer_class": "PreTrainedTokenizerFast",
                  "bos_token": self._tok.id_to_token(self.bos_id) if self.bos_id is not None else None,
                  "eos_token": self._tok.id_to_token(self.eos_id),
                  "model_max_length": 1_000_000_000}
        config_path = directory / "tokenizer_config.json"
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        return [json_path, config_path]


def _special_id(vocab: dict[str, int], explicit: str | None, candidates: tuple[str, ...]) -> int | None:
    if explicit is not None:
        return vocab.get(explicit)
    for token in candidates:
        if token in vocab:
            return vocab[token]
    return None


def load_tokenizer(spec: str | None = None) -> Tokenizer:
    """``None`` = the built-in default; otherwise a file, a folder, or a Hugging Face hub id."""
    if spec is None or spec in ("", "default", "builtin"):
        from llamapod.data.default import default_tokenizer

        return default_tokenizer()
    from llamapod.data.formats import load_tokenizer_spec

    tokenizer = load_tokenizer_spec(spec)
    tokenizer.spec = spec
    return tokenizer

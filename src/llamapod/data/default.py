"""The built-in corpus and tokenizer: usable on any machine, without a download.

The corpus is a bounded, deterministic subset of the running interpreter's standard-library
``*.py`` sources (one document per file). The tokenizer is a byte-level BPE trained once on
that corpus with Hugging Face ``tokenizers``; both it and the tokenized corpus are cached
under ``llamapod.paths.cache_dir()``, keyed by the corpus content and the settings, so a
different interpreter gets its own cache and a second run starts in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from llamapod import paths
from llamapod.data.atomic import file_lock, staged_directory, write_bytes_atomic
from llamapod.data.shards import ShardSet, is_shard_dir, write_index, write_shard
from llamapod.data.tokenizer import HFJsonTokenizer, Tokenizer, digest_bytes
from llamapod.errors import DataError

# ~6 MB of source gives ~1.6M tokens: several epochs' worth for a few-minute CPU run, and
# the first build (BPE training + encoding) stays well under 30 s on 2 cores.
CORPUS_CHARS = 6_000_000
MAX_FILE_BYTES = 200_000          # skip generated giants (e.g. pydoc topics) that are mostly one string
EXCLUDED_PARTS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo",
                  "__pycache__", "encodings", "pydoc_data"}
VOCAB_SIZE = 8192
BOS_TOKEN = "<|begin_of_text|>"  # nosec B105: a tokenizer's special token, not a password
EOS_TOKEN = "<|end_of_text|>"  # nosec B105: a tokenizer's special token, not a password
TOKENIZER_SETTINGS = {"model": "byte-level-bpe", "vocab_size": VOCAB_SIZE, "special_tokens": [BOS_TOKEN, EOS_TOKEN],
                      "min_frequency": 2, "layout": 1}


@dataclass(frozen=True)
class Corpus:
    root: Path
    names: tuple[str, ...]          # paths relative to root, in document order
    texts: tuple[str, ...]
    digest: str                     # content digest: names and texts


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _candidate_files(root: Path) -> list[Path]:
    files = []
    # os.walk with pruning: site-packages (torch & co.) sits under the stdlib directory and
    # would otherwise dominate the scan time.
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_PARTS]
        for filename in filenames:
            if not filename.endswith(".py"):
                continue
            path = Path(dirpath, filename)
            if path.is_file() and path.stat().st_size <= MAX_FILE_BYTES:
                files.append(path.relative_to(root))
    return files


@lru_cache(maxsize=2)
def default_corpus(chars: int = CORPUS_CHARS) -> Corpus:
    """A deterministic subset of the stdlib sources: files are taken in the order of a
    hash of their path (a spread over the whole library, not just modules a-f) until
    ``chars`` characters, then kept in path order."""
    root = stdlib_root()
    candidates = sorted(_candidate_files(root), key=lambda rel: hashlib.sha256(rel.as_posix().encode()).digest())
    chosen: list[tuple[str, str]] = []
    total = 0
    for rel in candidates:
        text = (root / rel).read_bytes().decode("utf-8", errors="replace")
        if not text.strip():
            continue
        chosen.append((rel.as_posix(), text))
        total += len(text)
        if total >= chars:
            break
    if not chosen:
        raise DataError(f"no Python sources found under {root} for the default corpus",
                        "pass --dataset with your own text files")
    chosen.sort()
    names = tuple(name for name, _ in chosen)
    texts = tuple(text for _, text in chosen)
    digest = digest_bytes(*(n.encode() for n in names), *(t.encode() for t in texts))
    return Corpus(root, names, texts, digest)


def default_cache_root() -> Path:
    return paths.cache_dir() / "data"


def _tokenizer_key(corpus: Corpus) -> str:
    import tokenizers

    settings = dict(TOKENIZER_SETTINGS, tokenizers=tokenizers.__version__)
    return digest_bytes(corpus.digest.encode(), json.dumps(settings, sort_keys=True).encode())[:16]


def train_default_tokenizer_json(corpus: Corpus) -> str:
    from tokenizers import Tokenizer as RawTokenizer, decoders, models, pre_tokenizers, trainers

    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=TOKENIZER_SETTINGS["min_frequency"],
                                  special_tokens=[BOS_TOKEN, EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(corpus.texts, trainer, length=len(corpus.texts))
    return raw.to_str()


def default_tokenizer_path() -> Path:
    """The cached tokenizer.json, trained on first use (once, even with several ranks)."""
    corpus = default_corpus()
    path = default_cache_root() / f"tokenizer-{_tokenizer_key(corpus)}" / "tokenizer.json"
    if path.is_file():
        return path
    with file_lock(default_cache_root() / ".tokenizer.lock"):
        if not path.is_file():
            from llamapod import report

            report.step(f"training the default tokenizer ({VOCAB_SIZE} BPE tokens) on {len(corpus.names)} "
                    f"standard-library files (once; cached in {path.parent})")
            write_bytes_atomic(path, train_default_tokenizer_json(corpus).encode())
    return path


@lru_cache(maxsize=1)
def _default_tokenizer_cached(path: str) -> Tokenizer:
    tok = HFJsonTokenizer.from_file(Path(path), bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, add_bos=True)
    tok.label = "llamapod-default-bpe8k"
    tok.spec = "default"
    return tok


def default_tokenizer() -> Tokenizer:
    path = default_tokenizer_path()
    try:
        return _default_tokenizer_cached(str(path))
    except DataError:
        # A cache: a damaged copy is trained again, never a reason to stop.
        with file_lock(default_cache_root() / ".tokenizer.lock"):
            try:
                return _default_tokenizer_cached(str(path))
            except DataError:
                from llamapod import report

                report.warn(f"the cached default tokenizer {path} is damaged: training it again")
                path.unlink()
        return _default_tokenizer_cached(str(default_tokenizer_path()))


def default_corpus_shards(tokenizer: Tokenizer) -> ShardSet:
    """The default corpus tokenized with ``tokenizer`` (any tokenizer, not just the default),
    cached as shards keyed by corpus and tokenizer."""
    corpus = default_corpus()
    key = digest_bytes(corpus.digest.encode(), json.dumps(tokenizer.describe(), sort_keys=True).encode())[:16]
    directory = default_cache_root() / f"default-corpus-{key}"
    if is_shard_dir(directory):
        try:
            return ShardSet(directory)
        except DataError:
            pass  # damaged: rebuilt below
    with file_lock(default_cache_root() / ".corpus.lock"):
        if is_shard_dir(directory):
            try:
                return ShardSet(directory)
            except DataError:
                from llamapod import report

                report.warn(f"the cached default corpus {directory} is damaged: tokenizing it again")
                shutil.rmtree(directory)
        _build_default_shards(corpus, tokenizer, directory)
    return ShardSet(directory)


def _build_default_shards(corpus: Corpus, tokenizer: Tokenizer, directory: Path) -> None:
    from llamapod import report

    report.step(f"tokenizing the default corpus ({len(corpus.texts)} files, {sum(map(len, corpus.texts)) / 1e6:.1f} MB) "
            f"with {tokenizer.name} (once; cached in {directory})")
    with staged_directory(directory) as staging:
        documents = [tokenizer.document_ids(ids) for ids in tokenizer.encode_batch(corpus.texts)]
        info = write_shard(staging, 0, documents, tokenizer.vocab_size)
        source = {"kind": "default-corpus", "root": str(corpus.root), "documents": list(corpus.names),
                  "digest": corpus.digest}
        write_index(staging, [info], tokenizer, source, extra={"tokenizer_spec": tokenizer.spec})

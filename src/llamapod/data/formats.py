"""Loading a tokenizer from a user's spec: a file, a folder or a Hugging Face hub id.

| spec                                   | loaded with              | BOS/EOS convention            |
|----------------------------------------|--------------------------|-------------------------------|
| ``tokenizer.json`` (or any ``*.json``) | ``tokenizers``           | BOS if its post-processor adds one |
| SentencePiece ``*.model`` (Llama 2)    | ``sentencepiece``        | BOS per document, EOS after   |
| tiktoken BPE file (Llama 3 ``tokenizer.model``, ``*.tiktoken``) | ``tiktoken`` | <|begin_of_text|> ... <|end_of_text|> |
| folder with tokenizer.json / .model    | as the file, with tokenizer_config.json's bos/eos | as configured |
| other folder, or a hub id              | ``transformers.AutoTokenizer`` | whether it adds BOS itself |

A Llama 3 ``tokenizer.model`` is a text file of ``base64-token rank`` lines while a Llama 2
one is a SentencePiece protobuf, so ``*.model`` files are told apart by content.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path
from typing import Sequence

from llamapod.data.tokenizer import HFJsonTokenizer, Tokenizer, digest_bytes, tokens_by_id, vocabulary_fingerprint
from llamapod.errors import DataError

# Llama 3's pre-tokenizer split pattern and special tokens (Meta's reference tokenizer).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_RESERVED_SPECIALS = 256


def llama3_special_tokens() -> list[str]:
    named = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
             "<|reserved_special_token_2|>", "<|reserved_special_token_3|>", "<|start_header_id|>",
             "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    return named + [f"<|reserved_special_token_{i}|>" for i in range(5, LLAMA3_RESERVED_SPECIALS - 5)]


def _label(path: Path) -> str:
    generic = {"tokenizer.json", "tokenizer.model"}
    return path.parent.name if path.name in generic and path.parent.name else path.name


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (the Llama 2 ``tokenizer.model``)."""

    kind = "sentencepiece"

    def __init__(self, path: Path) -> None:
        import sentencepiece

        data = path.read_bytes()
        self._path = path
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(data)
        except Exception:  # sentencepiece raises RuntimeError/OSError depending on version
            raise DataError(f"{path} is neither a SentencePiece model nor a tiktoken BPE file",
                            "pass a tokenizer.model (SentencePiece or Llama 3), a tokenizer.json or a folder") from None
        bos, eos = self._sp.bos_id(), self._sp.eos_id()
        if eos < 0:
            raise DataError(f"SentencePiece model {path} has no end-of-sentence id",
                            "train it with --eos_id set (the default is 2)")
        pieces = [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]
        super().__init__(label=_label(path), fingerprint=vocabulary_fingerprint(pieces), vocab_size=len(pieces),
                         bos_id=bos if bos >= 0 else None, eos_id=eos, add_bos=True)

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts), num_threads=1)

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def save_files(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        model = directory / "tokenizer.model"
        model.write_bytes(self._path.read_bytes())
        config = directory / "tokenizer_config.json"
        config.write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True,  # nosec B105: tokenizer settings written to tokenizer_config.json, not a password
                                      "add_eos_token": False, "bos_token": self._sp.id_to_piece(self.bos_id) if self.bos_id is not None else None,  # nosec B105: tokenizer settings written to tokenizer_config.json, not a password
                                      "eos_token": self._sp.id_to_piece(self.eos_id)}, indent=2) + "\n")
        return [model, config]


def _parse_tiktoken_ranks(path: Path, data: bytes) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    bad: list[int] = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            ranks[base64.b64decode(parts[0], validate=True)] = int(parts[1])
        except (ValueError, binascii.Error):
            bad.append(number)
    if bad:
        raise DataError(f"{path}: {len(bad)} malformed line(s) in a tiktoken BPE file, first at line {bad[0]}",
                        "each line must be '<base64 token> <rank>'")
    return ranks


class TiktokenTokenizer(Tokenizer):
    """A tiktoken BPE file with Llama 3's split pattern and special tokens."""

    kind = "tiktoken"

    def __init__(self, path: Path) -> None:
        import tiktoken

        data = path.read_bytes()
        ranks = _parse_tiktoken_ranks(path, data)
        base = len(ranks)
        specials = {token: base + i for i, token in enumerate(llama3_special_tokens())}
        self._path = path
        self._enc = tiktoken.Encoding(name=path.name, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                                      special_tokens=specials)
        super().__init__(label=_label(path), fingerprint=digest_bytes(data), vocab_size=self._enc.n_vocab,
                         bos_id=specials["<|begin_of_text|>"], eos_id=specials["<|end_of_text|>"], add_bos=True)

    def encode(self, text: str) -> list[int]:
        # Ordinary encoding: special-token spellings inside a corpus are plain text, never control tokens.
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self._enc.encode_ordinary(text) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode([int(i) for i in ids])

    def save_files(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / "tokenizer.model"
        target.write_bytes(self._path.read_bytes())
        return [target]


class TransformersTokenizer(Tokenizer):
    """Anything ``transformers.AutoTokenizer`` can load: a local folder or a hub id."""

    kind = "transformers"

    def __init__(self, tok, label: str) -> None:
        self._tok = tok
        vocab = tok.get_vocab()
        if tok.eos_token_id is None:
            raise DataError(f"tokenizer {label} has no eos_token", "set eos_token in its tokenizer_config.json")
        fingerprint = vocabulary_fingerprint(tokens_by_id(vocab))
        bos = tok.bos_token_id
        probe = tok.encode("a", add_special_tokens=True)
        add_bos = bos is not None and bos != tok.eos_token_id and bool(probe) and probe[0] == bos
        super().__init__(label=label, fingerprint=fingerprint, vocab_size=len(tok), bos_id=bos,
                         eos_id=tok.eos_token_id, add_bos=add_bos)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False, split_special_tokens=True)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._tok(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def save_files(self, directory: Path) -> list[Path]:
        return [Path(p) for p in self._tok.save_pretrained(str(directory))]


def _is_tiktoken_file(data: bytes) -> bool:
    first = data[:512].split(b"\n", 1)[0].strip()
    return bool(re.fullmatch(rb"[A-Za-z0-9+/=]+ \d+", first))


def load_file(path: Path) -> Tokenizer:
    if path.suffix == ".json":
        return HFJsonTokenizer.from_file(path, **_json_conventions(path.parent / "tokenizer_config.json"))
    with open(path, "rb") as handle:
        head = handle.read(512)
    if path.suffix == ".tiktoken" or _is_tiktoken_file(head):
        return TiktokenTokenizer(path)
    return SentencePieceTokenizer(path)


def _json_conventions(config_path: Path) -> dict:
    """bos/eos spellings from a sibling tokenizer_config.json, if there is one."""
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return {}
    conventions = {}
    for key in ("bos_token", "eos_token"):
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            conventions[key] = value
    if isinstance(config.get("add_bos_token"), bool):
        conventions["add_bos"] = config["add_bos_token"]
    return conventions


def _transformers_available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def load_folder(path: Path) -> Tokenizer:
    """A Hugging Face tokenizer folder. tokenizer.json / tokenizer.model are read directly
    (fast, and no torch import); other layouts (vocab.json + merges.txt, ...) need transformers."""
    for name in ("tokenizer.json", "tokenizer.model"):
        if (path / name).is_file():
            tokenizer = load_file(path / name)
            tokenizer.label = path.name
            return tokenizer
    # transformers' own message for a folder without any of them names no file ("Couldn't
    # instantiate the backend tokenizer from one of: ...").
    other_layouts = ("tokenizer_config.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model")
    if _transformers_available() and any((path / name).is_file() for name in other_layouts):
        return load_with_transformers(str(path), label=path.name, local=True)
    raise DataError(f"no tokenizer.json or tokenizer.model in {path}",
                    "pass the tokenizer file itself, or pip install 'llamapod[hf]' for other layouts")


def load_with_transformers(spec: str, *, label: str, local: bool) -> Tokenizer:
    if not _transformers_available():
        raise DataError(f"tokenizer {spec!r} is not a local file or folder, and loading hub ids needs transformers",
                        "pip install 'llamapod[hf]', or pass a local tokenizer.json / tokenizer.model")
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        tok = transformers.AutoTokenizer.from_pretrained(spec, local_files_only=True) if local else _from_hub(spec)  # nosec B615: the user names the tokenizer (a pinned revision is part of that name's choice)
    except DataError:
        raise
    except Exception as exc:  # transformers raises OSError/ValueError/HTTP errors for the same failure
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot load tokenizer {spec!r}: {first}",
                        "check the folder holds a tokenizer (tokenizer.json or tokenizer.model + tokenizer_config.json)") from None
    return TransformersTokenizer(tok, label)


def _from_hub(repo_id: str):
    import transformers

    from llamapod.data.hub import hub_host, hub_reachable, use_local_cache_only

    if not hub_reachable():
        use_local_cache_only()
    try:
        return transformers.AutoTokenizer.from_pretrained(repo_id, local_files_only=not hub_reachable())  # nosec B615: the user names the tokenizer (a pinned revision is part of that name's choice)
    except Exception as exc:  # OSError, ValueError or HTTP errors, depending on what is missing
        if not hub_reachable():
            raise DataError(f"tokenizer {repo_id!r} is not in the local Hugging Face cache and {hub_host()} is not reachable",
                            "download it once where the hub is reachable, or pass a local tokenizer file or folder") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot load tokenizer {repo_id!r} from the Hugging Face hub: {first[:200]}",
                        "check the id (and HF_TOKEN for gated models such as meta-llama/*)") from None


_PATH_LIKE = re.compile(r"^(\.|/|~)|\.(json|model|tiktoken)$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def load_tokenizer_spec(spec: str) -> Tokenizer:
    path = Path(spec).expanduser()
    if path.is_file():
        return load_file(path)
    if path.is_dir():
        return load_folder(path)
    if path.exists() or path.is_symlink():
        raise DataError(f"tokenizer {spec} is not a regular file or folder (a FIFO, a device, or a broken or looping "
                        f"symbolic link)", "pass a tokenizer.json, tokenizer.model or folder")
    if _PATH_LIKE.search(spec) or not _HUB_ID.match(spec):
        raise DataError(f"tokenizer file {spec} does not exist",
                        "pass an existing tokenizer.json, tokenizer.model or folder, or a Hugging Face hub id")
    return load_with_transformers(spec, label=spec, local=False)

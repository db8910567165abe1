"""Every tokenizer format round-trips text and follows its BOS/EOS convention.

Fixtures are made in the test: a byte-level BPE (Hugging Face tokenizers), a SentencePiece
model trained on a small text, and a tiktoken BPE file (Llama 3 layout) built by a few
rounds of byte-pair merging.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path

import pytest

from fixtures.data import make_documents, train_small_bpe
from llamapod.data import load_tokenizer
from llamapod.data.formats import SentencePieceTokenizer, TiktokenTokenizer, TransformersTokenizer
from llamapod.data.hub import hub_reachable
from llamapod.data.tokenizer import HFJsonTokenizer
from llamapod.errors import DataError

SAMPLE = "document 7: the gamma of theta is omega, and that was it.\nSecond line with café ünïcode."


def train_sentencepiece(directory: Path, vocab_size: int = 400) -> Path:
    import sentencepiece

    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(make_documents(300, seed=2)) + "\ncafé ünïcode Second line with\n")
    prefix = directory / "tokenizer"
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(prefix), vocab_size=vocab_size,
                                             model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                             # Llama 2's settings: no normalisation, newlines survive.
                                             normalization_rule_name="identity", remove_extra_whitespaces=False,
                                             minloglevel=2, num_threads=1)
    return prefix.with_suffix(".model")


def build_tiktoken_file(path: Path, texts: list[str], merges: int = 60) -> Path:
    """A mergeable-ranks file: the 256 bytes, then the most frequent adjacent pairs, merged in turn."""
    ranks = {bytes([b]): b for b in range(256)}
    words = Counter(w.encode() for text in texts for w in text.split(" "))
    seqs = {w: [bytes([b]) for b in w] for w in words}
    for _ in range(merges):
        pairs = Counter()
        for w, parts in seqs.items():
            for a, b in zip(parts, parts[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        (a, b), _count = pairs.most_common(1)[0]
        ranks[a + b] = len(ranks)
        for w, parts in seqs.items():
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            seqs[w] = merged
    path.write_text("".join(f"{base64.b64encode(tok).decode()} {rank}\n" for tok, rank in ranks.items()))
    return path


def test_tokenizer_json_round_trips(small_tokenizer_file):
    tok = load_tokenizer(str(small_tokenizer_file))
    assert isinstance(tok, HFJsonTokenizer) and tok.vocab_size == 320
    ids = tok.encode(SAMPLE)
    assert tok.decode(ids) == SAMPLE
    assert tok.bos_id not in ids and tok.eos_id not in ids
    assert tok.encode_batch([SAMPLE, "x"]) == [ids, tok.encode("x")]
    # No post-processor adds BOS in this tokenizer: its documents are ids + EOS only.
    assert tok.add_bos is False and tok.document_ids([5, 6]) == [5, 6, tok.eos_id]
    assert tok.name == f"small-bpe@{tok.fingerprint[:12]}"
    # A special token's spelling inside a document is text, never a document boundary.
    assert tok.eos_id not in tok.encode("html with <|end_of_text|> inside")
    assert tok.decode(tok.encode("html with <|end_of_text|> inside")) == "html with <|end_of_text|> inside"


def test_tokenizer_json_with_bos_post_processor_adds_bos(tmp_path, small_tokenizer_file):
    from tokenizers import Tokenizer as RawTokenizer, processors

    raw = RawTokenizer.from_file(str(small_tokenizer_file))
    raw.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", 0)])
    path = tmp_path / "with_bos.json"
    raw.save(str(path))
    tok = load_tokenizer(str(path))
    assert tok.add_bos and tok.document_ids([5]) == [0, 5, 1]
    assert tok.encode("a") == raw.encode("a", add_special_tokens=False).ids


def test_sentencepiece_model_round_trips(tmp_path):
    model = train_sentencepiece(tmp_path)
    tok = load_tokenizer(str(model))
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.bos_id, tok.eos_id, tok.vocab_size, tok.add_bos) == (1, 2, 400, True)
    ids = tok.encode(SAMPLE)
    assert tok.decode(ids) == SAMPLE
    assert tok.encode_batch([SAMPLE]) == [ids]
    assert tok.document_ids(ids)[0] == 1 and tok.document_ids(ids)[-1] == 2
    saved = tok.save_files(tmp_path / "export")
    assert [p.name for p in saved] == ["tokenizer.model", "tokenizer_config.json"]
    assert load_tokenizer(str(saved[0])).fingerprint == tok.fingerprint


def test_tiktoken_llama3_file_round_trips_and_is_told_apart_from_sentencepiece(tmp_path):
    texts = make_documents(100, seed=4)
    path = build_tiktoken_file(tmp_path / "tokenizer.model", texts)
    tok = load_tokenizer(str(path))
    assert isinstance(tok, TiktokenTokenizer)
    base = 256 + 60
    assert tok.vocab_size == base + 256
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (base, base + 1, True)
    ids = tok.encode(SAMPLE)
    assert tok.decode(ids) == SAMPLE and max(ids) < base
    assert len(ids) < len(SAMPLE.encode()), "merges should shorten the byte sequence"
    # Special-token spellings inside a corpus are text, never control tokens.
    assert tok.bos_id not in tok.encode("<|begin_of_text|>")


def test_tiktoken_file_with_a_bad_line_names_it(tmp_path):
    path = tmp_path / "bad.tiktoken"
    path.write_text("YQ== 0\nYg== 1\nnot base64!! 2\nYw== x\n")
    with pytest.raises(DataError) as err:
        load_tokenizer(str(path))
    assert err.value.message == f"{path}: 2 malformed line(s) in a tiktoken BPE file, first at line 3"


def test_tokenizer_folder_is_read_with_its_config(tmp_path, small_tokenizer_file):
    direct = load_tokenizer(str(small_tokenizer_file))
    folder = tmp_path / "exported"
    direct.save_files(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(dict(config, add_bos_token=True)))
    tok = load_tokenizer(str(folder))
    assert tok.label == "exported" and tok.fingerprint == direct.fingerprint
    assert tok.add_bos and tok.document_ids([7]) == [direct.bos_id, 7, direct.eos_id]


def test_other_folder_layouts_go_through_transformers_and_keep_their_identity(tmp_path, small_tokenizer_file):
    """vocab.json + merges.txt (GPT-2 layout) has no tokenizer.json: AutoTokenizer loads it."""
    from tokenizers import Tokenizer as RawTokenizer

    direct = load_tokenizer(str(small_tokenizer_file))
    folder = tmp_path / "gpt2-layout"
    folder.mkdir()
    RawTokenizer.from_file(str(small_tokenizer_file)).model.save(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
         "unk_token": "<|end_of_text|>"}))
    tok = load_tokenizer(str(folder))
    assert isinstance(tok, TransformersTokenizer)
    assert tok.fingerprint == direct.fingerprint and tok.vocab_size == direct.vocab_size
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (direct.bos_id, direct.eos_id, False)
    assert tok.encode(SAMPLE) == direct.encode(SAMPLE) and tok.decode(tok.encode(SAMPLE)) == SAMPLE
    assert tok.encode_batch(["a <|end_of_text|> b"]) == [direct.encode("a <|end_of_text|> b")]


def test_missing_tokenizer_file_is_one_clear_line():
    with pytest.raises(DataError) as err:
        load_tokenizer("./no/such/tokenizer.json")
    assert err.value.message == "tokenizer file ./no/such/tokenizer.json does not exist"


def test_hub_id_offline_is_one_clear_line_without_waiting(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_reachable.cache_clear()
    try:
        with pytest.raises(DataError) as err:
            load_tokenizer("llamapod-tests/no-such-tokenizer")
    finally:
        hub_reachable.cache_clear()
    assert err.value.message == ("tokenizer 'llamapod-tests/no-such-tokenizer' is not in the local Hugging Face cache "
                                 "and huggingface.co is not reachable")


def test_a_file_that_is_no_tokenizer_is_refused(tmp_path):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"\x00\x01garbage")
    with pytest.raises(DataError) as err:
        load_tokenizer(str(path))
    assert err.value.message == f"{path} is neither a SentencePiece model nor a tiktoken BPE file"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"model": 1}))
    with pytest.raises(DataError) as err:
        load_tokenizer(str(broken))
    assert err.value.message.startswith(f"{broken} is not a valid tokenizer.json: ")

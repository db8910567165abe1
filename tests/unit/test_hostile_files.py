"""Files a user hands llamapod that were damaged, written by something else, or by a newer
llamapod: each is refused with one error naming the file and the fix, never a Python
exception from deep inside (a TypeError, a MemoryError, an UnicodeDecodeError)."""

from __future__ import annotations

import json
import pickle
import time

import pytest

from llamapod.errors import CheckpointError, ConfigError, DataError, TrainingError


# ---- checkpoints ------------------------------------------------------------------


def _step(tmp_path, meta: bytes):
    step = tmp_path / "step_00000002"
    step.mkdir()
    (step / "meta.json").write_bytes(meta)
    return step


def test_checkpoint_meta_that_is_not_utf8(tmp_path):
    from llamapod.train.checkpoint.folder import read_meta

    with pytest.raises(CheckpointError, match="meta.json is not UTF-8 text"):
        read_meta(_step(tmp_path, b"\xff\xfe\x00garbage"))


def test_checkpoint_of_a_newer_format_asks_for_an_upgrade(tmp_path):
    from llamapod.train.checkpoint.folder import read_meta

    with pytest.raises(CheckpointError, match="format 'llamapod-checkpoint/2'") as caught:
        read_meta(_step(tmp_path, json.dumps({"format": "llamapod-checkpoint/2", "step": 2}).encode()))
    assert "upgrade llamapod" in caught.value.hint


def test_a_shard_that_does_not_unpickle_is_named_damaged():
    from llamapod.train.checkpoint.index import _first_line

    text = _first_line(pickle.UnpicklingError("Weights only load failed. In PyTorch 2.6, we changed ..."))
    assert text == "a tensor shard is damaged (its contents do not unpickle)"


# ---- prepared datasets --------------------------------------------------------------


def _dataset(tmp_path, index) -> "object":
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "index.json").write_text(index if isinstance(index, str) else json.dumps(index))
    return folder


def _index(**changes):
    from llamapod.data.shards import FORMAT, VERSION

    return {"format": FORMAT, "version": VERSION, "dtype": "<u2", "shards": [], "tokenizer": {}, **changes}


@pytest.mark.parametrize("index, message", [
    ("[1]", "is not a dataset index"),
    (_index(version=99), "was prepared by a newer llamapod"),
    (_index(dtype="garbage"), "index.json is damaged"),
    (_index(shards=5), "index.json is damaged"),
    (_index(tokenizer=5), "index.json is damaged"),
], ids=["list", "newer", "dtype", "shards", "tokenizer"])
def test_damaged_dataset_index(tmp_path, index, message):
    from llamapod.data.shards import ShardSet

    with pytest.raises(DataError, match=message):
        ShardSet(_dataset(tmp_path, index))


def test_a_file_as_a_dataset_folder(tmp_path):
    from llamapod.data.shards import ShardSet

    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="is a file, not a prepared dataset folder"):
        ShardSet(tmp_path / "notes.txt")


def test_a_tokenizer_folder_without_a_tokenizer(tmp_path):
    from llamapod.data.formats import load_folder

    with pytest.raises(DataError, match="no tokenizer.json or tokenizer.model in"):
        load_folder(tmp_path)


# ---- Hugging Face folders (--init_from) ---------------------------------------------------


@pytest.mark.parametrize("config, message", [
    ([1], "is not a model config"),
    ({"model_type": "llama", "hidden_size": "64", "num_hidden_layers": 2, "num_attention_heads": 4,
      "vocab_size": 10, "intermediate_size": 8}, "missing or wrong values for: hidden_size"),
    ({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": True, "num_attention_heads": 4,
      "vocab_size": 10, "intermediate_size": 8, "rms_norm_eps": "x"},
     "missing or wrong values for: num_hidden_layers, rms_norm_eps"),
], ids=["list", "text-size", "bool-and-text"])
def test_hugging_face_config_of_the_wrong_types(tmp_path, config, message):
    from llamapod.train.hf import read_hf_config

    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        read_hf_config(tmp_path)


@pytest.mark.parametrize("index", ['[1]', '{"weight_map": {"a": "../../etc/x.safetensors"}}'], ids=["list", "outside"])
def test_hugging_face_weight_index_that_names_no_file_of_the_folder(tmp_path, index):
    from llamapod.train.hf import _weight_files

    (tmp_path / "model.safetensors.index.json").write_text(index)
    with pytest.raises(CheckpointError, match="model.safetensors.index.json is corrupted"):
        _weight_files(tmp_path)


# ---- sizes ----------------------------------------------------------------------------


def test_memory_estimate_of_an_absurd_batch_is_immediate():
    from llamapod.shapes import get_preset
    from llamapod.sizing.memory import MemoryJob, estimate_memory

    started = time.monotonic()
    estimate = estimate_memory(MemoryJob(model=get_preset("tiny"), seq_len=32, batch_size=2**63, device="cpu"))
    assert estimate.total > 2**63 and time.monotonic() - started < 5


def test_a_cpu_job_larger_than_this_machine_is_refused_before_it_starts():
    from llamapod.config.train import TrainSpec, resolve_model_args
    from llamapod.train.launch import _require_host_memory

    spec = TrainSpec(preset="tiny", hidden_width=65536, num_heads=64, device="cpu")
    with pytest.raises(TrainingError, match="more than this machine's"):
        _require_host_memory(spec, resolve_model_args(spec, 8192), workers=1)
    small = TrainSpec(preset="tiny", device="cpu")
    _require_host_memory(small, resolve_model_args(small, 8192), workers=1)


def test_the_shape_ceiling_names_the_flag():
    from llamapod.config.train import TrainSpec

    with pytest.raises(ConfigError, match="more than 10,000 transformer blocks"):
        TrainSpec(preset="tiny", num_layers=10**6)
    with pytest.raises(ConfigError, match="parameters, more than any model"):
        TrainSpec(preset="tiny", intermediate_size=2**63)


# ---- FIFOs where a file belongs: reading one would block forever -------------------------


def _read_meta(folder):
    from llamapod.train.checkpoint.folder import read_meta

    read_meta(folder)


def _read_hf_config(folder):
    from llamapod.train.hf import read_hf_config

    read_hf_config(folder)


def _open_dataset(folder):
    from llamapod.data.shards import ShardSet

    ShardSet(folder)


def _tokenizer(folder):
    from llamapod.data.formats import load_tokenizer_spec

    load_tokenizer_spec(str(folder / "tokenizer.json"))


def _source(folder):
    from llamapod.data.sources import open_source

    open_source(str(folder / "corpus.txt"))


@pytest.mark.parametrize("name, read, error", [
    ("meta.json", _read_meta, CheckpointError), ("config.json", _read_hf_config, CheckpointError),
    ("index.json", _open_dataset, DataError), ("tokenizer.json", _tokenizer, DataError),
    ("corpus.txt", _source, DataError),
], ids=["checkpoint-meta", "hf-config", "dataset-index", "tokenizer", "data-source"])
def test_a_fifo_where_a_file_belongs_is_refused_at_once(tmp_path, name, read, error):
    import os
    import signal

    os.mkfifo(tmp_path / name)

    def _blocked(*_):
        raise AssertionError(f"reading the FIFO {name} blocked")

    previous = signal.signal(signal.SIGALRM, _blocked)
    signal.alarm(10)
    try:
        with pytest.raises(error, match="not a regular file"):
            read(tmp_path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("changes, message", [
    ({"n_layers": 10**9}, "no model can be built with: num_layers 1000000000"),
    ({"dim": 2**40}, "no model can be built with: this shape has"),
    ({"norm_eps": -1.0}, "model_args of the wrong type: norm_eps"),
], ids=["layers", "width", "negative-eps"])
def test_checkpoint_meta_with_an_impossible_shape(tmp_path, changes, message):
    """The model is built from the meta before any tensor is read: a shape past any model
    would hang (a billion layers) or fail inside torch."""
    from llamapod.shapes import get_preset
    from llamapod.train.checkpoint.folder import FORMAT, read_meta

    shape = {**get_preset("tiny").to_dict(), **changes}
    meta = {"format": FORMAT, "step": 2, "model_args": shape}
    with pytest.raises(CheckpointError, match=message):
        read_meta(_step(tmp_path, json.dumps(meta).encode()))


# ---- llamapod's own caches: damaged copies are rebuilt, never a reason to stop ------------------


def test_a_damaged_cpu_peak_cache_is_measured_again(tmp_path, monkeypatch):
    import torch

    from llamapod.train import metrics

    monkeypatch.setenv("LLAMAPOD_HOME", str(tmp_path))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "cpu_matmul_peak.json").write_text("[1, 2]")
    monkeypatch.setattr(metrics, "measure_matmul_peak", lambda dtype, threads: 123.0)
    assert metrics.cpu_peak_flops(torch.float32, 1) == 123.0


def test_a_damaged_default_tokenizer_and_corpus_are_rebuilt(tmp_path, monkeypatch):
    from llamapod import report
    from llamapod.data import default

    warnings: list[str] = []
    monkeypatch.setattr(report, "warn", warnings.append)
    monkeypatch.setenv("LLAMAPOD_HOME", str(tmp_path))
    tokenizer_file = default.default_tokenizer_path()
    tokenizer_file.write_bytes(b"\x00garbage")
    default._default_tokenizer_cached.cache_clear()
    tokenizer = default.default_tokenizer()
    assert tokenizer.vocab_size == default.VOCAB_SIZE
    shards = default.default_corpus_shards(tokenizer)
    (shards.directory / "index.json").write_text("{oops")
    assert default.default_corpus_shards(tokenizer).num_tokens > 0
    assert [w.split(": ")[-1] for w in warnings] == ["training it again", "tokenizing it again"]


# ---- a failed --overwrite leaves the prepared dataset whole -------------------------------------


def test_a_failed_overwrite_keeps_the_prepared_dataset(tmp_path, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("first corpus. " * 400)
    (tmp_path / "b.txt").write_text("second corpus. " * 400)
    (tmp_path / "bad.jsonl").write_text('{"body": "no text field"}\n')
    assert run_cli("data", "prepare", "a.txt", "--out", "ds", "--workers", "1")[0] == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir() if p.is_file()}

    code, _, err = run_cli("data", "prepare", "bad.jsonl", "--out", "ds", "--overwrite", "--workers", "1")
    assert code == 1 and "has no 'text' field" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir() if p.is_file()} == before

    assert run_cli("data", "prepare", "b.txt", "--out", "ds", "--overwrite", "--workers", "1")[0] == 0
    index = json.loads((tmp_path / "ds" / "index.json").read_text())
    assert index["source"]["files"] == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "bad.jsonl", "ds"]

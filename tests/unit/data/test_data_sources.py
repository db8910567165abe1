"""Document sources: local files in every supported form, Hugging Face datasets that can
exist here (saved to disk, or the json builder over local files, streaming), and the
one-line errors for bad input."""

from __future__ import annotations

import gzip
import json

import pytest

from llamapod.data.hub import hub_reachable
from llamapod.data.sources import open_source
from llamapod.errors import DataError

DOCS = ["first document\nwith two lines", "second one", "third, the last"]


def docs_of(source, **options):
    return list(open_source(str(source), **options).documents())


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_txt_file_folder_and_glob(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\n\nbeta para\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("gamma line 1\ngamma line 2\n")
    (tmp_path / "ignored.csv").write_text("x,y\n")
    assert docs_of(tmp_path) == ["alpha\n\nbeta para\n", "gamma line 1\ngamma line 2\n"]
    assert docs_of(tmp_path / "a.txt", txt_document="paragraph") == ["alpha", "beta para\n"]
    assert docs_of(tmp_path / "sub" / "b.txt", txt_document="line") == ["gamma line 1", "gamma line 2"]
    assert docs_of(f"{tmp_path}/**/*.txt") == docs_of(tmp_path)


def test_jsonl_with_a_configurable_field_and_gzip(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"body": d, "id": i} for i, d in enumerate(DOCS)])
    assert docs_of(tmp_path / "d.jsonl", text_field="body") == DOCS
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as handle:
        handle.write("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    assert docs_of(tmp_path / "d.jsonl.gz") == DOCS


def test_parquet_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [1, 2, 3], "content": DOCS}), tmp_path / "d.parquet")
    assert docs_of(tmp_path / "d.parquet", text_field="content") == DOCS
    with pytest.raises(DataError) as err:
        docs_of(tmp_path / "d.parquet")
    assert err.value.message == f"{tmp_path / 'd.parquet'} has no column 'text' (columns: id, content)"
    assert err.value.hint == "pass --text_field with the column that holds the text"


def test_a_malformed_jsonl_record_is_one_line_with_its_line_and_byte_offset(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{not json\n{"text": "fine"}\n{"body": "x"}\n[1, 2]\n')
    with pytest.raises(DataError) as err:
        docs_of(path)
    assert err.value.message == f"{path}: line 3 (byte 16) is not valid JSON"
    missing = write_jsonl(tmp_path / "missing.jsonl", [{"text": "a"}, {"content": "b"}, {"text": 3}])
    with pytest.raises(DataError) as err:
        docs_of(missing)
    assert err.value.message == f"{missing}: line 2 (byte 14) has no 'text' field"
    not_text = write_jsonl(tmp_path / "number.jsonl", [{"text": "a"}, {"text": 3}])
    with pytest.raises(DataError) as err:
        docs_of(not_text)
    assert err.value.message == f"{not_text}: line 2 (byte 14) has a 'text' that is not a string"
    assert err.value.hint.startswith("fix or remove that record")


def test_missing_empty_and_unsupported_sources(tmp_path):
    with pytest.raises(DataError) as err:
        docs_of(tmp_path / "nope.jsonl")
    assert err.value.message == f"{tmp_path / 'nope.jsonl'} does not exist"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        docs_of(tmp_path / "empty")
    assert err.value.message == f"{tmp_path / 'empty'} holds no .txt, .jsonl or .parquet files"
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError) as err:
        docs_of(tmp_path / "x.csv")
    assert err.value.message == f"{tmp_path / 'x.csv'}: unsupported file type .csv"
    with pytest.raises(DataError) as err:
        docs_of(tmp_path / "x.csv", txt_field="text")
    assert err.value.message == "unknown source option(s): txt_field"


def test_fingerprint_changes_when_a_file_changes(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in DOCS])
    before = open_source(str(path)).fingerprint
    assert open_source(str(path)).fingerprint == before
    write_jsonl(path, [{"text": d} for d in DOCS + ["more"]])
    assert open_source(str(path)).fingerprint != before
    assert open_source(str(path), text_field="body").fingerprint != open_source(str(path)).fingerprint


def test_dataset_saved_with_datasets_library(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": DOCS, "n": [1, 2, 3]}).save_to_disk(str(tmp_path / "saved"))
    assert docs_of(tmp_path / "saved") == DOCS
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": DOCS})}).save_to_disk(str(tmp_path / "dict"))
    assert docs_of(tmp_path / "dict", text_field="body") == DOCS
    with pytest.raises(DataError) as err:
        docs_of(tmp_path / "dict", text_field="body", dataset_split="validation")
    assert err.value.message == f"{tmp_path / 'dict'} has no split 'validation' (splits: train)"


def test_datasets_builder_over_local_files_streaming(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in DOCS])
    source = open_source("json", data_files=str(path), streaming=True)
    assert source.description["streaming"] is True
    assert list(source.documents()) == DOCS


def test_hub_dataset_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_reachable.cache_clear()
    try:
        with pytest.raises(DataError) as err:
            open_source("allenai/c4", dataset_config_name="en", streaming=True)
    finally:
        hub_reachable.cache_clear()
    assert err.value.message == ("dataset 'allenai/c4' is not in the local Hugging Face cache and huggingface.co "
                                 "is not reachable")

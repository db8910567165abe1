"""A corpus cut into independently readable parts: whatever the cut, the parts' documents
in order are the files' documents, and text files split block by block as whole texts do."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings, strategies as st

from llamapod.data.pieces import (JSONL, PARQUET, TXT, Piece, file_pieces, plan_file_parts, read_part, read_piece,
                                  split_lines, split_paragraphs)
from llamapod.data.sources import SourceOptions
from llamapod.errors import DataError

PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")
OPTIONS = SourceOptions()


def whole(path, kind=JSONL):
    return list(read_piece(Piece(str(path), kind, path.stat().st_size), OPTIONS))


def in_parts(files, part_bytes):
    return [doc for part in plan_file_parts(files, part_bytes) for doc in read_part(part, OPTIONS)]


texts = st.text(alphabet=st.sampled_from("ab é\n\"\\\u2028{}"), min_size=0, max_size=40)


@settings(max_examples=60, deadline=None)
@given(documents=st.lists(texts, min_size=1, max_size=40), part_bytes=st.integers(1, 400))
def test_byte_ranges_of_a_jsonl_file_hold_each_line_once(tmp_path_factory, documents, part_bytes):
    path = tmp_path_factory.mktemp("ranges") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    pieces = file_pieces(path, part_bytes)
    assert sum(p.size for p in pieces) == path.stat().st_size
    assert in_parts([path], part_bytes) == whole(path) == [d for d in documents if d.strip()]


def test_a_bad_line_in_a_later_range_names_its_line_and_byte(tmp_path):
    lines = [json.dumps({"text": f"document number {i}"}) + "\n" for i in range(400)]
    lines[317] = '{"text": "never closed\n'
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(lines))
    parts = plan_file_parts([path], 1000)
    assert len(parts) > 5
    with pytest.raises(DataError) as err:
        [doc for part in parts for doc in read_part(part, OPTIONS)]
    offset = sum(len(line) for line in lines[:317])
    assert err.value.message == f"{path}: line 318 (byte {offset:,}) is not valid JSON"


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("ab \t\r\n\v\f\x1c\x85\u2028"), max_size=80),
       block=st.integers(1, 9))
def test_streamed_paragraphs_and_lines_are_those_of_the_whole_text(text, block):
    blocks = [text[i:i + block] for i in range(0, len(text), block)]
    keep = lambda parts: [p for p in parts if p.strip()]  # what readers yield: non-blank documents
    assert keep(split_paragraphs(iter(blocks))) == keep(PARAGRAPH_BREAK.split(text))
    assert keep(split_lines(iter(blocks))) == keep(text.splitlines())


def test_txt_modes_read_streamed(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("first paragraph\nstill first\n\n \nsecond\r\nline two\n")
    piece = Piece(str(path), TXT, path.stat().st_size)
    # As the blank-line pattern splits the whole text: a second blank line after a break
    # starts the next paragraph.
    assert list(read_piece(piece, SourceOptions(txt_document="paragraph"))) == [
        "first paragraph\nstill first", " \nsecond\r\nline two\n"]
    assert list(read_piece(piece, SourceOptions(txt_document="line"))) == [
        "first paragraph", "still first", "second", "line two"]
    assert list(read_piece(piece, OPTIONS)) == [path.read_bytes().decode()]


def test_parquet_is_cut_between_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    documents = [f"row {i} " + "text " * (i % 30) for i in range(3000)]
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({"text": documents}), path, row_group_size=200)
    pieces = file_pieces(path, 20_000)
    assert len(pieces) > 3 and all(p.kind == PARQUET for p in pieces)
    assert [(p.start, p.end) for p in pieces] == list(zip([p.start for p in pieces], [p.start for p in pieces[1:]] + [15]))
    assert in_parts([path], 20_000) == whole(path, PARQUET) == documents

    with_null = tmp_path / "null.parquet"
    pq.write_table(pa.table({"text": documents[:700] + [None] + documents[700:]}), with_null, row_group_size=200)
    with pytest.raises(DataError) as err:
        in_parts([with_null], 20_000)
    assert err.value.message == f"{with_null}: row 701 has no text ('text' is null)"


def test_small_files_share_a_part_and_compressed_files_stay_whole(tmp_path):
    import gzip

    small = []
    for number in range(6):
        path = tmp_path / f"small-{number}.jsonl"
        path.write_text(json.dumps({"text": "x" * 90}) + "\n")
        small.append(path)
    big = tmp_path / "big.json.gz"
    big.write_bytes(gzip.compress(b"".join(json.dumps({"text": f"{i}" * 50}).encode() + b"\n" for i in range(5000))))
    parts = plan_file_parts(small + [big], 300)
    assert [len(part.pieces) for part in parts] == [3, 3, 1]
    assert parts[-1].pieces[0].end is None and parts[-1].size == big.stat().st_size > 300

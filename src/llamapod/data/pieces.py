"""A file corpus cut into parts that can be read independently, and the readers of each part.

The cut is a function of the files alone (names, sizes, Parquet metadata) and of the part
size, never of how many processes or nodes read them, so every process of a preparation
computes the same parts and a part's shards are the same whoever reads it:

- an uncompressed JSON-lines file is cut into byte ranges of ``part_bytes``; a line belongs
  to the range its first byte lies in, so a reader seeks to its range and reads no other;
- a Parquet file is cut between row groups, about ``part_bytes`` (uncompressed) apiece;
- a compressed file (gzip and Zstandard streams cannot be entered in the middle) and a
  ``.txt`` file are read whole;
- consecutive small pieces are grouped until a part holds ``part_bytes``, so a folder of
  thousands of small files does not become thousands of tiny shards.

Readers stream: a compressed member is decompressed as it is read, JSON lines and Parquet
batches are parsed one at a time, text files are split into documents block by block.
A bad record stops the read with one line naming the file, the line (or row) and its byte
offset.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from llamapod.data.streams import READ_SIZE, ByteStream, compression_of
from llamapod.errors import DataError

if TYPE_CHECKING:
    from llamapod.data.sources import SourceOptions

JSONL, TXT, PARQUET = "jsonl", "txt", "parquet"
TEXT_BLOCK_CHARS = 1 << 20
PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")
_PARAGRAPH_SPACE = " \t\r\f\v"
# What str.splitlines() splits on, so streamed lines are the lines of the whole text.
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_FIX_RECORDS = "fix or remove that record (or pass --text_field if the text is under another key), then re-run"


@dataclass(frozen=True)
class Piece:
    """A stretch of one file: bytes ``[start, end)`` of a JSON-lines file, row groups
    ``[start, end)`` of a Parquet file, or a whole file (``end`` None)."""

    path: str
    kind: str
    size: int                 # bytes on disk this piece covers: the unit of progress
    start: int = 0
    end: int | None = None

    def to_dict(self) -> dict:
        return {"path": self.path, "kind": self.kind, "size": self.size, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class Part:
    number: int
    pieces: tuple[Piece, ...]
    # Changes when a file of the part changes (size, modification time): an earlier run's
    # shards of the part are then redone, the other parts' kept (a re-downloaded file).
    fingerprint: str = ""

    @property
    def size(self) -> int:
        return sum(piece.size for piece in self.pieces)


def kind_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return PARQUET
    if name.endswith((".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz", ".jsonl.zst",
                      ".json.zst", ".ndjson.zst")):
        return JSONL
    return TXT


def file_pieces(path: Path, part_bytes: int) -> list[Piece]:
    """The pieces one file is cut into (see the module docstring)."""
    size = path.stat().st_size
    kind = kind_of(path)
    if kind == JSONL and compression_of(path) is None and size > part_bytes:
        return [Piece(str(path), kind, min(part_bytes, size - start), start, min(start + part_bytes, size))
                for start in range(0, size, part_bytes)]
    if kind == PARQUET:
        return parquet_pieces(path, size, part_bytes)
    return [Piece(str(path), kind, size)]


def parquet_pieces(path: Path, size: int, part_bytes: int) -> list[Piece]:
    metadata = _parquet_file(path).metadata
    groups = [metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)]
    if len(groups) <= 1 or sum(groups) <= part_bytes:
        return [Piece(str(path), PARQUET, size)]
    pieces: list[Piece] = []
    first, held = 0, 0
    for index, group_bytes in enumerate(groups):
        held += group_bytes
        if held >= part_bytes or index == len(groups) - 1:
            # Progress counts bytes on disk: each piece gets its share of the file's size.
            share = size * held // max(sum(groups), 1)
            pieces.append(Piece(str(path), PARQUET, share, first, index + 1))
            first, held = index + 1, 0
    return pieces


def group_into_parts(pieces: list[Piece], part_bytes: int) -> list[Part]:
    groups: list[list[Piece]] = []
    current: list[Piece] = []
    held = 0
    for piece in pieces:
        current.append(piece)
        held += piece.size
        if held >= part_bytes:
            groups.append(current)
            current, held = [], 0
    if current:
        groups.append(current)
    return [Part(number, tuple(group), _fingerprint(group)) for number, group in enumerate(groups)]


def _fingerprint(pieces: list[Piece]) -> str:
    from llamapod.data.tokenizer import digest_bytes

    described = []
    for piece in pieces:
        stat = os.stat(piece.path)
        described.append([piece.path, piece.kind, piece.start, piece.end, stat.st_size, stat.st_mtime_ns])
    return digest_bytes(json.dumps(described).encode())


def plan_file_parts(files: list[Path], part_bytes: int) -> list[Part]:
    if part_bytes < 1:
        raise DataError(f"part size must be positive, got {part_bytes}", "pass e.g. --shard-mb 8")
    pieces = [piece for path in files for piece in file_pieces(path, part_bytes)]
    return group_into_parts(pieces, part_bytes)


# ---- reading -----------------------------------------------------------------------


@dataclass
class Meter:
    """Bytes on disk consumed by a reader: finished pieces plus the position in the current one."""

    finished: int = 0
    _stream: ByteStream | None = field(default=None, repr=False)
    _stream_start: int = 0

    def track(self, stream: ByteStream | None, start: int = 0) -> None:
        self._stream, self._stream_start = stream, start

    def done(self, piece: Piece) -> None:
        self.finished += piece.size
        self._stream = None

    @property
    def value(self) -> int:
        if self._stream is None:
            return self.finished
        return self.finished + max(0, self._stream.disk_bytes_read - self._stream_start)


def read_piece(piece: Piece, options: "SourceOptions", meter: Meter | None = None) -> Iterator[str]:
    """The piece's documents (non-blank texts), in file order."""
    meter = meter or Meter()
    if piece.kind == JSONL:
        yield from _jsonl_documents(piece, options.text_field, meter)
    elif piece.kind == PARQUET:
        yield from _parquet_documents(piece, options.text_field)
    else:
        yield from _txt_documents(piece, options.txt_document, meter)
    meter.done(piece)


def read_part(part: Part, options: "SourceOptions", meter: Meter | None = None) -> Iterator[str]:
    for piece in part.pieces:
        yield from read_piece(piece, options, meter)


# ---- JSON lines --------------------------------------------------------------------


def _jsonl_documents(piece: Piece, field_name: str, meter: Meter) -> Iterator[str]:
    path = Path(piece.path)
    # A range that does not start the file begins after the line straddling its start,
    # which belongs to the previous range (the one its first byte lies in).
    open_at = max(piece.start - 1, 0)
    with ByteStream(path, start=open_at) as stream:
        meter.track(stream, open_at)
        handle = stream.handle
        offset = open_at
        if piece.start > 0:
            offset += len(handle.readline())
        first_line = offset
        end = piece.end
        number = 0
        for line in handle:
            if end is not None and offset >= end:
                break
            line_offset = offset
            offset += len(line)
            number += 1
            if not line.strip():
                continue
            text = _record_text(line, field_name)
            if isinstance(text, str):
                if text.strip():
                    yield text
            else:
                line_number = _lines_before(path, first_line, stream) + number
                raise DataError(f"{path}: line {line_number:,} ({stream.describe_offset(line_offset)}) {text[0]}",
                                _FIX_RECORDS)


def _record_text(line: bytes, field_name: str) -> str | tuple[str]:
    """The record's text, or (what is wrong with it,)."""
    try:
        record = json.loads(line.decode("utf-8", errors="replace"))
    except ValueError:
        return ("is not valid JSON",)
    if not isinstance(record, dict) or field_name not in record:
        return (f"has no {field_name!r} field",)
    value = record[field_name]
    if not isinstance(value, str):
        return (f"has a {field_name!r} that is not a string",)
    return value


def _lines_before(path: Path, start: int, stream: ByteStream) -> int:
    """Lines of the file before the line that starts at byte ``start`` (only asked for an
    error message)."""
    if start == 0 or stream.compression is not None:
        return 0
    lines = 0
    with open(path, "rb") as handle:
        remaining = start
        while remaining > 0:
            block = handle.read(min(READ_SIZE, remaining))
            if not block:
                break
            lines += block.count(b"\n")
            remaining -= len(block)
    return lines


# ---- Parquet -----------------------------------------------------------------------


def _parquet_file(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path} is not a readable Parquet file: {str(exc).splitlines()[0]}",
                        "check the file is complete (re-download or re-export it)") from None


def _parquet_documents(piece: Piece, field_name: str) -> Iterator[str]:
    import pyarrow as pa

    path = Path(piece.path)
    parquet = _parquet_file(path)
    columns = parquet.schema_arrow.names
    if field_name not in columns:
        raise DataError(f"{path} has no column {field_name!r} (columns: {', '.join(columns)})",
                        "pass --text_field with the column that holds the text")
    column_type = parquet.schema_arrow.field(field_name).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise DataError(f"{path}: column {field_name!r} holds {column_type}, not text",
                        "pass --text_field with the column that holds the text")
    metadata = parquet.metadata
    end = metadata.num_row_groups if piece.end is None else piece.end
    groups = list(range(piece.start, end))
    row = sum(metadata.row_group(i).num_rows for i in range(piece.start))
    for batch in parquet.iter_batches(columns=[field_name], batch_size=4096, row_groups=groups):
        for value in batch.column(0).to_pylist():
            row += 1
            if value is None:
                raise DataError(f"{path}: row {row:,} has no text ({field_name!r} is null)",
                                "drop or fill the rows without text, then re-run")
            if value.strip():
                yield value


# ---- plain text --------------------------------------------------------------------


def _txt_documents(piece: Piece, mode: str, meter: Meter) -> Iterator[str]:
    import io

    with ByteStream(Path(piece.path)) as stream:
        meter.track(stream)
        text = io.TextIOWrapper(stream.handle, encoding="utf-8", errors="replace", newline="")
        blocks = iter(lambda: text.read(TEXT_BLOCK_CHARS), "")
        if mode == "file":
            whole = "".join(blocks)
            parts: Iterator[str] = iter([whole])
        elif mode == "paragraph":
            parts = split_paragraphs(blocks)
        else:
            parts = split_lines(blocks)
        yield from (part for part in parts if part.strip())


def split_paragraphs(blocks: Iterator[str]) -> Iterator[str]:
    """``PARAGRAPH_BREAK.split(whole text)``, computed block by block.

    Everything up to the end of the last break found is final: a break is decided by the
    characters up to its closing newline. Only an attempt still open at the end of the
    buffer (a newline followed by spaces so far) is re-examined with the next block.
    """
    carry = ""
    for block in blocks:
        buffer = carry + block
        start, scan_from = 0, _open_break(carry)
        for match in PARAGRAPH_BREAK.finditer(buffer, scan_from):
            yield buffer[start:match.start()]
            start = match.end()
        carry = buffer[start:]
    yield carry


def _open_break(text: str) -> int:
    """Where a paragraph break may still begin in ``text``: its last newline if only
    spaces follow it, else its end."""
    last = text.rfind("\n")
    if last >= 0 and not text[last + 1:].strip(_PARAGRAPH_SPACE):
        return last
    return len(text)


def split_lines(blocks: Iterator[str]) -> Iterator[str]:
    """``whole text.splitlines()`` computed block by block (a line cut by a block boundary
    waits for the rest; "\\r" + "\\n" across a boundary yields an extra empty line, which
    callers drop as blank)."""
    carry = ""
    for block in blocks:
        lines = (carry + block).splitlines(keepends=True)
        carry = lines.pop() if lines and lines[-1][-1] not in _LINE_BREAKS else ""
        for line in lines:
            yield line.rstrip(_LINE_BREAKS)
    if carry:
        yield carry

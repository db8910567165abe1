"""Compressed corpus files read as streams: every gzip member and Zstandard frame, and one
line naming the file and the byte where a damaged one breaks."""

from __future__ import annotations

import gzip
import json
import random
import re
import zlib

import pytest
import zstandard

from llamapod.data.pieces import JSONL, Piece, read_piece
from llamapod.data.sources import SourceOptions
from llamapod.data.streams import READ_SIZE, ByteStream
from llamapod.errors import DataError

_WORDS = random.Random(3)
# Varied text, so the compressed files span several reads.
LINES = b"".join(json.dumps({"text": f"document {i} " + " ".join(f"w{_WORDS.randrange(10**6)}" for _ in range(i % 40))})
                 .encode() + b"\n" for i in range(8_000))


def read_all(path) -> bytes:
    with ByteStream(path) as stream:
        return stream.handle.read()


def rejects_within(data: bytes, length: int) -> bool:
    try:
        zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[:length])
    except zlib.error:
        return True
    return False


def first_rejected_byte(data: bytes) -> int | None:
    """The first byte at which zlib rejects ``data`` fed from the start (the offset the reader
    reports), found independently: feeding a prefix fails iff it holds the bad byte, so bisect."""
    if not rejects_within(data, len(data)):
        return None
    low, high = 0, len(data)          # rejects_within(high) is True, rejects_within(low) is False
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if rejects_within(data, middle) else (middle, high)
    return high - 1


def test_gzip_members_and_zero_padding_read_as_one_stream(tmp_path):
    path = tmp_path / "c4-train.00000-of-01024.json.gz"
    path.write_bytes(gzip.compress(LINES[:300_000], compresslevel=1) + gzip.compress(LINES[300_000:]) + b"\0" * 512)
    with ByteStream(path) as stream:
        assert stream.handle.read() == LINES
        assert stream.disk_bytes_read == path.stat().st_size


def test_zstd_frames_read_as_one_stream(tmp_path):
    path = tmp_path / "part.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(LINES[:1000])
                     + zstandard.ZstdCompressor(level=5).compress(LINES[1000:]))
    assert read_all(path) == LINES


def test_corrupt_gzip_names_the_exact_compressed_byte(tmp_path):
    data = bytearray(gzip.compress(LINES, compresslevel=1))
    trailer = len(data) - 8
    # Overwrite a stretch of the deflate data until zlib itself rejects it before the trailer
    # (damage may also decode to other bytes, caught only by the CRC).
    for position in range(READ_SIZE + 100, trailer - 64, 997):
        damaged = bytearray(data)
        damaged[position:position + 64] = b"\xff" * 64
        expected = first_rejected_byte(bytes(damaged))
        if expected is not None and expected < trailer:
            break
    else:
        pytest.fail("no damage zlib rejects mid-stream")
    path = tmp_path / "bad.json.gz"
    path.write_bytes(bytes(damaged))
    with pytest.raises(DataError) as err:
        read_all(path)
    assert err.value.message.startswith(f"{path}: corrupt gzip data at compressed byte {expected:,} (")
    assert err.value.hint.startswith("re-download the file")


def test_a_crc_mismatch_is_reported_at_the_trailer(tmp_path):
    data = bytearray(gzip.compress(b"hello world\n" * 100))
    data[-8] ^= 0x01   # the CRC-32 of the member
    path = tmp_path / "crc.json.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        read_all(path)
    assert err.value.message == (f"{path}: corrupt gzip data at compressed byte {first_rejected_byte(bytes(data)):,} "
                                 "(CRC-32 mismatch: the data was altered)")


def test_truncated_files_name_where_they_end(tmp_path):
    gz = gzip.compress(LINES, compresslevel=1)
    path = tmp_path / "cut.json.gz"
    path.write_bytes(gz[:len(gz) // 2])
    with pytest.raises(DataError) as err:
        read_all(path)
    assert err.value.message == (f"{path} is truncated: the file ends at compressed byte {len(gz) // 2:,} "
                                 "before the end of its gzip data")
    zst = zstandard.ZstdCompressor().compress(LINES)
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(zst[:len(zst) // 3])
    with pytest.raises(DataError) as err:
        read_all(path)
    assert err.value.message == (f"{path} is truncated: the file ends at compressed byte {len(zst) // 3:,} "
                                 "before the end of its zstd data")


def test_corrupt_zstd_names_the_read_that_failed(tmp_path):
    data = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(LINES))
    damaged = READ_SIZE + 5000
    data[damaged] ^= 0x55
    path = tmp_path / "bad.jsonl.zst"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        read_all(path)
    match = re.fullmatch(rf"{re.escape(str(path))}: corrupt zstd data in compressed bytes ([\d,]+)-([\d,]+) "
                         r"\((.+); the decoder reports errors per read, not per byte\)", err.value.message)
    assert match, err.value.message
    start, end = (int(match.group(i).replace(",", "")) for i in (1, 2))
    assert start % READ_SIZE == 0 and 0 < end - start <= READ_SIZE
    # Either the block holding the altered byte fails to decode, or it decodes to other
    # bytes and the frame's checksum, at its end, catches it.
    assert (start <= damaged < end and match.group(3) == "Data corruption detected") or \
        (end == len(data) and match.group(3) == "Restored data doesn't match checksum")


def test_files_that_are_not_what_their_names_say(tmp_path):
    fake_gz = tmp_path / "plain.json.gz"
    fake_gz.write_bytes(LINES[:1000])
    with pytest.raises(DataError) as err:
        read_all(fake_gz)
    assert err.value.message == f"{fake_gz} is not gzip data (compressed byte 1: incorrect header check)"
    fake_zst = tmp_path / "plain.jsonl.zst"
    fake_zst.write_bytes(LINES[:1000])
    with pytest.raises(DataError) as err:
        read_all(fake_zst)
    assert err.value.message.startswith(f"{fake_zst} is not Zstandard data (compressed byte 0: ")


def test_a_bad_line_in_a_compressed_file_names_its_decompressed_offset(tmp_path):
    good = [json.dumps({"text": f"doc {i}"}).encode() + b"\n" for i in range(5000)]
    bad_line = 3210
    lines = good[:bad_line - 1] + [b'{"text": "cut in the middle\n'] + good[bad_line - 1:]
    path = tmp_path / "c4-train.00007-of-01024.json.gz"
    path.write_bytes(gzip.compress(b"".join(lines)))
    piece = Piece(str(path), JSONL, path.stat().st_size)
    with pytest.raises(DataError) as err:
        list(read_piece(piece, SourceOptions()))
    offset = sum(len(line) for line in lines[:bad_line - 1])
    assert err.value.message == f"{path}: line {bad_line:,} (decompressed byte {offset:,}) is not valid JSON"

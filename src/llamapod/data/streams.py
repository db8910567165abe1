"""Byte streams of corpus files as they are downloaded: plain, gzip (``.gz``) or Zstandard
(``.zst``), decompressed while they are read, never loaded whole.

A damaged file becomes one ``DataError`` line naming the file and where it broke:
- gzip: the exact compressed byte at which zlib rejects the data (found by replaying the
  failing read one byte at a time from a copy of the decoder taken before it);
- Zstandard: the compressed read (``READ_SIZE`` bytes) in which the decoder failed, as
  the library reports errors per call, not per byte;
- a truncated file of either kind: its size, where the data stops before the end of the
  compressed stream.
Several gzip members or Zstandard frames back to back (``cat a.gz b.gz``, pigz, bgzip,
zstd's multi-frame output) are read as one stream, as ``gzip -dc`` and ``zstd -dc`` do.
"""

from __future__ import annotations

import io
import zlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

from llamapod.errors import DataError

READ_SIZE = 1 << 16
GZIP_SUFFIX = ".gz"
ZSTD_SUFFIX = ".zst"
COMPRESSED_SUFFIXES = (GZIP_SUFFIX, ZSTD_SUFFIX)
# zlib's wbits for a gzip wrapper (header and CRC-32/size trailer checked), 32 KiB window.
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_GZIP_HEADER_BYTES = 10
_ZLIB_REASONS = {"incorrect data check": "CRC-32 mismatch: the data was altered",
                 "incorrect length check": "length mismatch: the data was altered"}
_DAMAGED_HINT = "re-download the file (or move it out of the corpus), then re-run the same command: finished shards are kept"


def compression_of(path: Path) -> str | None:
    """"gzip", "zstd" or None, from the file name (as the tools that wrote it name it)."""
    name = path.name.lower()
    if name.endswith(GZIP_SUFFIX):
        return "gzip"
    if name.endswith(ZSTD_SUFFIX):
        return "zstd"
    return None


class _Decoder(ABC):
    """One compression format's decoder over a sequence of members/frames."""

    name = ""

    @abstractmethod
    def feed(self, data: bytes, offset: int) -> bytes:
        """Decompressed bytes of ``data``, which starts at compressed byte ``offset``."""

    @abstractmethod
    def finished(self) -> bool:
        """Whether the data fed so far ends exactly at the end of a member/frame."""


class _GzipDecoder(_Decoder):
    name = "gzip"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._member = zlib.decompressobj(_GZIP_WBITS)
        self._member_fed = False

    def feed(self, data: bytes, offset: int) -> bytes:
        out = []
        while data:
            if self._member.eof:
                if not data.strip(b"\0"):  # gzip allows zero padding after the last member
                    break
                self._member = zlib.decompressobj(_GZIP_WBITS)
                self._member_fed = False
            before = self._member.copy()
            try:
                out.append(self._member.decompress(data))
            except zlib.error as exc:
                raise self._corrupt(before, data, offset, exc) from None
            self._member_fed = True
            rest = self._member.unused_data if self._member.eof else b""
            offset += len(data) - len(rest)
            data = rest
        return b"".join(out)

    def _corrupt(self, before, data: bytes, offset: int, exc: zlib.error) -> DataError:
        at = offset
        for i in range(len(data)):
            try:
                before.decompress(data[i:i + 1])
            except zlib.error:
                at = offset + i
                break
        reason = str(exc).split(": ", 1)[-1]
        if at < _GZIP_HEADER_BYTES and "header" in reason:
            return DataError(f"{self.path} is not gzip data (compressed byte {at}: {reason})",
                             "rename it to what it holds, or re-download it")
        reason = _ZLIB_REASONS.get(reason, reason)
        return DataError(f"{self.path}: corrupt gzip data at compressed byte {at:,} ({reason})", _DAMAGED_HINT)

    def finished(self) -> bool:
        return self._member.eof or not self._member_fed


class _ZstdDecoder(_Decoder):
    name = "zstd"

    def __init__(self, path: Path) -> None:
        try:
            import zstandard
        except ImportError:
            raise DataError(f"{path} is Zstandard-compressed, and reading it needs the `zstandard` package",
                            "pip install 'llamapod[train]' (or pip install zstandard)") from None
        self.path = path
        self._zstd = zstandard
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame = self._decompressor.decompressobj()
        self._frame_fed = False

    def feed(self, data: bytes, offset: int) -> bytes:
        out = []
        while data:
            if self._frame.eof:
                if not data.strip(b"\0"):
                    break
                self._frame = self._decompressor.decompressobj()
                self._frame_fed = False
            try:
                out.append(self._frame.decompress(data))
            except self._zstd.ZstdError as exc:
                raise self._corrupt(data, offset, exc) from None
            self._frame_fed = True
            rest = self._frame.unused_data if self._frame.eof else b""
            offset += len(data) - len(rest)
            data = rest
        return b"".join(out)

    def _corrupt(self, data: bytes, offset: int, exc: Exception) -> DataError:
        reason = str(exc).removeprefix("zstd decompressor error: ")
        if offset == 0 and "frame descriptor" in reason.lower():
            return DataError(f"{self.path} is not Zstandard data (compressed byte 0: {reason})",
                             "rename it to what it holds, or re-download it")
        return DataError(f"{self.path}: corrupt zstd data in compressed bytes {offset:,}-{offset + len(data):,} "
                         f"({reason}; the decoder reports errors per read, not per byte)", _DAMAGED_HINT)

    def finished(self) -> bool:
        return self._frame.eof or not self._frame_fed


class DecompressingReader(io.RawIOBase):
    """A compressed file read as its decompressed bytes; ``compressed_offset`` is how far
    into the file the decoder has read (for progress and error messages)."""

    def __init__(self, path: Path, compression: str) -> None:
        super().__init__()
        self.path = path
        self._file = open(path, "rb")
        self._decoder = _GzipDecoder(path) if compression == "gzip" else _ZstdDecoder(path)
        self.compressed_offset = 0
        self._buffer = b""
        self._position = 0
        self._at_end = False

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while self._position >= len(self._buffer):
            if self._at_end:
                return 0
            self._buffer, self._position = self._decode_next(), 0
        count = min(len(target), len(self._buffer) - self._position)
        target[:count] = self._buffer[self._position:self._position + count]
        self._position += count
        return count

    def _decode_next(self) -> bytes:
        data = self._file.read(READ_SIZE)
        if not data:
            self._at_end = True
            if not self._decoder.finished():
                raise DataError(f"{self.path} is truncated: the file ends at compressed byte {self.compressed_offset:,} "
                                f"before the end of its {self._decoder.name} data", _DAMAGED_HINT)
            return b""
        decoded = self._decoder.feed(data, self.compressed_offset)
        self.compressed_offset += len(data)
        return decoded

    def close(self) -> None:
        self._file.close()
        super().close()


class ByteStream:
    """A file's (decompressed) bytes as a buffered binary stream, with the count of bytes of
    the file on disk read so far (compressed bytes for a compressed file)."""

    def __init__(self, path: Path, start: int = 0) -> None:
        self.path = path
        self.compression = compression_of(path)
        if self.compression is None:
            self._raw = open(path, "rb", buffering=0)
            if start:
                self._raw.seek(start)
            self._disk_position: Callable[[], int] = self._raw.tell
        else:
            if start:
                raise ValueError("a compressed file can only be read from its start")
            self._raw = DecompressingReader(path, self.compression)
            self._disk_position = lambda: self._raw.compressed_offset
        self.handle = io.BufferedReader(self._raw, buffer_size=READ_SIZE)

    @property
    def disk_bytes_read(self) -> int:
        """Bytes of the file on disk consumed so far (read ahead included)."""
        return self._disk_position()

    def describe_offset(self, offset: int) -> str:
        """How to say "byte ``offset``" of this stream to a user."""
        return f"byte {offset:,}" if self.compression is None else f"decompressed byte {offset:,}"

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> "ByteStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

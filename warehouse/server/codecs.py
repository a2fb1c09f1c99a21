"""HTTP body compression as ClickHouse speaks it: gzip, deflate, zstd and lz4 (frame)."""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any, Protocol, cast

import lz4.frame
import zstandard

__all__ = ["SUPPORTED", "Encoder", "RawBody", "Reader", "check_encoding", "choose_encoding", "encoder", "reader"]

SUPPORTED = ("lz4", "zstd", "gzip", "deflate")


class Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Encoder(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class _Lz4Encoder:
    def __init__(self) -> None:
        self._c = lz4.frame.LZ4FrameCompressor()
        self._begun = False

    def compress(self, data: bytes) -> bytes:
        head = b"" if self._begun else self._c.begin()
        self._begun = True
        return head + bytes(self._c.compress(data))

    def flush(self) -> bytes:
        head = b"" if self._begun else self._c.begin()
        self._begun = True
        return head + bytes(self._c.flush())


class _ZstdEncoder:
    def __init__(self) -> None:
        self._c = zstandard.ZstdCompressor(level=3).compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._c.compress(data)

    def flush(self) -> bytes:
        return self._c.flush()


class RawBody(io.RawIOBase):
    """The compressed request body as a file, counting the bytes the decoder has taken."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            self._pending = next(self._chunks, b"")
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self.consumed += n
        return n


class _DeflateReader:
    """zlib-wrapped deflate with bounded output per read (zlib has no file reader)."""

    def __init__(self, source: RawBody) -> None:
        self._source = source
        self._d = zlib.decompressobj()

    def read(self, size: int = -1, /) -> bytes:
        while not self._d.eof:
            data = self._d.unconsumed_tail or self._source.read(1 << 16)
            if not data:
                return self._d.flush()
            out = self._d.decompress(data, max(size, 0))
            if out:
                return out
        return b""


# Every reader returns at most ``size`` bytes per read, however much a few input
# bytes expand to: a decompression bomb is stopped by the caller's limits, never
# materialised in memory.
_READERS: dict[str, Callable[[RawBody], Reader]] = {
    "gzip": lambda src: gzip.GzipFile(fileobj=src, mode="rb"),
    "x-gzip": lambda src: gzip.GzipFile(fileobj=src, mode="rb"),
    "deflate": _DeflateReader,
    "zstd": lambda src: zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], src), read_across_frames=True),
    "lz4": lambda src: lz4.frame.LZ4FrameFile(src, mode="rb"),
}

_ENCODERS: dict[str, Callable[[], Encoder]] = {
    "gzip": lambda: zlib.compressobj(3, zlib.DEFLATED, 16 + zlib.MAX_WBITS),
    "deflate": lambda: zlib.compressobj(3),
    "zstd": _ZstdEncoder,
    "lz4": _Lz4Encoder,
}


def check_encoding(content_encoding: str) -> str | None:
    """The codec name for a Content-Encoding; None for identity.

    Raises LookupError for an encoding ClickHouse would not accept here.
    """
    name = content_encoding.strip().lower()
    if name in ("", "identity", "none"):
        return None
    if name not in _READERS:
        raise LookupError(
            f"Unknown HTTP compression method {content_encoding!r}; supported: {', '.join(SUPPORTED)}"
        )
    return name


def reader(name: str, source: RawBody) -> Reader:
    return _READERS[name](source)


def choose_encoding(accept_encoding: str) -> str | None:
    """The first encoding in Accept-Encoding that we can produce."""
    for part in accept_encoding.split(","):
        name = part.split(";", 1)[0].strip().lower()
        if name in _ENCODERS:
            return name
    return None


def encoder(name: str) -> Encoder:
    return _ENCODERS[name]()

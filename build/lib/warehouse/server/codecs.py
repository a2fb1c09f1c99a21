"""HTTP body compression as ClickHouse speaks it: gzip, deflate, zstd and lz4 (frame)."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Protocol

import lz4.frame
import zstandard

__all__ = ["SUPPORTED", "Decoder", "Encoder", "choose_encoding", "decoder", "encoder"]

SUPPORTED = ("lz4", "zstd", "gzip", "deflate")


class Decoder(Protocol):
    def decompress(self, data: bytes) -> bytes: ...


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


class _Lz4Decoder:
    def __init__(self) -> None:
        self._d = lz4.frame.LZ4FrameDecompressor()

    def decompress(self, data: bytes) -> bytes:
        out = []
        # A body may hold several concatenated frames (one per streamed chunk).
        while data:
            out.append(self._d.decompress(data))
            if not self._d.eof:
                break
            data = self._d.unused_data
            self._d = lz4.frame.LZ4FrameDecompressor()
        return b"".join(out)


_DECODERS: dict[str, Callable[[], Decoder]] = {
    "gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
    "x-gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
    "deflate": lambda: zlib.decompressobj(),
    "zstd": lambda: zstandard.ZstdDecompressor().decompressobj(),
    "lz4": _Lz4Decoder,
}

_ENCODERS: dict[str, Callable[[], Encoder]] = {
    "gzip": lambda: zlib.compressobj(3, zlib.DEFLATED, 16 + zlib.MAX_WBITS),
    "deflate": lambda: zlib.compressobj(3),
    "zstd": _ZstdEncoder,
    "lz4": _Lz4Encoder,
}


def decoder(content_encoding: str) -> Decoder | None:
    """A streaming decoder for a Content-Encoding; None for identity.

    Raises LookupError for an encoding ClickHouse would not accept here.
    """
    name = content_encoding.strip().lower()
    if name in ("", "identity", "none"):
        return None
    try:
        return _DECODERS[name]()
    except KeyError:
        raise LookupError(
            f"Unknown HTTP compression method {content_encoding!r}; supported: {', '.join(SUPPORTED)}"
        ) from None


def choose_encoding(accept_encoding: str) -> str | None:
    """The first encoding in Accept-Encoding that we can produce."""
    for part in accept_encoding.split(","):
        name = part.split(";", 1)[0].strip().lower()
        if name in _ENCODERS:
            return name
    return None


def encoder(name: str) -> Encoder:
    return _ENCODERS[name]()

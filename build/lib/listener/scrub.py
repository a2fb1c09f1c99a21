"""Error text safe to store: secrets masked, length bounded."""

from __future__ import annotations

import re

from .contract import MAX_ERROR_MESSAGE

__all__ = ["scrub"]

_PATTERNS = (
    # scheme://user:password@host -> scheme://user:***@host
    (re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s]*):[^@/\s]+@"), r"\1:***@"),
    # Authorization headers and bearer / basic tokens
    (re.compile(r"\b(Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE), r"\1 ***"),
    # password=..., "api_key": "...", secret: ...
    (re.compile(
        r"""(["']?\b(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|client[_-]?secret)\b["']?"""
        r"""\s*[:=]\s*)(["']?)[^\s"',;&]+""",
        re.IGNORECASE), r"\1\2***"),
)
_TRUNCATED = " …[truncated]"


def scrub(text: str, limit: int = MAX_ERROR_MESSAGE) -> str:
    """Mask obvious secrets, then cut to ``limit`` characters."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    if len(text) > limit:
        text = text[: limit - len(_TRUNCATED)] + _TRUNCATED
    return text

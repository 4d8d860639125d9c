"""The few undocumented internals of our dependencies we rely on, each measured, all here.

Each one saves measurable CPU on the hot path (docs/performance.md) and each falls back to the
documented behaviour when the internal is not there. ``tests/test_internals.py`` fails loudly
when a dependency changes one of them, so an upgrade cannot silently lose the gain.

- asyncio's selector socket transport reads ``max_size`` (256 KiB) per ``recv()``: a buffer
  above glibc's mmap threshold, so every frame received cost an mmap, a page fault, an mremap
  and a munmap (~15 us a frame). ``limit_read_size`` makes it read 64 KiB.
- aiohttp's client WebSocket keeps its transport on its private writer (``ws._writer``);
  ``client_transport`` finds it so the client reads 64 KiB at a time too (25.5k -> 30.9k get/s
  at 50 connections).
- structlog binds context-local values in one ``ContextVar`` per key; ``structlog_var`` finds
  the one for a key through the token ``bind_contextvars`` returns, so a frame binds its request
  id with one ``set``/``reset`` instead of ``bind_contextvars``/``reset_contextvars`` and their
  keyword dicts (part of get's 69 -> 28 us per request).
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import structlog

# Bytes asked of each recv() on a socket (see limit_read_size).
READ_SIZE = 64 * 1024


def limit_read_size(transport: asyncio.BaseTransport | None) -> None:
    """Make asyncio's selector transport read ``READ_SIZE`` bytes at a time, not 256 KiB.

    Other transports (uvloop's, TLS) have no ``max_size`` of their own and are left alone.
    """
    size = getattr(transport, "max_size", None)
    if type(size) is int and size > READ_SIZE:
        transport.max_size = READ_SIZE  # type: ignore[union-attr]


def client_transport(ws: Any) -> asyncio.BaseTransport | None:
    """The transport under an aiohttp ``ClientWebSocketResponse`` (None if not found)."""
    transport = getattr(getattr(ws, "_writer", None), "transport", None)
    return transport if isinstance(transport, asyncio.BaseTransport) else None


def structlog_var(key: str) -> contextvars.ContextVar[Any]:
    """The ContextVar behind structlog's context-local ``key`` (the one ``bind_contextvars``
    sets and ``merge_contextvars`` reads), found through the token that binding it returns."""
    token = structlog.contextvars.bind_contextvars(**{key: None})[key]
    token.var.reset(token)
    return token.var

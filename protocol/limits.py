"""Size limits that both ends of the wire agree on."""

from __future__ import annotations

CHUNK_BYTES = 1 << 20
"""Streamed blobs and results travel in chunks of at most this many bytes."""

MAX_MESSAGE_BYTES = 4 << 20
"""A single gRPC message may not exceed this (chunks plus framing fit well inside)."""

SHA256_HEX_LEN = 64


MAX_NAME_CHARS = 64
"""Longest worker name accepted at registration."""

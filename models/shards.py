"""Token shards: int32 token arrays as zstd-compressed little-endian bytes.

A shard is pure data (no pickle, no code), decoded with a size cap so a corrupt or hostile
blob cannot exhaust memory.
"""

from __future__ import annotations

import numpy as np
import zstandard

from swarm.protocol.errors import ConfigError

MAX_SHARD_TOKENS = 64 * 1024 * 1024


def encode_shard(tokens: np.ndarray) -> bytes:
    """Compress a 1-D token array."""
    array = np.ascontiguousarray(tokens, dtype="<i4")
    if array.ndim != 1:
        raise ConfigError(f"a token shard is 1-D; got shape {array.shape}")
    return zstandard.ZstdCompressor(level=10).compress(array.tobytes())


def decompress_bounded(data: bytes, limit: int, what: str) -> bytes:
    """Decompress one zstd frame of at most `limit` bytes; raises `zstandard.ZstdError` if bad.

    One-shot decompression trusts the size a frame declares, so that size is checked first.
    """
    declared = zstandard.frame_content_size(data)
    if declared > limit:
        raise ConfigError(f"{what} declares {declared} bytes, over the {limit} limit")
    return zstandard.ZstdDecompressor().decompress(data, max_output_size=limit)


def decode_shard(data: bytes, vocab_size: int) -> np.ndarray:
    """Decompress a shard and check every token id is below `vocab_size`."""
    try:
        raw = decompress_bounded(data, MAX_SHARD_TOKENS * 4, "token shard")
    except zstandard.ZstdError as exc:
        raise ConfigError(f"token shard is not valid zstd data: {exc}") from None
    if len(raw) % 4:
        raise ConfigError(f"token shard holds {len(raw)} bytes, not a whole number of int32")
    tokens = np.frombuffer(raw, dtype="<i4").astype(np.int64)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ConfigError(f"token shard has ids outside [0, {vocab_size})")
    return tokens


def split_tokens(tokens: np.ndarray, num_shards: int) -> list[np.ndarray]:
    """Split a token stream into `num_shards` contiguous, nearly equal parts."""
    if num_shards < 1:
        raise ConfigError(f"num_shards must be >= 1, got {num_shards}")
    return [np.ascontiguousarray(part) for part in np.array_split(tokens, num_shards)]

"""Token shards: zstd-compressed int32 arrays, and splitting a token stream."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from swarm.models import decode_shard, encode_shard, split_tokens
from swarm.models import shards as shards_module
from swarm.protocol.errors import ConfigError

token_arrays = hnp.arrays(np.int32, st.integers(0, 2000), elements=st.integers(0, 255))


@settings(max_examples=50, deadline=None)
@given(tokens=token_arrays)
def test_shards_round_trip(tokens: np.ndarray) -> None:
    decoded = decode_shard(encode_shard(tokens), vocab_size=256)
    assert decoded.dtype == np.int64
    np.testing.assert_array_equal(decoded, tokens)


def test_shard_is_little_endian_int32_inside_zstd() -> None:
    raw = zstandard.ZstdDecompressor().decompress(encode_shard(np.array([1, 258])))
    assert raw == b"\x01\x00\x00\x00\x02\x01\x00\x00"


def test_shard_of_a_repetitive_text_is_compressed() -> None:
    tokens = np.tile(np.arange(50, dtype=np.int32), 200)
    assert len(encode_shard(tokens)) < tokens.nbytes // 10


def test_two_dimensional_tokens_are_refused() -> None:
    with pytest.raises(ConfigError, match="1-D"):
        encode_shard(np.zeros((2, 3), dtype=np.int32))


@pytest.mark.parametrize("data", [b"", b"not zstd at all", b"\x28\xb5\x2f\xfd"])
def test_non_zstd_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(ConfigError, match="not valid zstd"):
        decode_shard(data, vocab_size=256)


def test_truncated_shard_is_refused() -> None:
    data = encode_shard(np.arange(1000, dtype=np.int32) % 256)
    with pytest.raises(ConfigError):
        decode_shard(data[: len(data) // 2], vocab_size=256)


@pytest.mark.parametrize("bad", [256, 1000, -1, -(2**31)])
def test_out_of_vocabulary_ids_are_refused(bad: int) -> None:
    data = encode_shard(np.array([0, 5, bad, 7], dtype=np.int32))
    with pytest.raises(ConfigError, match=r"outside \[0, 256\)"):
        decode_shard(data, vocab_size=256)


def test_the_largest_id_is_accepted() -> None:
    assert decode_shard(encode_shard(np.array([255])), vocab_size=256).tolist() == [255]


@pytest.mark.parametrize("size", [1, 5, 7, 4097])
def test_sizes_that_are_not_whole_int32s_are_refused(size: int) -> None:
    data = zstandard.ZstdCompressor().compress(b"\x00" * size)
    with pytest.raises(ConfigError, match="not a whole number of int32"):
        decode_shard(data, vocab_size=256)


def test_streamed_frames_without_a_declared_size_decode() -> None:
    compressor = zstandard.ZstdCompressor().compressobj()
    tokens = np.arange(100, dtype="<i4")
    data = compressor.compress(tokens.tobytes()) + compressor.flush()
    np.testing.assert_array_equal(decode_shard(data, vocab_size=256), tokens)


def _zstd_stream(raw: bytes) -> bytes:
    """A zstd frame written in streaming mode, which does not declare its content size."""
    compressor = zstandard.ZstdCompressor().compressobj()
    return compressor.compress(raw) + compressor.flush()


def test_streamed_shard_over_the_token_cap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards_module, "MAX_SHARD_TOKENS", 64)
    at_cap = np.zeros(64, dtype="<i4").tobytes()
    assert len(decode_shard(_zstd_stream(at_cap), vocab_size=256)) == 64
    with pytest.raises(ConfigError):
        decode_shard(_zstd_stream(at_cap + b"\x00" * 4), vocab_size=256)


def test_sized_shard_over_the_token_cap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards_module, "MAX_SHARD_TOKENS", 64)
    data = zstandard.ZstdCompressor().compress(np.zeros(65, dtype="<i4").tobytes())
    with pytest.raises(ConfigError):
        decode_shard(data, vocab_size=256)


@settings(max_examples=50, deadline=None)
@given(length=st.integers(0, 500), num_shards=st.integers(1, 40))
def test_split_covers_the_stream_in_order_with_near_equal_parts(
    length: int, num_shards: int
) -> None:
    tokens = np.arange(length, dtype=np.int32)
    parts = split_tokens(tokens, num_shards)
    assert len(parts) == num_shards
    np.testing.assert_array_equal(np.concatenate(parts), tokens)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert all(p.flags["C_CONTIGUOUS"] for p in parts)


@pytest.mark.parametrize("num_shards", [0, -3])
def test_split_refuses_fewer_than_one_shard(num_shards: int) -> None:
    with pytest.raises(ConfigError, match="num_shards must be >= 1"):
        split_tokens(np.arange(10), num_shards)

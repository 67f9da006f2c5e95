"""Top-k (with its three index codings), the seeded random subset, and the subset hash."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from swarm.compression import RandomK, TopK, random_subset_mask
from swarm.compression.stages import MAX_SEED
from swarm.protocol.errors import CompressionError

BIG = float(np.float32(1e30))
MASK32 = 2**32 - 1

vectors = hnp.arrays(
    np.float32,
    st.integers(0, 400),
    elements=st.one_of(st.just(0.0), st.floats(-10, 10, width=32), st.floats(-BIG, BIG, width=32)),
).map(lambda a: torch.from_numpy(a.copy()))
fractions = st.sampled_from([0.001, 0.01, 0.1, 0.25, 0.5, 0.9, 1.0]) | st.floats(1e-4, 1.0)


def _no_rest(inner: torch.Tensor) -> float:
    return 0.0


def _topk_roundtrip(stage: TopK, x: torch.Tensor) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Encode, check the declared sizes, decode with the inner vector passed through as is."""
    shape = (x.numel(),)
    inner, parts, meta = stage.encode(x, shape, 0, {})
    assert stage.inner_numel(x.numel(), shape, meta) == inner.numel()
    assert [len(p) for p in parts] == stage.part_sizes(x.numel(), shape, meta)
    assert sum(len(p) for p in parts) <= stage.max_part_bytes(x.numel(), shape)
    assert inner.numel() <= stage.max_inner_numel(x.numel(), shape)
    decoded = stage.decode(inner, parts, x.numel(), shape, meta)
    assert decoded.shape == (x.numel(),)
    return inner, meta, decoded


# --- TopK ------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(x=vectors, fraction=fractions)
def test_topk_keeps_exactly_the_largest_magnitudes(x: torch.Tensor, fraction: float) -> None:
    stage = TopK(fraction)
    numel = x.numel()
    inner, meta, decoded = _topk_roundtrip(stage, x)
    k = min(numel, max(1, math.ceil(fraction * numel))) if numel else 0
    assert inner.numel() == k == meta["k"]
    # The kept values are the k largest magnitudes (ties broken either way) ...
    top = torch.sort(x.abs(), descending=True).values[:k]
    assert torch.equal(torch.sort(inner.abs(), descending=True).values, top)
    # ... sent exactly, at their positions; everything else decodes to zero.
    kept = decoded != 0
    assert torch.equal(decoded[kept], x[kept])
    assert int(kept.sum()) == int((inner != 0).sum())
    error = float(torch.linalg.vector_norm((x - decoded).double()))
    assert error <= stage.error_bound(x, (numel,), 0, {}, _no_rest) * (1 + 1e-9)


@settings(max_examples=100, deadline=None)
@given(
    numel=st.integers(2, 3000),
    data=st.data(),
)
def test_topk_sends_the_positions_in_the_cheapest_coding(numel: int, data: st.DataObject) -> None:
    """Distinct magnitudes at chosen positions, so exactly those positions are the top k."""
    positions = data.draw(
        st.lists(st.integers(0, numel - 1), min_size=1, max_size=min(numel - 1, 200), unique=True)
    )
    k = len(positions)
    stage = TopK(fraction=(k - 0.5) / numel)
    assert stage.count(numel) == k
    x = torch.full((numel,), 0.001)
    x[torch.tensor(positions)] = torch.arange(k, dtype=torch.float32) + 1.0
    inner, meta, decoded = _topk_roundtrip(stage, x)
    assert torch.equal(decoded, torch.where(x >= 1.0, x, 0.0))
    ordered = sorted(positions)
    gaps = np.diff([-1, *ordered])
    costs = {"bitmap": -(-numel // 8), "u32": 4 * k}
    if gaps.max() < 1 << 16:
        costs["gap16"] = 2 * k
    costs["varint"] = sum(1 + (g - 1 >= 128) + (g - 1 >= 1 << 14) for g in gaps)
    assert stage.part_sizes(numel, (numel,), meta) == [min(costs.values())]
    assert costs[meta["index"]] == min(costs.values())
    # Inner values come in position order.
    assert inner.tolist() == x[torch.tensor(ordered)].tolist()


def _spiky(numel: int, positions: list[int]) -> torch.Tensor:
    x = torch.linspace(0.001, 0.002, numel)
    x[torch.tensor(positions)] = torch.arange(1, len(positions) + 1, dtype=torch.float32) * -10
    return x


@pytest.mark.parametrize(
    ("numel", "fraction", "offset", "coding", "index_bytes"),
    [
        (100, 0.5, 0, "bitmap", 13),  # 50 of 100: a 13-byte bitmap beats 50 bytes of gaps
        (1000, 0.01, 0, "varint", 10),  # 10 of 1000: 1-byte gaps beat a 125-byte bitmap
        (20_000, 0.0005, 200, "gap16", 20),  # gaps of 200 and 2000: 2 bytes either way
        (3_000_000, 1e-6, 0, "varint", 7),  # gaps of a million: 3-byte varints beat u32
    ],
)
def test_each_index_coding_round_trips(
    numel: int, fraction: float, offset: int, coding: str, index_bytes: int
) -> None:
    # (u32 positions are cheaper only for gaps of 2**28 and more.)
    stage = TopK(fraction)
    k = stage.count(numel)
    positions = [offset + i * (numel // k) for i in range(k)]
    x = _spiky(numel, positions)
    _, meta, decoded = _topk_roundtrip(stage, x)
    extra = {"bytes": index_bytes} if coding == "varint" else {}
    assert meta == {"k": k, "index": coding, **extra}
    assert stage.part_sizes(numel, (numel,), meta) == [index_bytes]
    assert torch.nonzero(decoded).flatten().tolist() == positions
    assert torch.equal(decoded[positions], x[positions])


def test_u32_positions_still_decode() -> None:
    stage = TopK(0.003)
    part = np.asarray([3, 70, 999], dtype="<i4").tobytes()
    decoded = stage.decode(torch.ones(3), [part], 1000, (1000,), {"k": 3, "index": "u32"})
    assert torch.nonzero(decoded).flatten().tolist() == [3, 70, 999]


@pytest.mark.parametrize("numel", [1, 2, 7])
def test_topk_that_keeps_everything_sends_no_indices(numel: int) -> None:
    stage = TopK(1.0)
    x = torch.arange(numel, dtype=torch.float32) - 3
    _, meta, decoded = _topk_roundtrip(stage, x)
    assert meta == {"k": numel, "index": "all"}
    assert stage.part_sizes(numel, (numel,), meta) == []
    assert torch.equal(decoded, x)


def test_topk_keeps_at_least_one_element_and_none_of_nothing() -> None:
    assert TopK(0.0001).count(10) == 1
    assert TopK(0.5).count(0) == 0
    assert TopK(0.5).count(3) == 2
    _, meta, decoded = _topk_roundtrip(TopK(0.5), torch.zeros(0))
    assert meta["k"] == 0
    assert decoded.numel() == 0


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, math.nan, math.inf])
def test_topk_and_random_reject_fractions_outside_zero_to_one(fraction: float) -> None:
    with pytest.raises(CompressionError, match="fraction"):
        TopK(fraction)
    with pytest.raises(CompressionError, match="fraction"):
        RandomK(fraction)


def _valid(numel: int = 1000, fraction: float = 0.01) -> tuple[TopK, dict, list[bytes]]:
    stage = TopK(fraction)
    _, parts, meta = stage.encode(torch.randn(numel), (numel,), 0, {})
    return stage, meta, parts


@pytest.mark.parametrize(
    "meta",
    [
        {"k": 11, "index": "gap16"},  # not the count for this fraction
        {"k": 0, "index": "gap16"},
        {"k": True, "index": "gap16"},
        {"k": 10.0, "index": "gap16"},
        {"k": 1001, "index": "gap16"},
        {"index": "gap16"},
    ],
)
def test_topk_rejects_a_wrong_count(meta: dict) -> None:
    stage, _, _ = _valid()
    with pytest.raises(CompressionError, match="topk"):
        stage.inner_numel(1000, (1000,), meta)


@pytest.mark.parametrize("index", ["gap8", "all", None, ["bitmap"]])
def test_topk_rejects_an_unknown_index_coding(index: object) -> None:
    stage, _, _ = _valid()
    meta = {"k": 10, "index": index}
    stage.inner_numel(1000, (1000,), meta)
    with pytest.raises(CompressionError, match="index"):
        stage.part_sizes(1000, (1000,), meta)


def test_topk_rejects_a_bitmap_marking_the_wrong_count() -> None:
    stage = TopK(0.5)
    inner = torch.ones(4)
    for bitmap in (b"\x0f", b"\x1f", b"\x07"):  # 4 of 8 is right; 5 and 3 are not
        meta = {"k": 4, "index": "bitmap"}
        if bitmap == b"\x0f":
            assert stage.decode(inner, [bitmap], 8, (8,), meta).tolist() == [1.0] * 4 + [0.0] * 4
        else:
            with pytest.raises(CompressionError, match="bitmap"):
                stage.decode(inner, [bitmap], 8, (8,), meta)


@pytest.mark.parametrize(
    "gaps",
    [[1, 0, 3], [1, 2, 998], [1000, 1, 1]],  # zero gap; runs past 1000; starts past the end
)
def test_topk_rejects_bad_gaps(gaps: list[int]) -> None:
    stage = TopK(0.003)
    part = np.asarray(gaps, dtype="<u2").tobytes()
    with pytest.raises(CompressionError, match="gaps"):
        stage.decode(torch.ones(3), [part], 1000, (1000,), {"k": 3, "index": "gap16"})


@pytest.mark.parametrize(
    ("part", "message"),
    [
        (b"\x01\x80\x00", "hold 2 values, not 3"),
        (b"\x01\x00\x02\x03", "hold 4 values, not 3"),
        (b"\x01\x00\x82", "not 3"),  # the last value never ends
        (b"\x00\x00\xe7\x07", "run past the end"),  # 0, 1, then 1000
        (b"\x00\x80\x80\x80\x80\x80\x01\x00", "longer than 5 bytes"),
    ],
)
def test_topk_rejects_bad_varint_gaps(part: bytes, message: str) -> None:
    stage = TopK(0.003)
    meta = {"k": 3, "index": "varint", "bytes": len(part)}
    with pytest.raises(CompressionError, match=message):
        stage.part_sizes(1000, (1000,), meta)
        stage.decode(torch.ones(3), [part], 1000, (1000,), meta)


@pytest.mark.parametrize("size", [2, 13, None, True, 1.5])
def test_topk_rejects_a_varint_size_outside_what_the_encoder_would_send(size: object) -> None:
    # At least a byte per position, and never more than the 12 bytes of three u32 positions.
    with pytest.raises(CompressionError, match="bytes"):
        TopK(0.003).part_sizes(1000, (1000,), {"k": 3, "index": "varint", "bytes": size})


@pytest.mark.parametrize(
    "indices",
    [[0, 5, 5], [3, 2, 1], [-1, 2, 3], [1, 2, 1000], [0, 1, 2**31 - 1]],
)
def test_topk_rejects_bad_u32_positions(indices: list[int]) -> None:
    stage = TopK(0.003)
    part = np.asarray(indices, dtype="<i4").tobytes()
    with pytest.raises(CompressionError, match="indices"):
        stage.decode(torch.ones(3), [part], 1000, (1000,), {"k": 3, "index": "u32"})


def test_topk_spec() -> None:
    assert TopK(0.01).spec() == "topk:0.01"
    assert TopK(1).spec() == "topk:1.0"
    assert TopK(0.25).biased


# --- random_subset_mask ----------------------------------------------------------------------


def _fmix32(z: int) -> int:
    z ^= z >> 16
    z = (z * 0x85EBCA6B) & MASK32
    z ^= z >> 13
    z = (z * 0xC2B2AE35) & MASK32
    return z ^ (z >> 16)


def _hash_reference(seed: int, position: int) -> int:
    """The documented hash, fmix32(i * golden + key(seed)), in Python's unbounded integers."""
    key = _fmix32((seed ^ (seed >> 32)) & MASK32)
    return _fmix32((position * 0x9E3779B1 + key) & MASK32)


def test_random_subset_mask_is_pinned() -> None:
    """These values are on the wire: workers and coordinator must draw the same subset forever."""
    assert np.flatnonzero(random_subset_mask(12345, 64, 0.25)).tolist() == [
        1, 4, 14, 16, 24, 26, 27, 32, 33, 37, 39, 41, 43, 45, 55, 57, 58, 60,
    ]  # fmt: skip
    assert np.flatnonzero(random_subset_mask(0, 32, 0.5)).tolist() == [
        0, 1, 10, 12, 14, 17, 18, 23, 24, 25, 28, 30,
    ]  # fmt: skip
    mask = random_subset_mask(MAX_SEED, 100_000, 0.1)
    assert int(mask.sum()) == 10013
    digest = hashlib.sha256(np.packbits(mask).tobytes()).hexdigest()
    assert digest == "71f894c0a6453c2206f392321daba4a78dd8376add218a12fde034e76c08fbf6"


def test_random_subset_mask_refuses_tensors_beyond_32_bit_positions() -> None:
    with pytest.raises(CompressionError, match=r"2\*\*32"):
        random_subset_mask(0, 2**32, 0.5)


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, MAX_SEED),
    numel=st.integers(0, 300),
    fraction=st.floats(1e-3, 0.999),
)
def test_random_subset_mask_matches_the_documented_hash(
    seed: int, numel: int, fraction: float
) -> None:
    mask = random_subset_mask(seed, numel, fraction)
    assert mask.dtype == bool
    assert mask.shape == (numel,)
    threshold = int(fraction * 2.0**32)
    expected = [_hash_reference(seed, i) < threshold for i in range(numel)]
    assert mask.tolist() == expected
    # Counter based: a longer vector's mask starts with the shorter one's.
    assert random_subset_mask(seed, numel + 17, fraction)[:numel].tolist() == expected


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, MAX_SEED), fraction=st.sampled_from([0.01, 0.1, 0.5, 0.9]))
def test_random_subset_keeps_about_the_fraction(seed: int, fraction: float) -> None:
    numel = 20_000
    kept = int(random_subset_mask(seed, numel, fraction).sum())
    sigma = math.sqrt(numel * fraction * (1 - fraction))
    assert abs(kept - numel * fraction) < 6 * sigma
    assert random_subset_mask(seed, numel, 1.0).all()


def test_random_subset_mask_depends_on_the_seed() -> None:
    masks = {random_subset_mask(seed, 256, 0.5).tobytes() for seed in range(20)}
    assert len(masks) == 20


# --- RandomK ---------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(x=vectors, fraction=fractions, seed=st.integers(0, MAX_SEED))
def test_random_subset_round_trips_the_kept_elements(
    x: torch.Tensor, fraction: float, seed: int
) -> None:
    stage = RandomK(fraction)
    numel = x.numel()
    inner, parts, meta = stage.encode(x, (numel,), seed, {})
    assert parts == []
    assert meta == {"seed": seed}
    mask = torch.from_numpy(random_subset_mask(seed, numel, fraction))
    assert torch.equal(inner, x[mask])
    assert stage.inner_numel(numel, (numel,), meta) == inner.numel() <= numel
    assert stage.part_sizes(numel, (numel,), meta) == []
    decoded = stage.decode(inner, [], numel, (numel,), meta)
    assert torch.equal(decoded[mask], x[mask])
    assert (decoded[~mask] == 0).all()
    error = float(torch.linalg.vector_norm((x - decoded).double()))
    assert error <= stage.error_bound(x, (numel,), seed, {}, _no_rest) * (1 + 1e-9)


def test_random_subset_decoder_needs_only_the_seed() -> None:
    stage = RandomK(0.3)
    x = torch.randn(500)
    inner, _, meta = stage.encode(x, (500,), 99, {})
    other = RandomK(0.3).decode(inner, [], 500, (500,), {"seed": 99})
    assert torch.equal(other, stage.decode(inner, [], 500, (500,), meta))
    different = RandomK(0.3).encode(x, (500,), 100, {})[0]
    assert not torch.equal(different, inner)


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, True, 1.5, "3", None])
def test_random_subset_rejects_a_bad_seed(seed: object) -> None:
    with pytest.raises(CompressionError, match="seed"):
        RandomK(0.5).inner_numel(100, (100,), {"seed": seed})


def test_random_subset_spec() -> None:
    assert RandomK(0.2).spec() == "random:0.2"
    assert RandomK(0.2).max_inner_numel(50, (50,)) == 50
    assert RandomK(0.2).max_part_bytes(50, (50,)) == 0

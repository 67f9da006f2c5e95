"""Transform stages that keep a subset of the elements: top-k and a seeded random subset.

Top-k sends which elements it kept, as whichever is smallest of a bitmap over the input, 16-bit
gaps between positions, varint gaps (7 bits a byte: one byte for a gap under 128, which is the
usual case at 1% density), or 32-bit positions. The random subset sends nothing but a seed: both
sides draw the same subset from a counter-based hash (splitmix64 of seed and position), which is
the same on every platform and every library version, unlike a library's random generator.
CocktailSGD runs them in that order (random subset, then top-k of it), so the top-k bitmap
covers only the subset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np
import torch

from swarm.compression.stages import (
    MAX_SEED,
    Buffer,
    Meta,
    RestBound,
    TensorState,
    TransformStage,
    meta_choice,
    meta_int,
    tensor_bytes,
    tensor_from_bytes,
)
from swarm.protocol.errors import CompressionError

_INDEX_CODINGS = ("bitmap", "gap16", "varint", "u32")
_VARINT_MAX_BYTES = 5  # gaps below 2**35


@dataclass(frozen=True)
class _FractionStage(TransformStage):
    """A stage whose one argument is the fraction of elements it keeps."""

    fraction: float

    def __post_init__(self) -> None:
        if not (isinstance(self.fraction, float | int) and 0.0 < self.fraction <= 1.0):
            raise CompressionError(
                f"{self.name}: fraction must be in (0, 1], got {self.fraction!r}"
            )

    def spec(self) -> str:
        # repr: the shortest text that parses back to the same float.
        return f"{self.name}:{float(self.fraction)!r}"


@dataclass(frozen=True)
class TopK(_FractionStage):
    """Keep the `fraction` of elements with the largest magnitude (at least one)."""

    name: ClassVar[str] = "topk"
    fraction: float = 0.01

    def count(self, numel: int) -> int:
        return min(numel, max(1, math.ceil(self.fraction * numel))) if numel else 0

    def encode(
        self, x: torch.Tensor, shape: tuple[int, ...], seed: int, state: TensorState
    ) -> tuple[torch.Tensor, list[Buffer], Meta]:
        k = self.count(x.numel())
        if k == x.numel():
            return x, [], {"k": k, "index": "all"}
        indices = torch.topk(x.abs(), k, sorted=False).indices.sort().values
        coding, part = _encode_indices(indices, x.numel())
        meta: Meta = {"k": k, "index": coding}
        if coding == "varint":
            meta["bytes"] = len(part)
        return x[indices], [part], meta

    def inner_numel(self, numel: int, shape: tuple[int, ...], meta: Meta) -> int:
        k = meta_int(meta, "k", 0, numel, stage=self.spec())
        if k != self.count(numel):
            raise CompressionError(
                f"{self.spec()}: kept {k} of {numel}, expected {self.count(numel)}"
            )
        return k

    def part_sizes(self, numel: int, shape: tuple[int, ...], meta: Meta) -> list[int]:
        k = meta["k"]
        if k == numel:
            meta_choice(meta, "index", ("all",), stage=self.spec())
            return []
        coding = meta_choice(meta, "index", _INDEX_CODINGS, stage=self.spec())
        if coding == "varint":  # never more than the fixed codings the encoder compared it with
            most = min(_index_bytes("bitmap", k, numel), _index_bytes("u32", k, numel))
            return [meta_int(meta, "bytes", k, max(k, most), stage=self.spec())]
        return [_index_bytes(coding, k, numel)]

    def decode(
        self,
        inner: torch.Tensor,
        parts: list[Buffer],
        numel: int,
        shape: tuple[int, ...],
        meta: Meta,
    ) -> torch.Tensor:
        if meta["k"] == numel:
            return inner
        indices = _decode_indices(meta["index"], parts[0], meta["k"], numel)
        out = torch.zeros(numel, dtype=torch.float32)
        out[indices] = inner
        return out

    def error_bound(
        self,
        x: torch.Tensor,
        shape: tuple[int, ...],
        seed: int,
        state: TensorState,
        rest: RestBound,
    ) -> float:
        # Top-k is a contraction: what it drops has at most (1 - k/n) of the squared norm.
        numel = x.numel()
        if not numel:
            return 0.0
        k = self.count(numel)
        if k == numel:
            return rest(x)
        # The next stage sees the kept values in position order, as `encode` sends them.
        kept = torch.topk(x.abs(), k, sorted=False).indices.sort().values
        dropped = math.sqrt(max(0.0, 1.0 - k / numel)) * float(torch.linalg.vector_norm(x.double()))
        return dropped + rest(x[kept])

    def max_inner_numel(self, numel: int, shape: tuple[int, ...]) -> int:
        return self.count(numel)

    def max_part_bytes(self, numel: int, shape: tuple[int, ...]) -> int:
        k = self.count(numel)
        return min(_index_bytes("bitmap", k, numel), _index_bytes("u32", k, numel))


def _index_bytes(coding: str, k: int, numel: int) -> int:
    return {"bitmap": -(-numel // 8), "gap16": 2 * k, "u32": 4 * k}[coding]


def _varint_lengths(gaps: np.ndarray) -> np.ndarray:
    lengths = np.ones(len(gaps), dtype=np.int64)
    for bits in range(7, 7 * _VARINT_MAX_BYTES, 7):
        lengths += gaps >= 1 << bits
    return lengths


def _encode_varints(gaps: np.ndarray, lengths: np.ndarray) -> bytes:
    """Little-endian base-128 groups, the high bit set on every byte but a value's last."""
    starts = np.cumsum(lengths) - lengths
    out = np.empty(int(lengths.sum()), dtype=np.uint8)
    for j in range(int(lengths.max(initial=0))):
        rows = lengths > j
        more = (lengths[rows] - 1 > j).astype(np.uint8) << 7
        out[starts[rows] + j] = ((gaps[rows] >> (7 * j)) & 0x7F).astype(np.uint8) | more
    return out.tobytes()


def _decode_varints(data: Buffer, count: int) -> np.ndarray:
    """`count` (at least one) values encoded by `_encode_varints`, checked."""
    raw = np.frombuffer(data, dtype=np.uint8)
    last = (raw & 0x80) == 0
    if int(last.sum()) != count or not last[-1]:
        raise CompressionError(f"topk: the varint gaps hold {int(last.sum())} values, not {count}")
    value_of = np.concatenate([[0], np.cumsum(last)[:-1]])
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    place = np.arange(len(raw)) - starts[value_of]
    if int(place.max()) >= _VARINT_MAX_BYTES:
        raise CompressionError("topk: a varint gap is longer than 5 bytes")
    # Sums of 7-bit groups below 2**35 are exact in float64.
    weights = (raw & 0x7F).astype(np.float64) * np.exp2(7.0 * place)
    return np.bincount(value_of, weights=weights, minlength=count).astype(np.int64)


def _encode_indices(indices: torch.Tensor, numel: int) -> tuple[str, bytes]:
    k = indices.numel()
    gaps = torch.diff(indices, prepend=indices.new_full((1,), -1))
    costs = {"bitmap": _index_bytes("bitmap", k, numel), "u32": _index_bytes("u32", k, numel)}
    if k and int(gaps.max()) < 1 << 16:
        costs["gap16"] = _index_bytes("gap16", k, numel)
    varint_gaps = gaps.numpy() - 1
    lengths = _varint_lengths(varint_gaps)
    costs["varint"] = int(lengths.sum())
    coding = min(costs, key=lambda c: costs[c])
    if coding == "varint":
        return coding, _encode_varints(varint_gaps, lengths)
    if coding == "bitmap":
        mask = np.zeros(numel, dtype=bool)
        mask[indices.numpy()] = True
        return coding, np.packbits(mask, bitorder="little").tobytes()
    if coding == "gap16":
        return coding, tensor_bytes(gaps.to(torch.int32).to(torch.uint16))
    return coding, tensor_bytes(indices.to(torch.int32))


def _decode_indices(coding: str, data: Buffer, k: int, numel: int) -> torch.Tensor:
    if coding == "bitmap":
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=numel, bitorder="little")
        indices = torch.from_numpy(np.flatnonzero(bits))
        if indices.numel() != k:
            raise CompressionError(f"topk: the bitmap marks {indices.numel()} elements, not {k}")
        return indices
    if coding in ("gap16", "varint"):
        if coding == "gap16":
            gaps = tensor_from_bytes(data, torch.uint16, k).to(torch.int64)
        else:
            gaps = torch.from_numpy(_decode_varints(data, k)) + 1
        indices = torch.cumsum(gaps, 0) - 1
        if k and (int(gaps.min()) < 1 or int(indices[-1]) >= numel):
            raise CompressionError("topk: index gaps are zero or run past the end")
        return indices
    indices = tensor_from_bytes(data, torch.int32, k).to(torch.int64)
    if k and (
        int(indices[0]) < 0 or int(indices[-1]) >= numel or bool((torch.diff(indices) <= 0).any())
    ):
        raise CompressionError("topk: indices are out of range or not strictly increasing")
    return indices


def _fmix32(z: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, in place on a uint32 array."""
    z ^= z >> np.uint32(16)
    z *= np.uint32(0x85EBCA6B)
    z ^= z >> np.uint32(13)
    z *= np.uint32(0xC2B2AE35)
    z ^= z >> np.uint32(16)
    return z


def random_subset_mask(seed: int, numel: int, fraction: float) -> np.ndarray:
    """Which of `numel` positions a seeded random subset of about `fraction` keeps.

    Position i is kept when fmix32(i * golden + key(seed)) falls below fraction * 2**32: plain
    32-bit integer arithmetic, so it is the same on every platform and never changes.
    """
    if numel >= 2**32:
        raise CompressionError("random: tensors of 2**32 elements or more are not supported")
    if fraction >= 1.0:
        return np.ones(numel, dtype=bool)
    folded = np.array([(seed ^ (seed >> 32)) & 0xFFFFFFFF], dtype=np.uint32)
    key = _fmix32(folded)[0]
    with np.errstate(over="ignore"):
        z = np.arange(numel, dtype=np.uint32)
        z *= np.uint32(0x9E3779B1)
        z += key
        _fmix32(z)
    return z < np.uint32(min(int(fraction * 2.0**32), 2**32 - 1))


@lru_cache(maxsize=4)
def _subset_indices(seed: int, numel: int, fraction: float) -> torch.Tensor:
    # Cached: decoding asks for the same subset to size, then to place, the inner vector.
    return torch.from_numpy(np.flatnonzero(random_subset_mask(seed, numel, fraction)))


@dataclass(frozen=True)
class RandomK(_FractionStage):
    """Keep a seeded random subset of about `fraction` of the elements; only the seed travels."""

    name: ClassVar[str] = "random"
    fraction: float = 0.1

    def _indices(self, seed: int, numel: int) -> torch.Tensor:
        return _subset_indices(seed, numel, self.fraction)

    def encode(
        self, x: torch.Tensor, shape: tuple[int, ...], seed: int, state: TensorState
    ) -> tuple[torch.Tensor, list[Buffer], Meta]:
        return x[self._indices(seed, x.numel())], [], {"seed": seed}

    def inner_numel(self, numel: int, shape: tuple[int, ...], meta: Meta) -> int:
        seed = meta_int(meta, "seed", 0, MAX_SEED, stage=self.spec())
        return self._indices(seed, numel).numel()

    def decode(
        self,
        inner: torch.Tensor,
        parts: list[Buffer],
        numel: int,
        shape: tuple[int, ...],
        meta: Meta,
    ) -> torch.Tensor:
        out = torch.zeros(numel, dtype=torch.float32)
        out[self._indices(meta["seed"], numel)] = inner
        return out

    def error_bound(
        self,
        x: torch.Tensor,
        shape: tuple[int, ...],
        seed: int,
        state: TensorState,
        rest: RestBound,
    ) -> float:
        # A random subset can drop everything; in expectation it drops (1 - fraction) of ||x||^2.
        return float(torch.linalg.vector_norm(x.double())) + rest(x[self._indices(seed, x.numel())])

    def max_inner_numel(self, numel: int, shape: tuple[int, ...]) -> int:
        return numel

    def max_part_bytes(self, numel: int, shape: tuple[int, ...]) -> int:
        return 0

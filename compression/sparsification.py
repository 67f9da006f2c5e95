"""Transform stages that keep a subset of the elements: top-k and a seeded random subset.

Top-k sends which elements it kept, as whichever is smallest of a bitmap over the input, 16-bit
gaps between positions, or 32-bit positions. The random subset sends nothing but a seed: both
sides draw the same subset from a counter-based hash (splitmix64 of seed and position), which is
the same on every platform and every library version, unlike a library's random generator.
CocktailSGD runs them in that order (random subset, then top-k of it), so the top-k bitmap
covers only the subset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from swarm.compression.stages import (
    MAX_SEED,
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

_INDEX_CODINGS = ("bitmap", "gap16", "u32")


def _check_fraction(stage: str, fraction: float) -> None:
    if not (isinstance(fraction, float | int) and 0.0 < fraction <= 1.0):
        raise CompressionError(f"{stage}: fraction must be in (0, 1], got {fraction!r}")


def _fraction_spec(fraction: float) -> str:
    return f"{fraction:g}"


@dataclass(frozen=True)
class TopK(TransformStage):
    """Keep the `fraction` of elements with the largest magnitude (at least one)."""

    name: ClassVar[str] = "topk"
    fraction: float = 0.01

    def __post_init__(self) -> None:
        _check_fraction("topk", self.fraction)

    def spec(self) -> str:
        return f"topk:{_fraction_spec(self.fraction)}"

    def count(self, numel: int) -> int:
        return min(numel, max(1, math.ceil(self.fraction * numel))) if numel else 0

    def encode(
        self, x: torch.Tensor, shape: tuple[int, ...], seed: int, state: TensorState
    ) -> tuple[torch.Tensor, list[bytes], Meta]:
        k = self.count(x.numel())
        if k == x.numel():
            return x, [], {"k": k, "index": "all"}
        indices = torch.topk(x.abs(), k, sorted=False).indices.sort().values
        coding, part = _encode_indices(indices, x.numel())
        return x[indices], [part], {"k": k, "index": coding}

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
        return [_index_bytes(coding, k, numel)]

    def decode(
        self,
        inner: torch.Tensor,
        parts: list[bytes],
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
        kept = torch.topk(x.abs(), k, sorted=False).indices
        dropped = math.sqrt(max(0.0, 1.0 - k / numel)) * float(torch.linalg.vector_norm(x.double()))
        return dropped + rest(x[kept])

    def max_inner_numel(self, numel: int, shape: tuple[int, ...]) -> int:
        return self.count(numel)

    def max_part_bytes(self, numel: int, shape: tuple[int, ...]) -> int:
        k = self.count(numel)
        return min(_index_bytes("bitmap", k, numel), _index_bytes("u32", k, numel))


def _index_bytes(coding: str, k: int, numel: int) -> int:
    return {"bitmap": -(-numel // 8), "gap16": 2 * k, "u32": 4 * k}[coding]


def _encode_indices(indices: torch.Tensor, numel: int) -> tuple[str, bytes]:
    k = indices.numel()
    gaps = torch.diff(indices, prepend=indices.new_full((1,), -1))
    costs = {"bitmap": _index_bytes("bitmap", k, numel), "u32": _index_bytes("u32", k, numel)}
    if k and int(gaps.max()) < 1 << 16:
        costs["gap16"] = _index_bytes("gap16", k, numel)
    coding = min(costs, key=lambda c: costs[c])
    if coding == "bitmap":
        mask = np.zeros(numel, dtype=bool)
        mask[indices.numpy()] = True
        return coding, np.packbits(mask, bitorder="little").tobytes()
    if coding == "gap16":
        return coding, tensor_bytes(gaps.to(torch.int32).to(torch.uint16))
    return coding, tensor_bytes(indices.to(torch.int32))


def _decode_indices(coding: str, data: bytes, k: int, numel: int) -> torch.Tensor:
    if coding == "bitmap":
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=numel, bitorder="little")
        indices = torch.from_numpy(np.flatnonzero(bits))
        if indices.numel() != k:
            raise CompressionError(f"topk: the bitmap marks {indices.numel()} elements, not {k}")
        return indices
    if coding == "gap16":
        gaps = tensor_from_bytes(data, torch.uint16, k).to(torch.int64)
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


_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def random_subset_mask(seed: int, numel: int, fraction: float) -> np.ndarray:
    """Which of `numel` positions a seeded random subset of about `fraction` keeps.

    Position i is kept when splitmix64(seed, i) falls below fraction * 2**64; the hash is
    computed here in plain 64-bit integer arithmetic, so it never changes between versions.
    """
    with np.errstate(over="ignore"):
        z = np.arange(numel, dtype=np.uint64) + np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
        z = z * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E5F5)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    threshold = np.uint64(min(int(fraction * 2.0**64), 2**64 - 1))
    return z < threshold if fraction < 1.0 else np.ones(numel, dtype=bool)


@dataclass(frozen=True)
class RandomK(TransformStage):
    """Keep a seeded random subset of about `fraction` of the elements; only the seed travels."""

    name: ClassVar[str] = "random"
    fraction: float = 0.1

    def __post_init__(self) -> None:
        _check_fraction("random", self.fraction)

    def spec(self) -> str:
        return f"random:{_fraction_spec(self.fraction)}"

    def _indices(self, seed: int, numel: int) -> torch.Tensor:
        return torch.from_numpy(np.flatnonzero(random_subset_mask(seed, numel, self.fraction)))

    def encode(
        self, x: torch.Tensor, shape: tuple[int, ...], seed: int, state: TensorState
    ) -> tuple[torch.Tensor, list[bytes], Meta]:
        return x[self._indices(seed, x.numel())], [], {"seed": seed}

    def inner_numel(self, numel: int, shape: tuple[int, ...], meta: Meta) -> int:
        seed = meta_int(meta, "seed", 0, MAX_SEED, stage=self.spec())
        return int(random_subset_mask(seed, numel, self.fraction).sum())

    def part_sizes(self, numel: int, shape: tuple[int, ...], meta: Meta) -> list[int]:
        return []

    def decode(
        self,
        inner: torch.Tensor,
        parts: list[bytes],
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

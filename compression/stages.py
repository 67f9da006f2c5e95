"""The two kinds of codec stage, and the checks every stage shares.

A codec chain turns one float32 tensor into a few byte strings ("parts") and back:

    transform stages*  ->  one value stage  ->  optional zstd of the packed parts

A *transform* (top-k, random subset, PowerSGD) maps its input vector to a smaller inner vector
plus parts of its own (indices, a seed); the next stage encodes the inner vector. A *value*
stage (a cast or a blockwise quantizer) turns the last vector into bytes. Each stage declares an
error bound: an upper bound on the L2 error it adds, computed from its input before encoding.
A chain's bound is the sum of its stages' bounds (the triangle inequality), which is what the
property tests check.

Decoding trusts nothing: a stage first checks the metadata a (possibly hostile) header gives it
and says how many bytes each part must have, so nothing is allocated from unchecked numbers.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from swarm.protocol.errors import CompressionError

Meta = dict[str, Any]
Buffer = bytes | memoryview
TensorState = dict[str, torch.Tensor]
RestBound = Callable[[torch.Tensor], float]

MAX_SEED = 2**63 - 1


class Stage(ABC):
    """What every stage has: a name and a canonical spec string."""

    name: ClassVar[str]
    #: whether decode(encode(x)) differs from x in expectation, so error feedback is needed.
    biased: ClassVar[bool] = True

    @abstractmethod
    def spec(self) -> str:
        """The canonical text form, e.g. ``int8:block=64``; parsing it gives this stage back."""


class ValueStage(Stage):
    """The last lossy stage: a dense float vector to bytes."""

    @abstractmethod
    def encode(self, x: torch.Tensor, seed: int) -> tuple[list[Buffer], Meta]:
        """Encode a 1-D float32 vector."""

    @abstractmethod
    def part_sizes(self, numel: int, meta: Meta) -> list[int]:
        """Byte length of each part for a vector of `numel` elements; checks `meta`."""

    @abstractmethod
    def decode(self, parts: list[Buffer], numel: int, meta: Meta) -> torch.Tensor:
        """Decode parts of the sizes `part_sizes` gave into a 1-D float32 vector."""

    @abstractmethod
    def error_bound(self, x: torch.Tensor) -> float:
        """Upper bound on ``||x - decode(encode(x))||_2``."""

    def max_part_bytes(self, numel: int) -> int:
        """Largest total part size for `numel` elements."""
        return sum(self.part_sizes(numel, {}))


class TransformStage(Stage):
    """A stage that hands a smaller vector to the next stage."""

    #: whether the stage treats its input as a plain vector, so that several tensors can be
    #: encoded as one concatenated record (PowerSGD needs each matrix's own shape).
    elementwise: ClassVar[bool] = True

    @abstractmethod
    def encode(
        self, x: torch.Tensor, shape: tuple[int, ...], seed: int, state: TensorState
    ) -> tuple[torch.Tensor, list[Buffer], Meta]:
        """Return the inner vector, this stage's parts and its metadata.

        `state` is this tensor's codec state (a warm start); the stage may replace its entries.
        """

    @abstractmethod
    def inner_numel(self, numel: int, shape: tuple[int, ...], meta: Meta) -> int:
        """Length of the inner vector; checks `meta`."""

    def part_sizes(self, numel: int, shape: tuple[int, ...], meta: Meta) -> list[int]:
        """Byte length of each of this stage's parts; `meta` was checked by `inner_numel`.
        A stage whose output is the inner vector alone has none."""
        return []

    @abstractmethod
    def decode(
        self,
        inner: torch.Tensor,
        parts: list[Buffer],
        numel: int,
        shape: tuple[int, ...],
        meta: Meta,
    ) -> torch.Tensor:
        """Rebuild the 1-D input vector from the decoded inner vector and this stage's parts."""

    @abstractmethod
    def error_bound(
        self,
        x: torch.Tensor,
        shape: tuple[int, ...],
        seed: int,
        state: TensorState,
        rest: RestBound,
    ) -> float:
        """Upper bound on this stage's L2 error, given `rest`, the bound of the stages after it."""

    @abstractmethod
    def max_inner_numel(self, numel: int, shape: tuple[int, ...]) -> int:
        """Largest inner vector this stage can produce."""

    @abstractmethod
    def max_part_bytes(self, numel: int, shape: tuple[int, ...]) -> int:
        """Largest total size of this stage's own parts."""


def meta_int(meta: Meta, key: str, low: int, high: int, *, stage: str) -> int:
    """An integer field of untrusted metadata, checked against [low, high]."""
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CompressionError(
            f"{stage}: metadata field {key!r}={value!r} is not in [{low}, {high}]"
        )
    return value


def meta_choice(meta: Meta, key: str, choices: tuple[str, ...], *, stage: str) -> str:
    """A string field of untrusted metadata that must be one of `choices`."""
    value = meta.get(key)
    if value not in choices:
        raise CompressionError(f"{stage}: metadata field {key!r}={value!r} is not one of {choices}")
    return str(value)


def all_finite(x: torch.Tensor) -> bool:
    """Whether no element is NaN or infinite (min and max propagate both; one pass, no copy)."""
    if not x.numel():
        return True
    low, high = torch.aminmax(x)
    return math.isfinite(float(low)) and math.isfinite(float(high))


def as_vector(x: torch.Tensor) -> torch.Tensor:
    """A contiguous float32 CPU view (or copy) of `x`, flattened."""
    return x.detach().to(device="cpu", dtype=torch.float32).contiguous().reshape(-1)


def tensor_from_bytes(data: Buffer, dtype: torch.dtype, count: int) -> torch.Tensor:
    """`count` little-endian elements of `dtype`, copied out of `data` (never aliasing it)."""
    if count == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype, count=count)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor, without copying them."""
    t = t.contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]

"""Which chain each tensor gets: the job's chain for large matrices, 16 bits for the rest.

Norm weights and biases are small, sensitive and cheap to send, so they stay 16-bit however hard
the job compresses its matrices (CocktailSGD and PowerSGD treat them the same way). The policy is
part of a job's configuration and every payload header records it, so a decoder can insist on
the chain the job chose for each tensor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from swarm.compression.chains import Chain, parse_chain
from swarm.protocol.errors import CompressionError


@dataclass(frozen=True, kw_only=True)
class CompressionPolicy:
    """Attributes:
    chain: the codec chain for large tensors (a spec or preset name).
    small_chain: the chain for tensors with fewer than `small_elements` elements or one dimension.
    small_elements: the size below which a tensor counts as small.
    """

    chain: str = "fp16"
    small_chain: str = "fp16"
    small_elements: int = 4096

    def __post_init__(self) -> None:
        # Canonicalize, so two spellings of one chain make equal policies and equal headers.
        object.__setattr__(self, "chain", parse_chain(self.chain).spec)
        object.__setattr__(self, "small_chain", parse_chain(self.small_chain).spec)
        if (
            isinstance(self.small_elements, bool)
            or not isinstance(self.small_elements, int)
            or not 0 <= self.small_elements <= 2**40
        ):
            raise CompressionError(
                f"small_elements must be a whole number in [0, 2**40], got {self.small_elements!r}"
            )

    def is_small(self, shape: tuple[int, ...]) -> bool:
        numel = 1
        for dim in shape:
            numel *= dim
        return len(shape) < 2 or numel < self.small_elements

    def chain_for(self, shape: tuple[int, ...]) -> Chain:
        """The chain a tensor of `shape` is encoded with."""
        return parse_chain(self.small_chain if self.is_small(shape) else self.chain)

    @property
    def lossless(self) -> bool:
        return parse_chain(self.chain).lossless and parse_chain(self.small_chain).lossless

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: object) -> CompressionPolicy:
        """Rebuild a policy from a header, with a clear error for anything malformed."""
        if not isinstance(values, dict) or set(values) != {
            "chain",
            "small_chain",
            "small_elements",
        }:
            raise CompressionError("payload header has no valid compression policy")
        try:
            return cls(**values)
        except TypeError as exc:
            raise CompressionError(f"payload header has a malformed policy: {exc}") from None

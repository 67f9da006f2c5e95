"""Value stages: float casts and blockwise integer quantization.

Blockwise quantization splits the vector into blocks of `block` elements, stores one scale per
block (the block's largest magnitude over the largest code, as a bfloat16 rounded *up*, so no
element can overflow its code and scales never underflow the way float16 ones do for small
updates), and one signed code per element: int8 in [-127, 127] or int4 in [-7, 7], two to a
byte. Deterministic rounding errs by at most half a scale per element; stochastic rounding by
at most one scale, and is unbiased. Per-row activation codecs are the same quantizer with the
block set to the row length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from swarm.compression.stages import (
    MAX_SEED,
    Buffer,
    Meta,
    ValueStage,
    meta_int,
    tensor_bytes,
    tensor_from_bytes,
)
from swarm.protocol.errors import CompressionError

_CAST_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Round-to-nearest relative error, and half the smallest subnormal spacing (absolute error floor).
_CAST_ERRORS = {"fp32": (0.0, 0.0), "fp16": (2.0**-11, 2.0**-25), "bf16": (2.0**-8, 2.0**-134)}
_FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


@dataclass(frozen=True)
class Cast(ValueStage):
    """Store each element as fp32 (lossless), fp16 or bf16."""

    name: ClassVar[str] = "cast"
    dtype: str = "fp32"

    def __post_init__(self) -> None:
        if self.dtype not in _CAST_DTYPES:
            raise CompressionError(f"cast: unknown float type {self.dtype!r}")

    @property
    def biased(self) -> bool:  # type: ignore[override]
        return self.dtype != "fp32"

    def spec(self) -> str:
        return self.dtype

    def encode(self, x: torch.Tensor, seed: int) -> tuple[list[Buffer], Meta]:
        wire = _CAST_DTYPES[self.dtype]
        if wire is torch.float32:
            return [tensor_bytes(x)], {}
        cast = x.to(wire)
        if x.numel() and not torch.isfinite(cast).all():
            limit = float(torch.finfo(wire).max)
            raise CompressionError(
                f"{self.dtype}: a value exceeds the {self.dtype} range (+-{limit:g}); "
                "choose a quantizing codec (int8, int4) or fp32 for this job"
            )
        return [tensor_bytes(cast)], {}

    def part_sizes(self, numel: int, meta: Meta) -> list[int]:
        return [numel * _CAST_DTYPES[self.dtype].itemsize]

    def decode(self, parts: list[Buffer], numel: int, meta: Meta) -> torch.Tensor:
        wire = _CAST_DTYPES[self.dtype]
        return tensor_from_bytes(parts[0], wire, numel).to(torch.float32)

    def error_bound(self, x: torch.Tensor) -> float:
        relative, absolute = _CAST_ERRORS[self.dtype]
        if not relative:
            return 0.0
        per_element = x.abs() * relative + absolute
        return float(torch.linalg.vector_norm(per_element.double()))


def _scales_bf16_up(absmax: torch.Tensor, qmax: int) -> torch.Tensor:
    """absmax / qmax as bfloat16 bit patterns (int16), rounded towards +inf."""
    scale = (absmax / qmax).to(torch.float32)
    bits = scale.view(torch.int32).to(torch.int64)
    bits = (bits + 0xFFFF) & ~0xFFFF  # round the dropped mantissa bits up
    return (bits >> 16).to(torch.int16)


def _scales_to_float(bits: torch.Tensor) -> torch.Tensor:
    return (bits.to(torch.int32) << 16).view(torch.float32)


@dataclass(frozen=True)
class BlockQuant(ValueStage):
    """Blockwise symmetric integer quantization with a bfloat16 scale per block.

    Attributes:
        bits: 8 or 4.
        block: elements per scale.
        stochastic: round up or down at random in proportion to the remainder (unbiased).
    """

    name: ClassVar[str] = "quant"
    bits: int = 8
    block: int = 64
    stochastic: bool = False

    def __post_init__(self) -> None:
        if self.bits not in (8, 4):
            raise CompressionError(f"int{self.bits}: only 8- and 4-bit codes are supported")
        if not 2 <= self.block <= 1 << 20 or self.block % 2:
            raise CompressionError(f"int{self.bits}: block must be even, in [2, 1048576]")

    @property
    def qmax(self) -> int:
        return 127 if self.bits == 8 else 7

    @property
    def biased(self) -> bool:  # type: ignore[override]
        return not self.stochastic

    def spec(self) -> str:
        args = [f"block={self.block}"] + (["stochastic"] if self.stochastic else [])
        return f"int{self.bits}:" + ",".join(args)

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        pad = -x.numel() % self.block
        if pad:
            x = torch.cat([x, x.new_zeros(pad)])
        return x.view(-1, self.block)

    def encode(self, x: torch.Tensor, seed: int) -> tuple[list[Buffer], Meta]:
        blocks = self._blocks(x)
        scale_bits = _scales_bf16_up(_block_absmax(blocks), self.qmax)
        scales = _scales_to_float(scale_bits).unsqueeze(1)
        inverse = torch.where(scales > 0, 1.0 / scales, 0.0)
        if torch.isinf(inverse).any():  # subnormal scales: divide instead of multiplying
            scaled = torch.where(scales > 0, blocks / scales, 0.0)
        else:
            scaled = blocks * inverse
        meta: Meta = {}
        if self.stochastic:
            generator = torch.Generator().manual_seed(seed)
            noise = torch.rand(scaled.shape, generator=generator)
            codes = scaled.add_(noise).floor_()
            meta["seed"] = seed
        else:
            codes = scaled.round_()
        codes = codes.clamp_(-self.qmax, self.qmax).to(torch.int8).reshape(-1)[: x.numel()]
        if self.bits == 4:
            codes = _pack_int4(codes)
        return [tensor_bytes(scale_bits), tensor_bytes(codes)], meta

    def part_sizes(self, numel: int, meta: Meta) -> list[int]:
        if self.stochastic and "seed" in meta:
            meta_int(meta, "seed", 0, MAX_SEED, stage=self.spec())
        num_blocks = -(-numel // self.block)
        codes = numel if self.bits == 8 else -(-numel // 2)
        return [2 * num_blocks, codes]

    def decode(self, parts: list[Buffer], numel: int, meta: Meta) -> torch.Tensor:
        num_blocks = -(-numel // self.block)
        scales = _scales_to_float(tensor_from_bytes(parts[0], torch.int16, num_blocks))
        if not torch.isfinite(scales).all() or (scales < 0).any():
            raise CompressionError(f"{self.spec()}: a block scale is negative or not finite")
        if self.bits == 8:
            codes = tensor_from_bytes(parts[1], torch.int8, numel)
        else:
            codes = _unpack_int4(tensor_from_bytes(parts[1], torch.uint8, -(-numel // 2)), numel)
        if (
            codes.numel() and int(codes.min()) < -self.qmax
        ):  # -128 and -8: the only codes out of range
            raise CompressionError(f"{self.spec()}: a code is outside [-{self.qmax}, {self.qmax}]")
        values = self._blocks(codes.to(torch.float32)) * scales.unsqueeze(1)
        # Near the float32 maximum a rounded-up scale times the top code overflows; the true
        # value is within range, so saturating only reduces the error.
        return values.reshape(-1)[:numel].clamp_(-_FLOAT32_MAX, _FLOAT32_MAX)

    def max_abs_errors(self, x: torch.Tensor) -> torch.Tensor:
        """Per-element bound on |x - decode(encode(x))|: half a scale, or a whole one."""
        blocks = self._blocks(x)
        scales = _scales_to_float(_scales_bf16_up(_block_absmax(blocks), self.qmax))
        # The slack covers multiplying by a float32 reciprocal of the scale (a code can land an
        # ulp past a half step) and rounding the product on decode.
        per_block = scales * (1.0 if self.stochastic else 0.5) + scales * 2.0**-10 + _FLOAT32_TINY
        return per_block.repeat_interleave(self.block)[: x.numel()]

    def error_bound(self, x: torch.Tensor) -> float:
        return float(torch.linalg.vector_norm(self.max_abs_errors(x).double()))


def _block_absmax(blocks: torch.Tensor) -> torch.Tensor:
    # Two reductions without a temporary beat abs().amax() and vector_norm(inf) several times.
    return torch.maximum(blocks.amax(dim=1), blocks.amin(dim=1).neg_())


def _pack_int4(codes: torch.Tensor) -> torch.Tensor:
    nibbles = (codes + 8).to(torch.uint8)
    if nibbles.numel() % 2:
        nibbles = torch.cat([nibbles, nibbles.new_full((1,), 8)])
    pairs = nibbles.view(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def _unpack_int4(packed: torch.Tensor, numel: int) -> torch.Tensor:
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=1).reshape(-1)[:numel]


@dataclass(frozen=True)
class RowQuant:
    """Per-row 8- or 4-bit quantization of activations for pipeline traffic.

    Each row (the last dimension) gets its own scale, so one outlier token does not flatten
    the codes of every other token. The encoded form is the scales then the codes.
    """

    bits: int = 8

    def _layout(self, shape: tuple[int, ...]) -> tuple[BlockQuant, int, int]:
        """The quantizer, the row length padded to even (the int4 packer pairs values), and the
        padded element count."""
        width = shape[-1] + shape[-1] % 2
        numel = int(torch.Size(shape).numel()) // max(shape[-1], 1) * width
        return BlockQuant(bits=self.bits, block=max(2, width)), width, numel

    def encode(self, x: torch.Tensor) -> bytes:
        """Encode a tensor of shape (..., d)."""
        if x.dim() == 0:
            raise CompressionError("activation codec: a scalar has no rows")
        if x.numel() == 0:
            return b""
        stage, _, _ = self._layout(tuple(x.shape))
        rows = x.detach().to(torch.float32).reshape(-1, x.shape[-1])
        if x.shape[-1] % 2:  # pad each row to the even block length the packer needs
            rows = torch.cat([rows, rows.new_zeros(rows.shape[0], 1)], dim=1)
        parts, _ = stage.encode(rows.reshape(-1), 0)
        return b"".join(parts)

    def decode(self, data: bytes, shape: tuple[int, ...]) -> torch.Tensor:
        """Decode bytes made by `encode` for a tensor of `shape`."""
        if not shape:
            raise CompressionError("activation codec: a scalar has no rows")
        if int(torch.Size(shape).numel()) == 0:
            if data:
                raise CompressionError(f"activation codec: {len(data)} bytes for an empty tensor")
            return torch.zeros(shape)
        stage, width, numel = self._layout(shape)
        sizes = stage.part_sizes(numel, {})
        if len(data) != sum(sizes):
            raise CompressionError(
                f"activation codec: {len(data)} bytes cannot hold shape {list(shape)} "
                f"({sum(sizes)} expected)"
            )
        parts = [data[: sizes[0]], data[sizes[0] :]]
        rows = stage.decode(parts, numel, {}).view(-1, width)[:, : shape[-1]]
        return rows.reshape(shape).contiguous()

    def encoded_size(self, shape: tuple[int, ...]) -> int:
        if int(torch.Size(shape).numel()) == 0:
            return 0
        stage, _, numel = self._layout(shape)
        return sum(stage.part_sizes(numel, {}))

    def max_abs_errors(self, x: torch.Tensor) -> torch.Tensor:
        """Per-element error bound: half the row's scale."""
        rows = x.detach().to(torch.float32).reshape(-1, x.shape[-1])
        qmax = 127 if self.bits == 8 else 7
        scales = _scales_to_float(_scales_bf16_up(_block_absmax(rows), qmax))
        bound = scales * (0.5 + 2.0**-10) + _FLOAT32_TINY
        return bound.unsqueeze(1).expand_as(rows).reshape(x.shape)

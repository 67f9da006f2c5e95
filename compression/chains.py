"""Codec chains: parse a spec such as ``random:0.2+topk:0.1+int4+zstd`` and run it on a tensor.

Grammar: stages joined by ``+``; each is ``name`` or ``name:args`` where args are a bare number
(the stage's main parameter) or ``key=value`` pairs separated by commas. Order: transforms
(``topk``, ``random``, ``powersgd``), at most one value stage (``fp32``/``none``, ``fp16``,
``bf16``, ``int8``, ``int4``; fp32 when omitted), then optionally ``zstd``. Presets name the
chains the benchmarks measure; `CHAIN_PRESETS` lists them.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import zstandard

from swarm.compression.powersgd import PowerSGD
from swarm.compression.quantization import BlockQuant, Cast
from swarm.compression.sparsification import RandomK, TopK
from swarm.compression.stages import (
    Buffer,
    Meta,
    TensorState,
    TransformStage,
    ValueStage,
    as_vector,
)
from swarm.protocol.errors import CompressionError

CHAIN_PRESETS: dict[str, str] = {
    "none": "fp32",
    "fp16": "fp16",
    "bf16": "bf16",
    "int8": "int8:block=64",
    "int4": "int4:block=64",
    "topk": "topk:0.01+fp16",
    "random": "random:0.01+fp16",
    "cocktail": "random:0.2+topk:0.1+int4:block=64+zstd",
    "powersgd": "powersgd:rank=4+fp16",
}

_ZSTD_LEVEL = 3
# A record below this size is not worth a zstd frame header.
_ZSTD_MIN_BYTES = 64


def _parse_args(stage: str, text: str, main: str) -> dict[str, str]:
    args: dict[str, str] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            key, value = (main, key) if key[:1].isdigit() or key[:1] == "." else (key, "1")
        if key in args:
            raise CompressionError(f"{stage}: argument {key!r} is given twice")
        args[key] = value
    return args


def _number(stage: str, key: str, value: str, kind: Callable[[str], float | int]) -> float | int:
    try:
        return kind(value)
    except ValueError:
        raise CompressionError(f"{stage}: {key}={value!r} is not a number") from None


def _flag(stage: str, key: str, value: str) -> bool:
    if value not in ("0", "1", "true", "false"):
        raise CompressionError(f"{stage}: {key} must be a flag, got {value!r}")
    return value in ("1", "true")


def _parse_stage(text: str) -> TransformStage | ValueStage | str:
    name, _, rest = text.strip().partition(":")
    if name in ("fp32", "none", "fp16", "bf16") and not rest:
        return Cast(dtype="fp32" if name == "none" else name)
    if name == "zstd" and not rest:
        return "zstd"
    allowed = {
        "int8": {"block", "stochastic"},
        "int4": {"block", "stochastic"},
        "topk": {"fraction"},
        "random": {"fraction"},
        "powersgd": {"rank"},
    }
    if name not in allowed:
        known = ", ".join(["fp32", "none", "fp16", "bf16", *allowed, "zstd"])
        raise CompressionError(f"unknown codec stage {name!r}; known stages: {known}")
    main = {"int8": "block", "int4": "block", "topk": "fraction", "random": "fraction"}.get(
        name, "rank"
    )
    args = _parse_args(name, rest, main)
    unknown = sorted(set(args) - allowed[name])
    if unknown:
        raise CompressionError(
            f"{name}: unknown argument(s) {unknown}; known: {sorted(allowed[name])}"
        )
    if name in ("int8", "int4"):
        return BlockQuant(
            bits=8 if name == "int8" else 4,
            block=int(_number(name, "block", args.get("block", "64"), int)),
            stochastic=_flag(name, "stochastic", args.get("stochastic", "0")),
        )
    if name in ("topk", "random"):
        fraction = float(_number(name, "fraction", args.get("fraction", "0.01"), float))
        return TopK(fraction=fraction) if name == "topk" else RandomK(fraction=fraction)
    return PowerSGD(rank=int(_number(name, "rank", args.get("rank", "4"), int)))


StageLayout = tuple[int, tuple[int, ...], list[int]]


@dataclass(frozen=True)
class EncodedTensor:
    """One tensor's encoding: the packed body and the metadata a header records."""

    chain: str
    meta: list[Meta]
    zstd: bool
    raw_bytes: int
    crc32: int
    body: bytes = field(repr=False)


@dataclass(frozen=True)
class Chain:
    """A parsed codec chain; `spec` is its canonical text (what payload headers record)."""

    transforms: tuple[TransformStage, ...]
    value: ValueStage
    zstd: bool

    @property
    def spec(self) -> str:
        stages = [t.spec() for t in self.transforms] + [self.value.spec()]
        return "+".join(stages + (["zstd"] if self.zstd else []))

    @property
    def lossless(self) -> bool:
        return not self.transforms and self.value.spec() == "fp32"

    @property
    def groupable(self) -> bool:
        """Whether tensors can share one record: every stage sees only a flat vector."""
        return all(stage.elementwise for stage in self.transforms)

    def _encode_raw(
        self, tensor: torch.Tensor, seed: int, state: TensorState | None
    ) -> tuple[list[Meta], bytes]:
        x = as_vector(tensor)
        state = {} if state is None else state
        shape: tuple[int, ...] = tuple(tensor.shape)
        metas: list[Meta] = []
        parts: list[Buffer] = []
        for i, stage in enumerate(self.transforms):
            x, own, meta = stage.encode(x, shape, _stage_seed(seed, i), state)
            shape = (x.numel(),)
            parts += own
            metas.append(meta)
        own, meta = self.value.encode(x, _stage_seed(seed, len(self.transforms)))
        return [*metas, meta], b"".join(parts + own)

    def _pack(self, metas: list[Meta], raw: bytes) -> EncodedTensor:
        crc = zlib.crc32(raw)
        if self.zstd and len(raw) >= _ZSTD_MIN_BYTES:
            packed = _compressor().compress(raw)
            if len(packed) < len(raw):
                return EncodedTensor(self.spec, metas, True, len(raw), crc, packed)
        return EncodedTensor(self.spec, metas, False, len(raw), crc, raw)

    def encode(
        self, tensor: torch.Tensor, *, seed: int = 0, state: TensorState | None = None
    ) -> EncodedTensor:
        """Encode one tensor; `state` (its warm starts) is updated in place."""
        return self._pack(*self._encode_raw(tensor, seed, state))

    def _stage_sizes(self, shape: tuple[int, ...], metas: object) -> list[StageLayout]:
        """Check untrusted per-stage metadata; per stage: input numel, input shape, part sizes."""
        if not isinstance(metas, list) or len(metas) != len(self.transforms) + 1:
            raise CompressionError(
                f"{self.spec}: expected {len(self.transforms) + 1} stage metadata"
            )
        if not all(isinstance(m, dict) for m in metas):
            raise CompressionError(f"{self.spec}: stage metadata must be objects")
        numel, inner_shape = _numel(shape), shape
        layout = []
        for stage, meta in zip(self.transforms, metas, strict=False):
            inner = stage.inner_numel(numel, inner_shape, meta)
            layout.append((numel, inner_shape, stage.part_sizes(numel, inner_shape, meta)))
            numel, inner_shape = inner, (inner,)
        layout.append((numel, inner_shape, self.value.part_sizes(numel, metas[-1])))
        return layout

    def part_sizes(self, shape: tuple[int, ...], metas: object) -> list[int]:
        """Check untrusted per-stage metadata and return the byte size of every part."""
        return [size for _, _, sizes in self._stage_sizes(shape, metas) for size in sizes]

    def decode(
        self,
        shape: tuple[int, ...],
        metas: list[Meta],
        zstd: bool,
        raw_bytes: int,
        crc: int,
        body: bytes,
    ) -> torch.Tensor:
        """Decode one tensor of `shape`; every number in the arguments may be hostile."""
        layout = self._stage_sizes(shape, metas)
        expected = sum(size for _, _, sizes in layout for size in sizes)
        if raw_bytes != expected:
            raise CompressionError(
                f"{self.spec}: the record declares {raw_bytes} raw bytes, "
                f"its stages need {expected}"
            )
        if zstd:
            if not self.zstd:
                raise CompressionError(f"{self.spec}: zstd is not part of this chain")
            raw = _decompress(body, raw_bytes)
        elif len(body) != raw_bytes:
            raise CompressionError(f"{self.spec}: body of {len(body)} bytes, expected {raw_bytes}")
        else:
            raw = body
        if zlib.crc32(raw) != crc:
            raise CompressionError(f"{self.spec}: checksum mismatch (corrupt tensor data)")
        return self._decode_raw(shape, metas, layout, raw)

    def _decode_raw(
        self,
        shape: tuple[int, ...],
        metas: list[Meta],
        layout: list[StageLayout],
        raw: bytes,
    ) -> torch.Tensor:
        view, offset = memoryview(raw), 0
        stage_parts: list[list[Buffer]] = []
        for _, _, sizes in layout:
            stage_parts.append([])
            for size in sizes:
                stage_parts[-1].append(view[offset : offset + size])
                offset += size
        numel = layout[-1][0]
        x = self.value.decode(stage_parts[-1], numel, metas[-1])
        for i in reversed(range(len(self.transforms))):
            numel, inner_shape, _ = layout[i]
            x = self.transforms[i].decode(x, stage_parts[i], numel, inner_shape, metas[i])
        return x.reshape(shape)

    def roundtrip(
        self, tensor: torch.Tensor, *, seed: int = 0, state: TensorState | None = None
    ) -> tuple[EncodedTensor, torch.Tensor]:
        """Encode, and decode what the receiver will see (what error feedback needs).

        Decodes the packed bytes before zstd and without re-checking what this process just
        wrote, so error feedback costs one decode, not a decompression and two checks more.
        """
        metas, raw = self._encode_raw(tensor, seed, state)
        shape = tuple(tensor.shape)
        decoded = self._decode_raw(shape, metas, self._stage_sizes(shape, metas), raw)
        return self._pack(metas, raw), decoded

    def error_bound(
        self, tensor: torch.Tensor, *, seed: int = 0, state: TensorState | None = None
    ) -> float:
        """Upper bound on ``||tensor - decode(encode(tensor))||_2`` with the same seed and state."""
        state = dict(state or {})

        def bound_from(i: int, x: torch.Tensor, shape: tuple[int, ...]) -> float:
            if i == len(self.transforms):
                return self.value.error_bound(x)
            stage = self.transforms[i]
            return stage.error_bound(
                x,
                shape,
                _stage_seed(seed, i),
                state,
                lambda inner: bound_from(i + 1, inner, (inner.numel(),)),
            )

        return bound_from(0, as_vector(tensor), tuple(tensor.shape))

    def max_body_bytes(self, shape: tuple[int, ...]) -> int:
        """The largest body a valid record for `shape` can have (zstd is used only if smaller)."""
        numel, inner_shape, total = _numel(shape), shape, 0
        for stage in self.transforms:
            total += stage.max_part_bytes(numel, inner_shape)
            numel = stage.max_inner_numel(numel, inner_shape)
            inner_shape = (numel,)
        return total + self.value.max_part_bytes(numel)


def _numel(shape: tuple[int, ...]) -> int:
    return int(torch.Size(shape).numel())


def _stage_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % (2**63 - 1)


@lru_cache(maxsize=1)
def _compressor() -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_content_size=True)


def _decompress(body: bytes, raw_bytes: int) -> bytes:
    try:
        params = zstandard.get_frame_parameters(body)
        if params.content_size != raw_bytes:
            raise CompressionError(
                f"zstd frame holds {params.content_size} bytes, the record says {raw_bytes}"
            )
        out = zstandard.ZstdDecompressor().decompress(body, max_output_size=raw_bytes)
    except zstandard.ZstdError as exc:
        raise CompressionError(f"corrupt zstd data: {exc}") from None
    if len(out) != raw_bytes:
        raise CompressionError(f"zstd data decompressed to {len(out)} bytes, expected {raw_bytes}")
    return out


def parse_chain(spec: str) -> Chain:
    """Parse a chain spec or preset name; raises `CompressionError` naming what is wrong."""
    if not isinstance(spec, str) or not spec.strip():
        raise CompressionError(
            "a codec chain must be a non-empty string such as 'int8' or 'cocktail'"
        )
    return _parse_chain(spec)


@lru_cache(maxsize=256)
def _parse_chain(spec: str) -> Chain:
    text = CHAIN_PRESETS.get(spec.strip(), spec.strip())
    transforms: list[TransformStage] = []
    value: ValueStage | None = None
    zstd = False
    for piece in text.split("+"):
        stage = _parse_stage(piece)
        if zstd:
            raise CompressionError(f"codec chain {spec!r}: zstd must be the last stage")
        if stage == "zstd":
            zstd = True
        elif isinstance(stage, ValueStage):
            if value is not None:
                raise CompressionError(
                    f"codec chain {spec!r}: at most one value stage (cast or int)"
                )
            value = stage
        elif isinstance(stage, TransformStage):
            if value is not None:
                raise CompressionError(
                    f"codec chain {spec!r}: {stage.spec()} must come before the value stage"
                )
            transforms.append(stage)
    return Chain(tuple(transforms), value or Cast(dtype="fp32"), zstd)

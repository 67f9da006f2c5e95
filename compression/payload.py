"""The wire payload: named tensors, each encoded by its codec chain, framed for streaming.

Layout (integers little-endian, headers JSON in UTF-8):

    b"SWPL" | u8 format version | u32 length | header {format, policy, seed, num_tensors}
    then num_tensors records:
        u32 length | record {name, shape, dtype, chain, meta, zstd, raw, size, crc32} | body

The header records the compression policy; each record its chain (with block sizes), per-stage
metadata (seeds, counts, ranks), the raw and stored sizes and a CRC-32 of the raw bytes. The
encoder yields one record at a time and the decoder reads one at a time from any byte source,
so neither side holds more than one tensor's encoding: a coordinator can sum a hundred updates
straight from disk. The decoder checks each number against what the job expects before it
allocates anything, and anything wrong is a `CompressionError` naming the tensor.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO

import torch

from swarm.compression.feedback import ErrorFeedback
from swarm.compression.policy import CompressionPolicy
from swarm.compression.stages import TensorState, all_finite
from swarm.protocol.errors import CompressionError

MAGIC = b"SWPL"
FORMAT_VERSION = 2
FORMAT_NAME = "swarm.tensors"
_PREFIX = struct.Struct("<4sBI")
_LENGTH = struct.Struct("<I")
MAX_HEADER_BYTES = 1 << 16
MAX_RECORD_HEADER_BYTES = 1 << 16

Shapes = Mapping[str, tuple[int, ...]]


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def tensor_seed(seed: int, index: int) -> int:
    """The seed of the `index`-th tensor (by name order) of a payload seeded with `seed`."""
    return (seed + (index + 1) * 0x9E3779B97F4A7C15) % (2**63 - 1)


def encode_stream(
    tensors: Mapping[str, torch.Tensor],
    policy: CompressionPolicy,
    *,
    seed: int = 0,
    feedback: ErrorFeedback | None = None,
) -> Iterator[bytes]:
    """Yield the payload for `tensors` piece by piece (the header, then one record per tensor).

    With `feedback`, each tensor's residual is added before encoding and the new residuals are
    staged in it once the last record is out; the caller commits or discards them.
    """
    header = _json(
        {
            "format": FORMAT_NAME,
            "policy": policy.to_dict(),
            "seed": seed,
            "num_tensors": len(tensors),
        }
    )
    yield _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header
    residuals: dict[str, torch.Tensor] = {}
    states: dict[str, TensorState] = {}
    for index, name in enumerate(sorted(tensors)):
        tensor = tensors[name]
        shape = tuple(tensor.shape)
        chain = policy.chain_for(shape)
        if not all_finite(tensor):
            raise CompressionError(f"tensor {name} contains NaN or infinite values")
        if feedback is None or chain.lossless:
            encoded = chain.encode(tensor, seed=tensor_seed(seed, index))
        else:
            target = feedback.compensate(name, tensor)
            if not all_finite(target):
                raise CompressionError(
                    f"tensor {name}: the update plus its error-feedback residual is not finite; "
                    "clear the residuals (ErrorFeedback.clear) and encode again"
                )
            state = feedback.working_state(name)
            encoded, decoded = chain.roundtrip(target, seed=tensor_seed(seed, index), state=state)
            residuals[name] = target.sub_(decoded)
            states[name] = state
        record = _json(
            {
                "name": name,
                "shape": list(shape),
                "dtype": "float32",
                "chain": encoded.chain,
                "meta": encoded.meta,
                "zstd": encoded.zstd,
                "raw": encoded.raw_bytes,
                "size": len(encoded.body),
                "crc32": encoded.crc32,
            }
        )
        yield _LENGTH.pack(len(record)) + record
        yield encoded.body
    if feedback is not None:
        feedback.stage(residuals, states)


def encode_payload(
    tensors: Mapping[str, torch.Tensor],
    policy: CompressionPolicy,
    *,
    seed: int = 0,
    feedback: ErrorFeedback | None = None,
) -> bytes:
    """The whole payload as one bytes object (for small payloads and tests)."""
    return b"".join(encode_stream(tensors, policy, seed=seed, feedback=feedback))


class _Reader:
    def __init__(self, source: bytes | BinaryIO) -> None:
        self._read: Callable[[int], bytes] = (
            io.BytesIO(source).read
            if isinstance(source, bytes | bytearray | memoryview)
            else source.read
        )

    def exactly(self, size: int, what: str) -> bytes:
        data = self._read(size)
        if len(data) != size:
            raise CompressionError(f"payload is truncated in {what} ({len(data)} of {size} bytes)")
        return data

    def at_end(self) -> bool:
        return self._read(1) == b""


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, huge numbers, deep nesting
        raise CompressionError(f"{what} is not valid JSON: {exc!r:.200}") from None
    if not isinstance(value, dict):
        raise CompressionError(f"{what} is not a JSON object")
    return value


def read_header(source: bytes | BinaryIO) -> dict[str, Any]:
    """Parse and check the payload header (for tools that only want to know what is inside)."""
    return _read_header(_Reader(source))


def _read_header(reader: _Reader) -> dict[str, Any]:
    magic, version, length = _PREFIX.unpack(reader.exactly(_PREFIX.size, "the prefix"))
    if magic != MAGIC:
        raise CompressionError("not a swarm payload (bad magic bytes)")
    if version != FORMAT_VERSION:
        raise CompressionError(
            f"payload format {version} is not supported (expected {FORMAT_VERSION})"
        )
    if length > MAX_HEADER_BYTES:
        raise CompressionError(f"payload header length {length} is out of bounds")
    header = _load_json(reader.exactly(length, "the header"), "payload header")
    if header.get("format") != FORMAT_NAME:
        raise CompressionError(f"payload format {header.get('format')!r} is not {FORMAT_NAME!r}")
    return header


def iter_payload(
    source: bytes | BinaryIO, expected_shapes: Shapes, policy: CompressionPolicy
) -> Iterator[tuple[str, torch.Tensor]]:
    """Decode a payload tensor by tensor, insisting on exactly `expected_shapes` and `policy`.

    Raises:
        CompressionError: the payload is malformed, corrupt, or not what the job expects.
    """
    reader = _Reader(source)
    header = _read_header(reader)
    sent_policy = CompressionPolicy.from_dict(header.get("policy"))
    if sent_policy != policy:
        raise CompressionError(
            f"payload policy {sent_policy.to_dict()} is not the job's {policy.to_dict()}"
        )
    count = header.get("num_tensors")
    if count != len(expected_shapes):
        raise CompressionError(
            f"payload holds {count!r} tensors, the job has {len(expected_shapes)}"
        )
    seen: set[str] = set()
    for _ in range(len(expected_shapes)):
        (length,) = _LENGTH.unpack(reader.exactly(_LENGTH.size, "a record length"))
        if length > MAX_RECORD_HEADER_BYTES:
            raise CompressionError(f"record header length {length} is out of bounds")
        record = _load_json(reader.exactly(length, "a record header"), "record header")
        name = record.get("name")
        if not isinstance(name, str) or name not in expected_shapes:
            raise CompressionError(f"payload has an unexpected tensor {str(name)[:100]!r}")
        if name in seen:
            raise CompressionError(f"payload has tensor {name} twice")
        seen.add(name)
        shape = tuple(expected_shapes[name])
        if record.get("shape") != list(shape):
            raise CompressionError(
                f"tensor {name}: shape {record.get('shape')} != expected {list(shape)}"
            )
        if record.get("dtype") != "float32":
            raise CompressionError(f"tensor {name}: dtype {record.get('dtype')!r} is not float32")
        chain = policy.chain_for(shape)
        if record.get("chain") != chain.spec:
            raise CompressionError(
                f"tensor {name}: encoded with {record.get('chain')!r}, the job's policy says "
                f"{chain.spec!r}"
            )
        size, raw, crc, zstd = (record.get(k) for k in ("size", "raw", "crc32", "zstd"))
        limit = chain.max_body_bytes(shape)
        for key, value in (("size", size), ("raw", raw), ("crc32", crc)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 0 <= value <= max(limit, 2**32)
            ):
                raise CompressionError(f"tensor {name}: record field {key}={value!r} is invalid")
        assert isinstance(size, int) and isinstance(raw, int) and isinstance(crc, int)
        if not isinstance(zstd, bool):
            raise CompressionError(f"tensor {name}: record field zstd={zstd!r} is not a boolean")
        if size > limit or raw > limit:
            raise CompressionError(f"tensor {name}: {size} stored bytes exceed the bound {limit}")
        body = reader.exactly(size, f"tensor {name}")
        try:
            tensor = chain.decode(shape, record.get("meta"), zstd, raw, crc, body)  # type: ignore[arg-type]
        except CompressionError as exc:
            raise CompressionError(f"tensor {name}: {exc}") from None
        if not all_finite(tensor):
            raise CompressionError(f"tensor {name} contains NaN or infinite values")
        yield name, tensor
    if not reader.at_end():
        raise CompressionError("payload has trailing bytes after its last tensor")


def decode_payload(
    source: bytes | BinaryIO, expected_shapes: Shapes, policy: CompressionPolicy
) -> dict[str, torch.Tensor]:
    """Decode a whole payload into a dict (see `iter_payload`)."""
    return dict(iter_payload(source, expected_shapes, policy))


def payload_size_bound(shapes: Shapes, policy: CompressionPolicy) -> int:
    """An upper bound on the size of a valid payload for these shapes, to reject oversize input."""
    total = _PREFIX.size + 512 + len(_json(policy.to_dict()))
    for name, shape in shapes.items():
        chain = policy.chain_for(tuple(shape))
        stages = len(chain.transforms) + 1
        record = 256 + len(_json(name)) + 21 * len(shape) + len(chain.spec) + 96 * stages
        total += _LENGTH.size + record + chain.max_body_bytes(tuple(shape))
    return total

"""The wire payload: named tensors, encoded by their codec chains in records, framed for streaming.

Layout (integers little-endian, headers JSON in UTF-8):

    b"SWPL" | u8 format version | u32 length | header {format, policy, seed, num_tensors}
    then records until every tensor is in:
        u32 length | record {tensors, dtype, chain, meta, zstd, raw, size, crc32} | body

A record holds one tensor or a *group*: several tensors of the same chain, concatenated in the
order of `tensors` (a list of [name, shape]) and encoded as one vector. Grouping is what makes
many small tensors cheap (a LoRA update has hundreds of them): one quantizer pass, one top-k,
one checksum and one zstd frame per megabyte instead of per tensor. Groups hold at most
`GROUP_ELEMENTS` values, so neither side ever holds more than that, or one tensor, at once;
chains with a stage that needs a matrix's shape (PowerSGD) keep one tensor per record.

The header records the compression policy; each record its chain (with block sizes), per-stage
metadata (seeds, counts, ranks), the raw and stored sizes and a CRC-32 of the raw bytes. The
encoder yields one record at a time and the decoder reads one at a time from any byte source: a
coordinator can sum a hundred updates straight from disk. The decoder checks each number
against what the job expects before it allocates anything, and anything wrong is a
`CompressionError` naming the tensor.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import torch

from swarm.compression.chains import Chain
from swarm.compression.feedback import ErrorFeedback
from swarm.compression.policy import CompressionPolicy
from swarm.compression.stages import TensorState, all_finite, as_vector
from swarm.protocol.errors import CompressionError

MAGIC = b"SWPL"
FORMAT_VERSION = 3
FORMAT_NAME = "swarm.tensors"
_PREFIX = struct.Struct("<4sBI")
_LENGTH = struct.Struct("<I")
MAX_HEADER_BYTES = 1 << 16
MAX_RECORD_HEADER_BYTES = 1 << 20
#: the most values one grouped record concatenates (a single larger tensor is a record alone).
GROUP_ELEMENTS = 1 << 20
#: the most tensors one record names (bounds a record header).
MAX_GROUP_TENSORS = 1024

Shapes = Mapping[str, tuple[int, ...]]


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def record_seed(seed: int, index: int) -> int:
    """The seed of the `index`-th record of a payload seeded with `seed`."""
    return (seed + (index + 1) * 0x9E3779B97F4A7C15) % (2**63 - 1)


def _numel(shape: Sequence[int]) -> int:
    return int(torch.Size(shape).numel())


def plan_records(shapes: Shapes, policy: CompressionPolicy) -> list[list[str]]:
    """How an encoder groups tensors into records: by chain, in name order, up to
    `GROUP_ELEMENTS` values and `MAX_GROUP_TENSORS` tensors a group."""
    by_chain: dict[Chain, list[str]] = {}
    for name in sorted(shapes):
        by_chain.setdefault(policy.chain_for(tuple(shapes[name])), []).append(name)
    records: list[list[str]] = []
    for chain, names in by_chain.items():
        if not chain.groupable:
            records += [[name] for name in names]
            continue
        group: list[str] = []
        count = 0
        for name in names:
            numel = _numel(shapes[name])
            if group and (count + numel > GROUP_ELEMENTS or len(group) == MAX_GROUP_TENSORS):
                records.append(group)
                group, count = [], 0
            group.append(name)
            count += numel
        if group:
            records.append(group)
    return records


def _record_shape(shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """What the chain encodes: a lone tensor keeps its shape, a group is one flat vector."""
    return shapes[0] if len(shapes) == 1 else (sum(_numel(s) for s in shapes),)


def encode_stream(
    tensors: Mapping[str, torch.Tensor],
    policy: CompressionPolicy,
    *,
    seed: int = 0,
    feedback: ErrorFeedback | None = None,
) -> Iterator[bytes]:
    """Yield the payload for `tensors` piece by piece (the header, then one record at a time).

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
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    for index, names in enumerate(plan_records(shapes, policy)):
        chain = policy.chain_for(shapes[names[0]])
        for name in names:
            if not all_finite(tensors[name]):
                raise CompressionError(f"tensor {name} contains NaN or infinite values")
        record_shapes = [shapes[name] for name in names]
        if feedback is None or chain.lossless:
            vector = _concatenate([tensors[name] for name in names], record_shapes)
            encoded = chain.encode(vector, seed=record_seed(seed, index))
        else:
            targets = [feedback.compensate(name, tensors[name]) for name in names]
            for name, target in zip(names, targets, strict=True):
                if not all_finite(target):
                    raise CompressionError(
                        f"tensor {name}: the update plus its error-feedback residual is not "
                        "finite; clear the residuals (ErrorFeedback.clear) and encode again"
                    )
            # Codec state (PowerSGD's warm start) belongs to a tensor: only lone records have it.
            state = feedback.working_state(names[0]) if len(names) == 1 else {}
            vector = _concatenate(targets, record_shapes)
            encoded, decoded = chain.roundtrip(vector, seed=record_seed(seed, index), state=state)
            residual = vector.sub_(decoded).reshape(-1)
            for name, part in zip(names, _split(residual, record_shapes), strict=True):
                residuals[name] = part
            if len(names) == 1:
                states[names[0]] = state
        record = _json(
            {
                "tensors": [[name, list(shapes[name])] for name in names],
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


def _concatenate(
    tensors: Sequence[torch.Tensor], shapes: Sequence[tuple[int, ...]]
) -> torch.Tensor:
    """One tensor alone as it is (float32), a group as one flat float32 vector (a copy)."""
    if len(tensors) == 1:
        return tensors[0].detach().to(device="cpu", dtype=torch.float32).reshape(shapes[0])
    return torch.cat([as_vector(t) for t in tensors])


def _split(vector: torch.Tensor, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    parts = vector.reshape(-1).split([_numel(s) for s in shapes])
    return [part.view(shape) for part, shape in zip(parts, shapes, strict=True)]


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
    while len(seen) < len(expected_shapes):
        (length,) = _LENGTH.unpack(reader.exactly(_LENGTH.size, "a record length"))
        if length > MAX_RECORD_HEADER_BYTES:
            raise CompressionError(f"record header length {length} is out of bounds")
        record = _load_json(reader.exactly(length, "a record header"), "record header")
        names, shapes = _record_tensors(record, expected_shapes, seen)
        what = f"tensor {names[0]}" if len(names) == 1 else f"tensors {names[0]}..{names[-1]}"
        if record.get("dtype") != "float32":
            raise CompressionError(f"{what}: dtype {record.get('dtype')!r} is not float32")
        chain = _record_chain(record, names, shapes, policy, what)
        shape = _record_shape(shapes)
        size, raw, crc, zstd = (record.get(k) for k in ("size", "raw", "crc32", "zstd"))
        limit = chain.max_body_bytes(shape)
        for key, value in (("size", size), ("raw", raw), ("crc32", crc)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 0 <= value <= max(limit, 2**32)
            ):
                raise CompressionError(f"{what}: record field {key}={value!r} is invalid")
        assert isinstance(size, int) and isinstance(raw, int) and isinstance(crc, int)
        if not isinstance(zstd, bool):
            raise CompressionError(f"{what}: record field zstd={zstd!r} is not a boolean")
        if size > limit or raw > limit:
            raise CompressionError(f"{what}: {size} stored bytes exceed the bound {limit}")
        body = reader.exactly(size, what)
        try:
            vector = chain.decode(shape, record.get("meta"), zstd, raw, crc, body)  # type: ignore[arg-type]
        except CompressionError as exc:
            raise CompressionError(f"{what}: {exc}") from None
        if not all_finite(vector):
            raise CompressionError(f"{what}: contains NaN or infinite values")
        yield from zip(names, _split(vector, shapes), strict=True)
    if not reader.at_end():
        raise CompressionError("payload has trailing bytes after its last tensor")


def _record_tensors(
    record: dict[str, Any], expected: Shapes, seen: set[str]
) -> tuple[list[str], list[tuple[int, ...]]]:
    """The names and shapes a record holds, each checked against the job; marks them seen."""
    entries = record.get("tensors")
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_GROUP_TENSORS:
        raise CompressionError(
            f"record field tensors must list 1 to {MAX_GROUP_TENSORS} [name, shape] pairs"
        )
    names, shapes = [], []
    for entry in entries:
        if not isinstance(entry, list) or len(entry) != 2:
            raise CompressionError("record field tensors must hold [name, shape] pairs")
        name, shape = entry
        if not isinstance(name, str) or name not in expected:
            raise CompressionError(f"payload has an unexpected tensor {str(name)[:100]!r}")
        if name in seen:
            raise CompressionError(f"payload has tensor {name} twice")
        seen.add(name)
        if shape != list(expected[name]):
            raise CompressionError(
                f"tensor {name}: shape {str(shape)[:100]} != expected {list(expected[name])}"
            )
        names.append(name)
        shapes.append(tuple(expected[name]))
    return names, shapes


def _record_chain(
    record: dict[str, Any],
    names: list[str],
    shapes: list[tuple[int, ...]],
    policy: CompressionPolicy,
    what: str,
) -> Chain:
    """The chain the job's policy gives every tensor of the record (they must agree)."""
    chain = policy.chain_for(shapes[0])
    for name, shape in zip(names, shapes, strict=True):
        if policy.chain_for(shape).spec != chain.spec:
            raise CompressionError(
                f"tensor {name}: the job's policy encodes it with "
                f"{policy.chain_for(shape).spec!r}, not with {names[0]}'s {chain.spec!r}"
            )
    if record.get("chain") != chain.spec:
        raise CompressionError(
            f"{what}: encoded with {str(record.get('chain'))[:100]!r}, the job's policy says "
            f"{chain.spec!r}"
        )
    if len(names) > 1:
        if not chain.groupable:
            raise CompressionError(f"{what}: {chain.spec} encodes one tensor per record")
        if sum(_numel(s) for s in shapes) > GROUP_ELEMENTS:
            raise CompressionError(f"{what}: a group holds more than {GROUP_ELEMENTS} values")
    return chain


def decode_payload(
    source: bytes | BinaryIO, expected_shapes: Shapes, policy: CompressionPolicy
) -> dict[str, torch.Tensor]:
    """Decode a whole payload into a dict (see `iter_payload`)."""
    return dict(iter_payload(source, expected_shapes, policy))


def payload_size_bound(shapes: Shapes, policy: CompressionPolicy) -> int:
    """An upper bound on the size of the payload an encoder makes for these shapes (its records
    as `plan_records` groups them), to reject oversize input."""
    total = _PREFIX.size + 512 + len(_json(policy.to_dict()))
    for names in plan_records(shapes, policy):
        record_shapes = [tuple(shapes[name]) for name in names]
        chain = policy.chain_for(record_shapes[0])
        stages = len(chain.transforms) + 1
        listed = sum(len(_json([name, list(shapes[name])])) + 1 for name in names)
        record = 256 + listed + len(chain.spec) + 96 * stages
        total += _LENGTH.size + record + chain.max_body_bytes(_record_shape(record_shapes))
    return total

"""The wire payload: a self-describing frame that carries named tensors.

Layout (all integers little-endian):

    b"SWPL" | u8 format version | u32 header length | header (JSON, UTF-8) | body

The header names the codec and, per tensor, its name, shape, byte offset and length in the
body, plus the SHA-256 of the body. A decoder checks every field against what it expects
(names, shapes, sizes) before it allocates anything, so a hostile payload cannot make it
build huge tensors or read out of bounds.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from typing import Any

import torch

from swarm.compression.codecs import get_codec
from swarm.protocol.errors import CompressionError

MAGIC = b"SWPL"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sBI")
MAX_HEADER_BYTES = 1 << 20


def encode_payload(tensors: Mapping[str, torch.Tensor], codec_name: str) -> bytes:
    """Encode named tensors with one codec into a single payload."""
    codec = get_codec(codec_name)
    entries: list[dict[str, Any]] = []
    parts: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        data = codec.encode(tensors[name])
        entries.append(
            {
                "name": name,
                "shape": list(tensors[name].shape),
                "offset": offset,
                "nbytes": len(data),
            }
        )
        parts.append(data)
        offset += len(data)
    body = b"".join(parts)
    header = json.dumps(
        {"codec": codec.name, "tensors": entries, "body_sha256": hashlib.sha256(body).hexdigest()},
        separators=(",", ":"),
    ).encode()
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header + body


def read_header(payload: bytes) -> tuple[dict[str, Any], int]:
    """Parse and sanity-check the header; return it and the offset where the body starts."""
    if len(payload) < _PREFIX.size:
        raise CompressionError(f"payload of {len(payload)} bytes is too short for a header")
    magic, version, header_len = _PREFIX.unpack_from(payload)
    if magic != MAGIC:
        raise CompressionError("not a swarm payload (bad magic bytes)")
    if version != FORMAT_VERSION:
        raise CompressionError(
            f"payload format {version} is not supported (expected {FORMAT_VERSION})"
        )
    if header_len > MAX_HEADER_BYTES or _PREFIX.size + header_len > len(payload):
        raise CompressionError(f"payload header length {header_len} is out of bounds")
    try:
        header = json.loads(payload[_PREFIX.size : _PREFIX.size + header_len])
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, huge integers, deep nesting
        raise CompressionError(f"payload header is not valid JSON: {exc!r:.200}") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list):
        raise CompressionError("payload header lacks a tensor list")
    for entry in header["tensors"]:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("name"), str)
            and isinstance(entry.get("shape"), list)
        ):
            raise CompressionError("payload header has a tensor entry without a name and shape")
    return header, _PREFIX.size + header_len


def decode_payload(
    payload: bytes, expected_shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """Decode a payload, insisting it holds exactly `expected_shapes` and nothing else.

    Raises:
        CompressionError: the payload is malformed, corrupt, or does not match the shapes.
    """
    header, body_start = read_header(payload)
    codec = get_codec(str(header.get("codec")))
    body = memoryview(payload)[body_start:]
    if hashlib.sha256(body).hexdigest() != header.get("body_sha256"):
        raise CompressionError("payload body does not match its checksum")
    entries = header["tensors"]
    names = [e["name"] for e in entries]
    if sorted(names) != sorted(expected_shapes) or len(set(names)) != len(names):
        missing = sorted(set(expected_shapes) - set(names))
        extra = sorted(set(names) - set(expected_shapes))
        raise CompressionError(
            f"payload tensors do not match the job: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    tensors: dict[str, torch.Tensor] = {}
    for entry in entries:
        name = entry["name"]
        shape = tuple(expected_shapes[name])
        if entry.get("shape") != list(shape):
            raise CompressionError(
                f"tensor {name}: shape {entry.get('shape')} != expected {list(shape)}"
            )
        offset, nbytes = entry.get("offset"), entry.get("nbytes")
        if (
            not isinstance(offset, int)
            or not isinstance(nbytes, int)
            or offset < 0
            or nbytes < 0
            or offset + nbytes > len(body)
        ):
            raise CompressionError(f"tensor {name}: byte range is out of bounds")
        tensor = codec.decode(bytes(body[offset : offset + nbytes]), shape)
        if not torch.isfinite(tensor).all():
            raise CompressionError(f"tensor {name} contains NaN or infinite values")
        tensors[name] = tensor
    return tensors


def payload_size_bound(shapes: Mapping[str, tuple[int, ...]], codec_name: str) -> int:
    """An upper bound on the size of a valid payload for these shapes, to reject oversize input."""
    codec = get_codec(codec_name)
    body = sum(codec.encoded_size(int(torch.Size(s).numel())) for s in shapes.values())
    # Per tensor: the JSON-escaped name plus its shape, offset and size fields.
    header = 256 + sum(len(json.dumps(n)) + 96 + 21 * len(s) for n, s in shapes.items())
    return _PREFIX.size + header + body

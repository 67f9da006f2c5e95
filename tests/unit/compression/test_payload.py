"""The wire payload: round trips, size bound, and refusal of anything malformed or hostile."""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from swarm.compression import decode_payload, encode_payload, payload_size_bound, read_header
from swarm.compression.payload import MAX_HEADER_BYTES
from swarm.protocol.errors import CompressionError

SHAPES = {"a.weight": (3, 4), "b.bias": (5,)}

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._", min_size=1, max_size=40).filter(
    lambda n: n[0].isalpha()
)
shape_dicts = st.dictionaries(
    names, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6), max_size=6
)


def _tensors(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=generator) for n, s in shapes.items()}


def _frame(
    header: Any, body: bytes = b"", *, version: int = 1, header_len: int | None = None
) -> bytes:
    """Build a payload by hand: magic, u8 version, u32 LE header length, JSON header, body."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    size = len(raw) if header_len is None else header_len
    return b"SWPL" + struct.pack("<BI", version, size) + raw + body


def _header(entries: list[Any], body: bytes, codec: str = "none") -> dict[str, Any]:
    return {"codec": codec, "tensors": entries, "body_sha256": hashlib.sha256(body).hexdigest()}


def _one_tensor_frame(entry_overrides: dict[str, Any], values: list[float]) -> bytes:
    body = np.asarray(values, dtype="<f4").tobytes()
    entry = {"name": "w", "shape": [len(values)], "offset": 0, "nbytes": len(body)}
    entry.update(entry_overrides)
    return _frame(_header([entry], body), body)


def _body_start(payload: bytes) -> int:
    return 9 + struct.unpack_from("<I", payload, 5)[0]


@settings(max_examples=50, deadline=None)
@given(shapes=shape_dicts, seed=st.integers(0, 2**31 - 1))
def test_none_payload_round_trips_exactly(shapes: dict[str, tuple[int, ...]], seed: int) -> None:
    tensors = _tensors(shapes, seed)
    decoded = decode_payload(encode_payload(tensors, "none"), shapes)
    assert decoded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert decoded[name].shape == tensor.shape
        assert torch.equal(decoded[name], tensor)


@settings(max_examples=50, deadline=None)
@given(shapes=shape_dicts, seed=st.integers(0, 2**31 - 1))
def test_fp16_payload_round_trips_within_half_precision(
    shapes: dict[str, tuple[int, ...]], seed: int
) -> None:
    tensors = _tensors(shapes, seed)
    decoded = decode_payload(encode_payload(tensors, "fp16"), shapes)
    for name, tensor in tensors.items():
        expected = tensor.to(torch.float16).float()
        assert torch.equal(decoded[name], expected)


@settings(max_examples=50, deadline=None)
@given(shapes=shape_dicts, codec=st.sampled_from(["none", "fp16"]))
def test_size_bound_covers_every_valid_payload(
    shapes: dict[str, tuple[int, ...]], codec: str
) -> None:
    payload = encode_payload(_tensors(shapes), codec)
    assert len(payload) <= payload_size_bound(shapes, codec)


def test_size_bound_covers_realistic_large_offsets() -> None:
    shapes = {f"model.layers.{i}.mlp.down_proj.weight": (4096, 11008) for i in range(3)}
    # Encoding 500 MB is slow; a header with the largest offsets and sizes is built instead.
    entries = []
    offset = 0
    for name, shape in sorted(shapes.items()):
        nbytes = 2 * shape[0] * shape[1]
        entries.append({"name": name, "shape": list(shape), "offset": offset, "nbytes": nbytes})
        offset += nbytes
    header = json.dumps(
        {"codec": "fp16", "tensors": entries, "body_sha256": "0" * 64}, separators=(",", ":")
    ).encode()
    assert 9 + len(header) + offset <= payload_size_bound(shapes, "fp16")


def test_size_bound_covers_non_ascii_names() -> None:
    shapes = {"gewicht_" + "ä" * 64: (2,)}
    payload = encode_payload(_tensors(shapes), "fp16")
    assert len(payload) <= payload_size_bound(shapes, "fp16")


def test_read_header_describes_the_payload() -> None:
    payload = encode_payload(_tensors(SHAPES), "fp16")
    header, body_start = read_header(payload)
    assert header["codec"] == "fp16"
    assert [e["name"] for e in header["tensors"]] == sorted(SHAPES)
    assert [tuple(e["shape"]) for e in header["tensors"]] == [SHAPES[n] for n in sorted(SHAPES)]
    assert len(payload) - body_start == 2 * (12 + 5)


def test_payload_starts_with_magic_and_version() -> None:
    payload = encode_payload(_tensors(SHAPES), "none")
    assert payload[:5] == b"SWPL\x01"


def test_encoding_is_deterministic_and_independent_of_dict_order() -> None:
    tensors = _tensors(SHAPES)
    reordered = dict(reversed(list(tensors.items())))
    assert encode_payload(tensors, "fp16") == encode_payload(reordered, "fp16")


def test_encoding_with_an_unknown_codec_is_refused() -> None:
    with pytest.raises(CompressionError, match="unknown codec"):
        encode_payload(_tensors(SHAPES), "gzip")


def test_bad_magic_is_refused() -> None:
    payload = encode_payload(_tensors(SHAPES), "none")
    with pytest.raises(CompressionError, match="magic"):
        decode_payload(b"SWPX" + payload[4:], SHAPES)


def test_unknown_format_version_is_refused() -> None:
    payload = encode_payload(_tensors(SHAPES), "none")
    with pytest.raises(CompressionError, match="format 2"):
        decode_payload(payload[:4] + b"\x02" + payload[5:], SHAPES)


@pytest.mark.parametrize("keep", [0, 3, 8, 20, -1])
def test_truncated_payload_is_refused(keep: int) -> None:
    payload = encode_payload(_tensors(SHAPES), "none")
    with pytest.raises(CompressionError):
        decode_payload(payload[:keep], SHAPES)


def test_truncated_header_is_refused() -> None:
    payload = encode_payload(_tensors(SHAPES), "none")
    with pytest.raises(CompressionError, match="header length"):
        decode_payload(payload[: _body_start(payload) - 1], SHAPES)


@pytest.mark.parametrize("position", [0, 17, -1])
def test_corrupted_body_byte_fails_the_checksum(position: int) -> None:
    payload = bytearray(encode_payload(_tensors(SHAPES), "none"))
    index = _body_start(payload) + position if position >= 0 else len(payload) - 1
    payload[index] ^= 0x01
    with pytest.raises(CompressionError, match="checksum"):
        decode_payload(bytes(payload), SHAPES)


def test_appended_bytes_fail_the_checksum() -> None:
    payload = encode_payload(_tensors(SHAPES), "none")
    with pytest.raises(CompressionError, match="checksum"):
        decode_payload(payload + b"\x00", SHAPES)


def test_missing_tensor_is_refused_by_name() -> None:
    payload = encode_payload(_tensors({"a.weight": (3, 4)}), "none")
    with pytest.raises(CompressionError, match=r"missing \['b.bias'\]"):
        decode_payload(payload, SHAPES)


def test_extra_tensor_is_refused_by_name() -> None:
    payload = encode_payload(_tensors({**SHAPES, "c.extra": (2,)}), "none")
    with pytest.raises(CompressionError, match=r"unexpected \['c.extra'\]"):
        decode_payload(payload, SHAPES)


def test_duplicate_tensor_names_are_refused() -> None:
    body = np.zeros(2, dtype="<f4").tobytes()
    entry = {"name": "w", "shape": [1], "offset": 0, "nbytes": 4}
    payload = _frame(_header([entry, {**entry, "offset": 4}], body), body)
    with pytest.raises(CompressionError, match="do not match"):
        decode_payload(payload, {"w": (1,)})


def test_wrong_shape_is_refused() -> None:
    payload = encode_payload(_tensors({"a.weight": (4, 3), "b.bias": (5,)}), "none")
    with pytest.raises(CompressionError, match=r"a.weight: shape \[4, 3\] != expected \[3, 4\]"):
        decode_payload(payload, SHAPES)


def test_same_count_but_wrong_byte_size_is_refused() -> None:
    with pytest.raises(CompressionError, match="cannot hold shape"):
        decode_payload(_one_tensor_frame({"nbytes": 8}, [1.0, 2.0, 3.0]), {"w": (3,)})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_refused(bad: float) -> None:
    with pytest.raises(CompressionError, match="NaN or infinite"):
        decode_payload(_one_tensor_frame({}, [1.0, bad]), {"w": (2,)})


def test_encoder_output_with_nan_is_refused_by_the_decoder() -> None:
    payload = encode_payload({"w": torch.tensor([0.0, float("nan")])}, "fp16")
    with pytest.raises(CompressionError, match="NaN"):
        decode_payload(payload, {"w": (2,)})


@pytest.mark.parametrize(
    "overrides",
    [
        {"offset": 4},
        {"offset": -4},
        {"offset": 2**40},
        {"nbytes": 16},
        {"nbytes": -4},
        {"offset": "0"},
        {"offset": 0.0},
        {"nbytes": None},
        {"offset": None},
    ],
    ids=str,
)
def test_out_of_bounds_or_malformed_byte_ranges_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(CompressionError, match="out of bounds"):
        decode_payload(_one_tensor_frame(overrides, [1.0, 2.0, 3.0]), {"w": (3,)})


@pytest.mark.parametrize("declared", [2**32 - 1, MAX_HEADER_BYTES + 1])
def test_huge_header_length_is_refused_before_reading(declared: int) -> None:
    header = json.dumps({"codec": "none", "tensors": []}).encode()
    payload = _frame(header.ljust(declared if declared < 2**24 else 64), header_len=declared)
    with pytest.raises(CompressionError, match="header length"):
        decode_payload(payload, {})


@pytest.mark.parametrize(
    "raw_header",
    [b"{not json", b"\xff\xfe\x00", b"[]", b"null", b'{"codec": "none"}', b'{"tensors": {}}'],
)
def test_malformed_headers_are_refused(raw_header: bytes) -> None:
    with pytest.raises(CompressionError, match="header"):
        decode_payload(_frame(raw_header), {})


@pytest.mark.parametrize("codec", ["gzip", None, ["none"]])
def test_unknown_codec_in_header_is_refused(codec: Any) -> None:
    payload = _frame({"codec": codec, "tensors": [], "body_sha256": hashlib.sha256().hexdigest()})
    with pytest.raises(CompressionError, match="unknown codec"):
        decode_payload(payload, {})


def test_empty_payload_for_no_tensors_decodes_to_nothing() -> None:
    assert decode_payload(encode_payload({}, "fp16"), {}) == {}


def test_deeply_nested_header_is_refused() -> None:
    with pytest.raises(CompressionError, match="header"):
        decode_payload(_frame(b"[" * 100_000), SHAPES)
    with pytest.raises(CompressionError, match="tensor list"):
        decode_payload(_frame(b"[" * 500 + b"]" * 500), SHAPES)


def test_header_with_a_huge_integer_is_refused() -> None:
    with pytest.raises(CompressionError):
        decode_payload(_frame(b'{"tensors": [], "x": ' + b"1" * 5000 + b"}"), SHAPES)


@pytest.mark.parametrize("entry", [5, {"name": None}], ids=["int-entry", "null-name"])
def test_non_object_tensor_entries_are_refused(entry: Any) -> None:
    with pytest.raises(CompressionError):
        decode_payload(_frame(_header([entry], b"")), {"None": (1,)})


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_only_ever_raise_compression_error(data: bytes) -> None:
    for candidate in (data, b"SWPL\x01" + data):
        with contextlib.suppress(CompressionError):
            decode_payload(candidate, SHAPES)


VALID = encode_payload(_tensors(SHAPES), "fp16")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6
    ),
    cut=st.integers(0, len(VALID)),
)
def test_mutated_payloads_only_ever_raise_compression_error(
    edits: list[tuple[int, int]], cut: int
) -> None:
    payload = bytearray(VALID)
    for index, value in edits:
        payload[index] = value
    for candidate in (bytes(payload), bytes(payload[:cut])):
        try:
            decoded = decode_payload(candidate, SHAPES)
        except CompressionError:
            continue
        assert {n: tuple(t.shape) for n, t in decoded.items()} == SHAPES
        assert all(bool(torch.isfinite(t).all()) for t in decoded.values())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
entry_values = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["w", "v", ""]) | json_values,
        "shape": st.sampled_from([[2], [1, 2], []]) | json_values,
        "offset": st.integers(-8, 16) | json_values,
        "nbytes": st.integers(-8, 16) | json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(entry_values | json_values, max_size=3),
    codec=st.sampled_from(["none", "fp16"]) | json_values,
    body=st.binary(max_size=16),
)
def test_hostile_headers_with_valid_checksums_only_ever_raise_compression_error(
    entries: list[Any], codec: Any, body: bytes
) -> None:
    header = {"codec": codec, "tensors": entries, "body_sha256": hashlib.sha256(body).hexdigest()}
    try:
        decoded = decode_payload(_frame(header, body), {"w": (2,)})
    except CompressionError:
        return
    assert decoded.keys() == {"w"}
    assert decoded["w"].shape == (2,)

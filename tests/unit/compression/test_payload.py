"""The v3 streaming payload: round trips, size bound, refusal of anything malformed or hostile."""

from __future__ import annotations

import contextlib
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from swarm.compression import (
    CompressionPolicy,
    ErrorFeedback,
    decode_payload,
    encode_payload,
    encode_stream,
    iter_payload,
    payload_size_bound,
    plan_records,
    read_header,
    record_seed,
)
from swarm.compression.payload import (
    GROUP_ELEMENTS,
    MAX_HEADER_BYTES,
    MAX_RECORD_HEADER_BYTES,
)
from swarm.protocol.errors import CompressionError

Record = tuple[dict[str, Any], bytes]

SHAPES = {"a.weight": (6, 8), "b.bias": (8,)}
INT8 = CompressionPolicy(chain="int8", small_chain="fp32", small_elements=0)
FP32 = CompressionPolicy(chain="fp32", small_chain="fp32")


def _tensors(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=generator) for n, s in sorted(shapes.items())}


def _split(payload: bytes) -> tuple[dict[str, Any], list[Record]]:
    """Take a payload apart: the header and each record with its body."""
    magic, version, length = struct.unpack_from("<4sBI", payload)
    assert (magic, version) == (b"SWPL", 3)
    pos = 9 + length
    header = json.loads(payload[9:pos])
    records = []
    while pos < len(payload):
        (length,) = struct.unpack_from("<I", payload, pos)
        record = json.loads(payload[pos + 4 : pos + 4 + length])
        pos += 4 + length
        records.append((record, payload[pos : pos + record["size"]]))
        pos += record["size"]
    assert pos == len(payload)
    return header, records


def _join(
    header: dict[str, Any] | bytes,
    records: list[tuple[dict[str, Any] | bytes, bytes]],
    *,
    magic: bytes = b"SWPL",
    version: int = 3,
    header_length: int | None = None,
) -> bytes:
    """Build a payload by hand: magic, u8 version, u32 header length, header, records."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(raw) if header_length is None else header_length
    out = magic + struct.pack("<BI", version, length) + raw
    for record, body in records:
        raw_record = record if isinstance(record, bytes) else json.dumps(record).encode()
        out += struct.pack("<I", len(raw_record)) + raw_record + body
    return out


def _valid(policy: CompressionPolicy = INT8) -> tuple[dict[str, Any], list[Record]]:
    return _split(encode_payload(_tensors(SHAPES), policy, seed=5))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# --- round trips -----------------------------------------------------------------------------

CHAINS = ["fp32", "fp16", "bf16", "int8", "int4:block=16,stochastic+zstd", "topk", "cocktail"]
CHAINS += ["powersgd", "random:0.5+int8+zstd", "topk:0.3+int8+zstd"]
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
shape_dicts = st.dictionaries(
    names, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=8), max_size=5
)
policies = st.builds(
    CompressionPolicy,
    chain=st.sampled_from(CHAINS),
    small_chain=st.sampled_from(CHAINS),
    small_elements=st.sampled_from([0, 16, 4096]),
)


@settings(max_examples=100, deadline=None)
@given(shapes=shape_dicts, policy=policies, seed=st.integers(0, 2**63 - 1))
def test_payload_round_trips_each_tensor_through_its_chain(
    shapes: dict[str, tuple[int, ...]], policy: CompressionPolicy, seed: int
) -> None:
    tensors = _tensors(shapes, seed % 2**32)
    payload = encode_payload(tensors, policy, seed=seed)
    decoded = decode_payload(payload, shapes, policy)
    assert sorted(decoded) == sorted(shapes)
    for index, group in enumerate(plan_records(shapes, policy)):
        chain = policy.chain_for(shapes[group[0]])
        if len(group) == 1:
            vector = tensors[group[0]]
        else:
            vector = torch.cat([tensors[name].reshape(-1) for name in group])
        _, expected = chain.roundtrip(vector, seed=record_seed(seed, index))
        assert torch.equal(torch.cat([decoded[n].reshape(-1) for n in group]), expected.reshape(-1))
        for name in group:
            assert decoded[name].shape == shapes[name]
            if chain.lossless:
                assert torch.equal(decoded[name], tensors[name])
    assert len(payload) <= payload_size_bound(shapes, policy)


@settings(max_examples=60, deadline=None)
@given(shapes=shape_dicts, policy=policies, seed=st.integers(0, 2**63 - 1))
def test_size_bound_covers_every_payload(
    shapes: dict[str, tuple[int, ...]], policy: CompressionPolicy, seed: int
) -> None:
    # Worst case for the record headers: long names, full 20-digit seeds in the metadata.
    tensors = {n * 4: t for n, t in _tensors(shapes, seed % 2**32).items()}
    payload = encode_payload(tensors, policy, seed=seed)
    assert len(payload) <= payload_size_bound({n: t.shape for n, t in tensors.items()}, policy)


def test_size_bound_covers_large_tensors_and_sizes() -> None:
    shapes = {"embed.weight": (1000, 320), "w": (1, 1)}
    for chain in ("fp32", "int4:block=2", "topk:0.9", "cocktail", "powersgd:rank=64"):
        policy = CompressionPolicy(chain=chain, small_elements=0)
        payload = encode_payload(_tensors(shapes), policy, seed=2**63 - 2)
        assert len(payload) <= payload_size_bound(shapes, policy)


def test_stream_is_the_header_then_the_tensors_one_at_a_time() -> None:
    tensors = _tensors(SHAPES)
    payload = encode_payload(tensors, INT8, seed=5)
    pieces = [bytes(p) for p in encode_stream(tensors, INT8, seed=5)]
    assert b"".join(pieces) == payload
    header_length = 9 + struct.unpack_from("<I", payload, 5)[0]
    assert pieces[0] == payload[:header_length]
    # Each later piece lies within one tensor's record and body: nothing holds two tensors.
    _, records = _split(payload)
    bounds, end = [], header_length
    for record, body in records:
        size = 4 + len(json.dumps(record, separators=(",", ":"))) + len(body)
        bounds.append((end, end + size))
        end += size
    assert end == len(payload)
    offset = header_length
    for piece in pieces[1:]:
        first, last = offset, offset + len(piece) - 1
        assert any(lo <= first and last < hi for lo, hi in bounds), (first, last, bounds)
        offset += len(piece)
    assert len(pieces) >= 1 + len(tensors)


def test_layout_of_header_and_records() -> None:
    header, records = _valid()
    assert header == {
        "format": "swarm.tensors",
        "policy": INT8.to_dict(),
        "seed": 5,
        "num_tensors": 2,
    }
    assert [r["tensors"] for r, _ in records] == [[["a.weight", [6, 8]]], [["b.bias", [8]]]]
    record, body = records[0]
    assert set(record) == {
        "tensors",
        "dtype",
        "chain",
        "meta",
        "zstd",
        "raw",
        "size",
        "crc32",
    }
    assert record["dtype"] == "float32"
    assert record["chain"] == "int8:block=64"
    assert record["size"] == len(body) == record["raw"] == 2 + 48
    assert record["crc32"] == zlib.crc32(body)
    assert records[1][0]["chain"] == "fp32"
    # The hand-built payload the tests below tamper with decodes like the original.
    _assert_same(
        decode_payload(_join(header, records), SHAPES, INT8),
        decode_payload(encode_payload(_tensors(SHAPES), INT8, seed=5), SHAPES, INT8),
    )


def test_encoding_is_deterministic_and_independent_of_dict_order() -> None:
    tensors = _tensors(SHAPES)
    reordered = dict(reversed(list(tensors.items())))
    policy = CompressionPolicy(chain="cocktail", small_elements=0)
    assert encode_payload(tensors, policy, seed=1) == encode_payload(reordered, policy, seed=1)
    assert encode_payload(tensors, policy, seed=1) != encode_payload(tensors, policy, seed=2)


def test_an_empty_payload_decodes_to_nothing() -> None:
    payload = encode_payload({}, INT8)
    assert decode_payload(payload, {}, INT8) == {}
    assert len(payload) <= payload_size_bound({}, INT8)


def test_read_header_describes_the_payload_without_decoding_it() -> None:
    payload = encode_payload(_tensors(SHAPES), INT8, seed=11)
    for source in (payload, io.BytesIO(payload)):
        header = read_header(source)
        assert header["num_tensors"] == 2
        assert header["seed"] == 11
        assert CompressionPolicy.from_dict(header["policy"]) == INT8


def test_decoding_from_file_objects_matches_decoding_from_bytes(tmp_path: Path) -> None:
    policy = CompressionPolicy(chain="topk:0.3+int8+zstd", small_elements=0)
    payload = encode_payload(_tensors(SHAPES), policy, seed=3)
    expected = decode_payload(payload, SHAPES, policy)
    path = tmp_path / "update.swpl"
    path.write_bytes(payload)
    with path.open("rb") as file:
        _assert_same(decode_payload(file, SHAPES, policy), expected)
    _assert_same(decode_payload(io.BytesIO(payload), SHAPES, policy), expected)
    _assert_same(decode_payload(bytearray(payload), SHAPES, policy), expected)
    _assert_same(decode_payload(memoryview(payload), SHAPES, policy), expected)
    # Streaming from disk: trailing bytes in the file are noticed too.
    path.write_bytes(payload + b"\x00")
    with path.open("rb") as file, pytest.raises(CompressionError, match="trailing"):
        decode_payload(file, SHAPES, policy)


def test_iter_payload_yields_each_tensor_before_reading_the_next() -> None:
    header, records = _valid()
    (first, first_body), (second, second_body) = records
    broken = _join(header, [(first, first_body), (second, b"\x00" * len(second_body))])
    stream = iter_payload(io.BytesIO(broken), SHAPES, INT8)
    name, tensor = next(stream)
    assert name == "a.weight"
    assert tensor.shape == (6, 8)
    with pytest.raises(CompressionError, match=r"b\.bias"):
        next(stream)


# --- refusals --------------------------------------------------------------------------------


def test_a_payload_for_another_policy_is_refused() -> None:
    payload = encode_payload(_tensors(SHAPES), INT8)
    other = CompressionPolicy(chain="int4", small_chain="fp32", small_elements=0)
    with pytest.raises(CompressionError, match="policy"):
        decode_payload(payload, SHAPES, other)


@pytest.mark.parametrize("policy", [None, {}, {"chain": "int8"}, "int8", [1]])
def test_a_header_without_a_valid_policy_is_refused(policy: object) -> None:
    header, records = _valid()
    with pytest.raises(CompressionError, match="policy"):
        decode_payload(_join({**header, "policy": policy}, records), SHAPES, INT8)


@pytest.mark.parametrize("chain", ["int4:block=64", "int8:block=32", "fp32", "foo:3", "", None, 7])
def test_a_record_encoded_with_another_or_unknown_chain_is_refused(chain: object) -> None:
    header, records = _valid()
    records[0][0]["chain"] = chain
    with pytest.raises(CompressionError, match=r"a\.weight: encoded with"):
        decode_payload(_join(header, records), SHAPES, INT8)


@pytest.mark.parametrize("shape", [(8, 6), (6, 8, 1), (48,)])
def test_a_tensor_of_the_wrong_shape_is_refused(shape: tuple[int, ...]) -> None:
    payload = encode_payload(_tensors(SHAPES), INT8)
    with pytest.raises(CompressionError, match=r"a\.weight"):
        decode_payload(payload, {**SHAPES, "a.weight": shape}, INT8)


@pytest.mark.parametrize("shape", [[8, 6], [6, 8, 1], "6x8", None])
def test_a_record_claiming_another_shape_is_refused(shape: object) -> None:
    header, records = _valid()
    records[0][0]["tensors"][0][1] = shape
    with pytest.raises(CompressionError, match=r"a\.weight: shape"):
        decode_payload(_join(header, records), SHAPES, INT8)


def test_missing_and_extra_tensors_are_refused() -> None:
    payload = encode_payload(_tensors(SHAPES), INT8)
    with pytest.raises(CompressionError, match="holds 2 tensors, the job has 3"):
        decode_payload(payload, {**SHAPES, "c.weight": (2, 2)}, INT8)
    with pytest.raises(CompressionError, match="holds 2 tensors, the job has 1"):
        decode_payload(payload, {"a.weight": (6, 8)}, INT8)


def test_a_tensor_the_job_does_not_have_is_refused_by_name() -> None:
    header, records = _valid()
    records[1][0]["tensors"][0][0] = "c.bias"
    with pytest.raises(CompressionError, match=r"unexpected tensor 'c\.bias'"):
        decode_payload(_join(header, records), SHAPES, INT8)


def test_a_tensor_sent_twice_is_refused() -> None:
    header, records = _valid()
    with pytest.raises(CompressionError, match=r"a\.weight twice"):
        decode_payload(_join(header, [records[0], records[0]]), SHAPES, INT8)


def test_every_truncation_is_refused() -> None:
    policy = CompressionPolicy(chain="cocktail", small_elements=0)
    payload = encode_payload(_tensors(SHAPES), policy)
    decode_payload(payload, SHAPES, policy)
    for end in range(len(payload)):
        with pytest.raises(CompressionError, match="truncated"):
            decode_payload(payload[:end], SHAPES, policy)
        with pytest.raises(CompressionError, match="truncated"):
            decode_payload(io.BytesIO(payload[:end]), SHAPES, policy)


@pytest.mark.parametrize("extra", [b"\x00", b"SWPL", b"\x00" * 1000])
def test_trailing_bytes_are_refused(extra: bytes) -> None:
    payload = encode_payload(_tensors(SHAPES), INT8)
    with pytest.raises(CompressionError, match="trailing"):
        decode_payload(payload + extra, SHAPES, INT8)


@pytest.mark.parametrize("magic", [b"SWPM", b"\x00\x00\x00\x00", b"swpl", b"PK\x03\x04"])
def test_bad_magic_is_refused(magic: bytes) -> None:
    header, records = _valid()
    with pytest.raises(CompressionError, match="magic"):
        decode_payload(_join(header, records, magic=magic), SHAPES, INT8)
    with pytest.raises(CompressionError, match="magic"):
        read_header(_join(header, records, magic=magic))


@pytest.mark.parametrize("version", [0, 1, 2, 4, 255])
def test_other_format_versions_are_refused(version: int) -> None:
    header, records = _valid()
    with pytest.raises(CompressionError, match=f"format {version} is not supported"):
        decode_payload(_join(header, records, version=version), SHAPES, INT8)


@pytest.mark.parametrize(
    ("raw_header", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00{", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"swarm.tensors"', "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"[" * 30_000 + b"]" * 30_000, "not valid JSON"),
        (b'{"format": "swarm.tensors", "num_tensors": 1' + b"0" * 5000 + b"}", "not valid JSON"),
        (b'{"format": "swarm.weights"}', "'swarm.weights' is not 'swarm.tensors'"),
        (b"{}", "None is not 'swarm.tensors'"),
    ],
)
def test_malformed_headers_are_refused(raw_header: bytes, message: str) -> None:
    with pytest.raises(CompressionError, match=message):
        decode_payload(_join(raw_header, []), SHAPES, INT8)


@pytest.mark.parametrize("declared", [MAX_HEADER_BYTES + 1, 2**32 - 1])
def test_huge_header_lengths_are_refused_before_reading(declared: int) -> None:
    header, _ = _valid()
    with pytest.raises(CompressionError, match="out of bounds"):
        decode_payload(_join(header, [], header_length=declared), SHAPES, INT8)


@pytest.mark.parametrize("count", [None, -1, 3, "2", 2.5, 10**30])
def test_a_wrong_tensor_count_is_refused(count: object) -> None:
    header, records = _valid()
    with pytest.raises(CompressionError, match="tensors, the job has 2"):
        decode_payload(_join({**header, "num_tensors": count}, records), SHAPES, INT8)


@pytest.mark.parametrize("declared", [MAX_RECORD_HEADER_BYTES + 1, 2**32 - 1])
def test_huge_record_lengths_are_refused_before_reading(declared: int) -> None:
    header, _ = _valid()
    payload = _join(header, [])
    with pytest.raises(CompressionError, match="record header length"):
        decode_payload(payload + struct.pack("<I", declared) + b"{}", SHAPES, INT8)


@pytest.mark.parametrize(
    "record",
    [b"{bad", b"[]", b"\xc3\x28", b'{"meta": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"],
)
def test_malformed_record_headers_are_refused(record: bytes) -> None:
    header, _ = _valid()
    with pytest.raises(CompressionError, match="record header"):
        decode_payload(_join(header, [(record, b"")]), SHAPES, INT8)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("size", 2**40, "size=.* is invalid"),
        ("size", -1, "size=-1 is invalid"),
        ("size", True, "size=True is invalid"),
        ("size", "50", "size='50' is invalid"),
        ("size", 50.0, "size=50.0 is invalid"),
        ("size", None, "size=None is invalid"),
        ("size", 51, "exceed the bound"),
        ("raw", 2**64, "raw=.* is invalid"),
        ("raw", 4096, "exceed the bound"),
        ("raw", 49, "raw bytes"),
        ("crc32", -5, "crc32=-5 is invalid"),
        ("crc32", 2**33, "crc32=.* is invalid"),
        ("crc32", "0", "invalid"),
        ("zstd", True, "zstd"),
        ("dtype", "float16", "dtype 'float16' is not float32"),
        ("meta", None, "stage metadata"),
        ("meta", [], "stage metadata"),
        ("meta", [{}, {}], "stage metadata"),
        ("meta", ["x"], "must be objects"),
    ],
)
def test_bad_record_fields_are_refused(field: str, value: object, message: str) -> None:
    header, records = _valid()
    records[0][0][field] = value
    with pytest.raises(CompressionError, match=message):
        decode_payload(_join(header, records), SHAPES, INT8)


def test_a_non_boolean_zstd_flag_is_refused_naming_the_field() -> None:
    header, records = _valid()
    records[0][0]["zstd"] = "false"
    with pytest.raises(CompressionError, match="zstd"):
        decode_payload(_join(header, records), SHAPES, INT8)


@pytest.mark.parametrize("position", [0, 1, 2, 17, 49])
def test_a_flipped_body_byte_fails_the_checksum(position: int) -> None:
    header, records = _valid()
    record, body = records[0]
    assert not record["zstd"]
    flipped = bytearray(body)
    flipped[position] ^= 0x10
    records[0] = (record, bytes(flipped))
    with pytest.raises(CompressionError, match=r"a\.weight: .*checksum"):
        decode_payload(_join(header, records), SHAPES, INT8)


def _zstd_payload() -> tuple[CompressionPolicy, dict[str, Any], list[Record]]:
    policy = CompressionPolicy(chain="int8+zstd", small_chain="fp32", small_elements=0)
    tensors = {"a.weight": torch.ones(6, 8).repeat(1, 4), "b.bias": torch.ones(32)}
    header, records = _split(encode_payload(tensors, policy))
    assert records[0][0]["zstd"]
    return policy, header, records


@pytest.mark.parametrize("position", [0, 3, 5, -1, -4])
def test_corrupt_zstd_is_refused(position: int) -> None:
    policy, header, records = _zstd_payload()
    record, body = records[0]
    flipped = bytearray(body)
    flipped[position] ^= 0xA5
    records[0] = (record, bytes(flipped))
    with pytest.raises(CompressionError, match=r"a\.weight"):
        decode_payload(_join(header, records), {"a.weight": (6, 32), "b.bias": (32,)}, policy)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_updates_are_refused_on_encode(bad: float) -> None:
    tensors = _tensors(SHAPES)
    tensors["a.weight"][2, 3] = bad
    with pytest.raises(CompressionError, match=r"a\.weight contains NaN or infinite"):
        encode_payload(tensors, INT8)
    with pytest.raises(CompressionError, match=r"a\.weight contains NaN or infinite"):
        encode_payload(tensors, FP32)


def test_non_finite_values_in_a_valid_fp32_record_are_refused() -> None:
    header, records = _valid(FP32)
    assert len(records) == 1  # fp32 for both: one group of 48 + 8 values
    record = records[0][0]
    nan_body = np.full(56, np.nan, dtype="<f4").tobytes()
    record["crc32"] = zlib.crc32(nan_body)
    records[0] = (record, nan_body)
    with pytest.raises(CompressionError, match=r"a\.weight\.\.b\.bias: contains NaN or infinite"):
        decode_payload(_join(header, records), SHAPES, FP32)


def test_a_block_scale_that_overflows_on_decode_saturates() -> None:
    """The largest bfloat16 scale times the code 127 is inf in float32: it saturates instead."""
    header, records = _valid()
    record, body = records[0]
    huge = b"\x7f\x7f" + bytes([127]) + body[3:]
    record["crc32"] = zlib.crc32(huge)
    records[0] = (record, huge)
    decoded = decode_payload(_join(header, records), SHAPES, INT8)["a.weight"]
    assert torch.isfinite(decoded).all()
    assert float(decoded.reshape(-1)[0]) == float(torch.finfo(torch.float32).max)


# --- fuzzing ---------------------------------------------------------------------------------

FUZZ_SHAPES = {"a.weight": (16, 24), "b.bias": (24,)}
FUZZ_CHAINS = ["fp32", "int8", "cocktail", "powersgd", "topk:0.3+int8+zstd"]


def _fuzz_payload(chain: str) -> tuple[CompressionPolicy, bytes]:
    policy = CompressionPolicy(chain=chain, small_chain="fp16", small_elements=0)
    weight = (torch.arange(16 * 24, dtype=torch.float32).reshape(16, 24) % 7) - 3
    return policy, encode_payload({"a.weight": weight, "b.bias": torch.ones(24)}, policy, seed=1)


FUZZ = {chain: _fuzz_payload(chain) for chain in FUZZ_CHAINS}


def test_fuzz_payloads_cover_zstd() -> None:
    _, records = _split(FUZZ["topk:0.3+int8+zstd"][1])
    assert records[0][0]["zstd"]
    for chain, (policy, payload) in FUZZ.items():
        assert decode_payload(payload, FUZZ_SHAPES, policy).keys() == FUZZ_SHAPES.keys(), chain


def _decode_or_refuse(data: bytes | io.BytesIO, policy: CompressionPolicy) -> None:
    """Decoding either fails with CompressionError or gives finite tensors of the job's shapes."""
    try:
        decoded = decode_payload(data, FUZZ_SHAPES, policy)
    except CompressionError:
        return
    assert {n: tuple(t.shape) for n, t in decoded.items()} == FUZZ_SHAPES
    assert all(torch.isfinite(t).all() for t in decoded.values())


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=500), prefixed=st.booleans())
def test_random_bytes_raise_only_compression_error(data: bytes, prefixed: bool) -> None:
    policy = FUZZ["int8"][0]
    source = b"SWPL\x02" + data if prefixed else data
    with pytest.raises(CompressionError):
        decode_payload(source, FUZZ_SHAPES, policy)


_edit = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**16), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 2**16), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 2**16), st.integers(1, 8)),
    st.tuples(st.just("truncate"), st.integers(0, 2**16), st.just(0)),
)


@pytest.mark.parametrize("chain", FUZZ_CHAINS)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(_edit, min_size=1, max_size=4), near_start=st.booleans())
def test_mutated_payloads_raise_only_compression_error(
    chain: str, edits: list[tuple[str, int, Any]], near_start: bool
) -> None:
    policy, payload = FUZZ[chain]
    data = bytearray(payload)
    for kind, offset, arg in edits:
        # Half the edits land in the first 400 bytes, where the headers are.
        position = offset % (min(len(data), 400) if near_start else len(data)) if data else 0
        if kind == "flip" and data:
            data[position] ^= arg
        elif kind == "insert":
            data[position:position] = arg
        elif kind == "delete":
            del data[position : position + arg]
        elif kind == "truncate":
            del data[position:]
    _decode_or_refuse(bytes(data), policy)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
_record_keys = ["name", "shape", "dtype", "chain", "meta", "zstd", "raw", "size", "crc32"]


@pytest.mark.parametrize("chain", FUZZ_CHAINS)
@settings(max_examples=60, deadline=None)
@given(
    index=st.integers(0, 1),
    key=st.sampled_from([*_record_keys, "meta.0", "meta.-1"]),
    meta_key=st.sampled_from(["k", "index", "seed", "rank", "other"]),
    value=_json_values,
)
def test_hostile_record_fields_raise_only_compression_error(
    chain: str, index: int, key: str, meta_key: str, value: object
) -> None:
    """Type confusion in any field (with intact bodies and checksums) is a CompressionError."""
    policy, payload = FUZZ[chain]
    header, records = _split(payload)
    record = records[index][0]
    if key.startswith("meta."):
        record["meta"][int(key[5:])][meta_key] = value
    else:
        record[key] = value
    _decode_or_refuse(_join(header, records), policy)


@pytest.mark.parametrize("chain", FUZZ_CHAINS)
@settings(max_examples=40, deadline=None)
@given(key=st.sampled_from(["format", "policy", "seed", "num_tensors"]), value=_json_values)
def test_hostile_header_fields_raise_only_compression_error(
    chain: str, key: str, value: object
) -> None:
    policy, payload = FUZZ[chain]
    header, records = _split(payload)
    header[key] = value
    _decode_or_refuse(_join(header, records), policy)
    with contextlib.suppress(CompressionError):
        read_header(_join(header, records))


# --- grouped records -------------------------------------------------------------------------

LORA_SHAPES = {
    f"layers.{i}.{m}.lora_{ab}": s
    for i in range(8)
    for m in ("q", "v")
    for ab, s in (("A", (8, 96)), ("B", (96, 8)))
}
LORA_SHAPES.update({f"layers.{i}.norm": (96,) for i in range(8)})


def test_many_small_tensors_share_a_few_records_and_round_trip() -> None:
    policy = CompressionPolicy(chain="int8", small_elements=500)
    tensors = _tensors(LORA_SHAPES)
    payload = encode_payload(tensors, policy, seed=9)
    _, records = _split(payload)
    # 8 fp16 norms in one record, 32 int8 matrices in another: two encoder passes, not 40.
    assert [len(r["tensors"]) for r, _ in records] == [8, 32]
    assert [r["chain"] for r, _ in records] == ["fp16", "int8:block=64"]
    decoded = decode_payload(payload, LORA_SHAPES, policy)
    for name, tensor in tensors.items():
        assert decoded[name].shape == tensor.shape
        assert torch.allclose(decoded[name], tensor, atol=tensor.abs().max().item() / 100)


def test_groups_stop_at_the_element_and_tensor_limits() -> None:
    shapes = {f"w{i:04d}": (GROUP_ELEMENTS // 4 + 1,) for i in range(6)}
    policy = CompressionPolicy(chain="int8", small_elements=0)
    plan = plan_records(shapes, policy)
    assert [len(g) for g in plan] == [3, 3]
    assert all(sum(shapes[n][0] for n in g) <= GROUP_ELEMENTS for g in plan)
    many = {f"n{i:05d}": (2, 2) for i in range(2500)}
    assert [len(g) for g in plan_records(many, policy)] == [1024, 1024, 452]
    # A tensor larger than a group is a record of its own; PowerSGD needs each matrix alone.
    big = {"a": (GROUP_ELEMENTS + 1,), "b": (4,), "c": (4,)}
    assert plan_records(big, policy) == [["a"], ["b", "c"]]
    lowrank = CompressionPolicy(chain="powersgd", small_elements=0)
    assert plan_records({"x": (8, 8), "y": (8, 8)}, lowrank) == [["x"], ["y"]]


def _merged(policy: CompressionPolicy, shapes: dict[str, tuple[int, ...]]) -> bytes:
    """A payload whose tensors are all claimed by one fp32-sized record (a hostile grouping)."""
    tensors = _tensors(shapes)
    header = read_header(encode_payload(tensors, policy))
    body = np.concatenate([t.numpy().reshape(-1) for t in tensors.values()]).astype("<f4")
    record = {
        "tensors": [[n, list(s)] for n, s in sorted(shapes.items())],
        "dtype": "float32",
        "chain": "fp32",
        "meta": [{}],
        "zstd": False,
        "raw": body.nbytes,
        "size": body.nbytes,
        "crc32": zlib.crc32(body.tobytes()),
    }
    return _join(header, [(record, body.tobytes())])


def test_a_group_the_policy_does_not_allow_is_refused() -> None:
    fp32 = CompressionPolicy(chain="fp32", small_chain="fp32", small_elements=0)
    shapes = {"a": (GROUP_ELEMENTS // 2 + 1,), "b": (GROUP_ELEMENTS // 2,)}
    with pytest.raises(CompressionError, match=f"more than {GROUP_ELEMENTS} values"):
        decode_payload(_merged(fp32, shapes), shapes, fp32)
    mixed = CompressionPolicy(chain="fp32", small_chain="fp16", small_elements=0)
    with pytest.raises(CompressionError, match=r"b\.bias: the job's policy encodes it with 'fp16'"):
        decode_payload(_merged(mixed, SHAPES), SHAPES, mixed)


def test_a_powersgd_group_is_refused() -> None:
    policy = CompressionPolicy(chain="powersgd", small_elements=0)
    shapes = {"x": (8, 8), "y": (8, 8)}
    header, records = _split(encode_payload(_tensors(shapes), policy))
    (first, body), (second, _) = records
    first["tensors"] = first["tensors"] + second["tensors"]
    with pytest.raises(CompressionError, match="encodes one tensor per record"):
        decode_payload(_join(header, [(first, body)]), shapes, policy)


@pytest.mark.parametrize(
    "tensors", [None, [], "a.weight", [["a.weight"]], [[1, [6, 8]]], [["a.weight", [6, 8], 1]]]
)
def test_a_malformed_tensor_list_is_refused(tensors: object) -> None:
    header, records = _valid()
    records[0][0]["tensors"] = tensors
    with pytest.raises(CompressionError, match="tensor"):
        decode_payload(_join(header, records), SHAPES, INT8)


def test_error_feedback_keeps_a_residual_per_tensor_of_a_group() -> None:
    policy = CompressionPolicy(chain="topk:0.1+int8", small_elements=0)
    tensors = _tensors(LORA_SHAPES)
    feedback = ErrorFeedback()
    payload = encode_payload(tensors, policy, seed=4, feedback=feedback)
    feedback.commit()
    decoded = decode_payload(payload, LORA_SHAPES, policy)
    assert len(feedback) == len(tensors)
    for name, tensor in tensors.items():
        residual = feedback.residual(name)
        assert residual is not None and residual.shape == tensor.shape
        assert torch.allclose(residual, tensor - decoded[name], atol=1e-6)

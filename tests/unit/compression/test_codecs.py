"""Tensor codecs: exact and half-precision round trips, and their refusals."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from swarm.compression import CODECS, get_codec
from swarm.protocol.errors import CompressionError

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0**-14

shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=8)


def _fp16_normal_values() -> st.SearchStrategy[float]:
    magnitude = st.floats(min_value=FP16_MIN_NORMAL, max_value=FP16_MAX, width=32)
    signed = st.tuples(magnitude, st.sampled_from([1.0, -1.0])).map(lambda t: t[0] * t[1])
    return st.just(0.0) | signed


def test_get_codec_knows_none_and_fp16() -> None:
    assert get_codec("none") is CODECS["none"]
    assert get_codec("fp16") is CODECS["fp16"]


def test_unknown_codec_is_refused_listing_the_known_ones() -> None:
    with pytest.raises(CompressionError, match="fp16, none"):
        get_codec("int8")


def test_fp16_declares_half_precision_error() -> None:
    assert CODECS["fp16"].relative_error == 2.0**-11
    assert CODECS["none"].relative_error == 0.0


@settings(max_examples=100, deadline=None)
@given(array=hnp.arrays(np.float32, shapes, elements=st.floats(width=32, allow_nan=False)))
def test_none_codec_is_exact(array: np.ndarray) -> None:
    codec = get_codec("none")
    tensor = torch.from_numpy(array)
    data = codec.encode(tensor)
    assert len(data) == codec.encoded_size(tensor.numel())
    decoded = codec.decode(data, tuple(array.shape))
    assert decoded.dtype == torch.float32
    assert torch.equal(decoded, tensor)


@settings(max_examples=100, deadline=None)
@given(array=hnp.arrays(np.float32, shapes, elements=_fp16_normal_values()))
def test_fp16_round_trip_is_within_its_declared_relative_error(array: np.ndarray) -> None:
    codec = get_codec("fp16")
    tensor = torch.from_numpy(array)
    data = codec.encode(tensor)
    assert len(data) == codec.encoded_size(tensor.numel()) == 2 * tensor.numel()
    decoded = codec.decode(data, tuple(array.shape))
    assert decoded.dtype == torch.float32
    assert decoded.shape == tensor.shape
    error = (decoded.double() - tensor.double()).abs()
    assert bool((error <= codec.relative_error * tensor.double().abs()).all())


@pytest.mark.parametrize("value", [FP16_MAX * 1.01, -1e5, float("inf"), float("-inf")])
def test_fp16_refuses_values_out_of_its_range(value: float) -> None:
    with pytest.raises(CompressionError, match="'none' codec"):
        get_codec("fp16").encode(torch.tensor([1.0, value]))


def test_fp16_accepts_its_largest_finite_value() -> None:
    codec = get_codec("fp16")
    tensor = torch.tensor([FP16_MAX, -FP16_MAX])
    assert torch.equal(codec.decode(codec.encode(tensor), (2,)), tensor)


def test_elements_are_little_endian_on_the_wire() -> None:
    assert get_codec("none").encode(torch.tensor([1.0, -2.0])) == struct.pack("<2f", 1.0, -2.0)
    assert get_codec("fp16").encode(torch.tensor([1.0])) == b"\x00\x3c"


@pytest.mark.parametrize("name", sorted(CODECS))
def test_non_contiguous_and_other_dtype_inputs_encode_by_value(name: str) -> None:
    codec = get_codec(name)
    base = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    transposed = base.t()
    assert not transposed.is_contiguous()
    decoded = codec.decode(codec.encode(transposed), (4, 3))
    assert torch.equal(decoded, transposed.float())
    bf16 = torch.tensor([0.5, 1.5], dtype=torch.bfloat16)
    assert torch.equal(codec.decode(codec.encode(bf16), (2,)), bf16.float())


def test_tensors_that_require_grad_can_be_encoded() -> None:
    tensor = torch.ones(3, requires_grad=True)
    assert get_codec("none").decode(get_codec("none").encode(tensor), (3,)).tolist() == [1, 1, 1]


@pytest.mark.parametrize("name", sorted(CODECS))
@pytest.mark.parametrize("delta", [-1, 1])
def test_decode_refuses_bytes_that_do_not_fit_the_shape(name: str, delta: int) -> None:
    codec = get_codec(name)
    data = codec.encode(torch.zeros(6))
    data = data[:delta] if delta < 0 else data + b"\x00"
    with pytest.raises(CompressionError, match=r"cannot hold shape \[2, 3\]"):
        codec.decode(data, (2, 3))


def test_decoded_tensor_is_writable_and_owns_no_shared_state() -> None:
    codec = get_codec("none")
    data = codec.encode(torch.ones(4))
    first = codec.decode(data, (4,))
    first.add_(1.0)
    assert codec.decode(data, (4,)).tolist() == [1.0] * 4

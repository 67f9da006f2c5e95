"""The compression policy: which chain each tensor gets, canonical form, header round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from swarm.compression import CHAIN_PRESETS, CompressionPolicy, parse_chain
from swarm.protocol.errors import CompressionError

SPECS = [*sorted(CHAIN_PRESETS), "int8:block=32,stochastic+zstd", "topk:0.05+bf16", "fp32+zstd"]


def test_defaults_send_everything_as_fp16() -> None:
    policy = CompressionPolicy()
    assert policy.to_dict() == {"chain": "fp16", "small_chain": "fp16", "small_elements": 4096}
    assert policy.chain_for((4096, 4096)) == parse_chain("fp16")
    assert not policy.lossless


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"chain": "int8"}, {"chain": "int8:block=64"}),
        ({"chain": "cocktail"}, {"chain": "random:0.2+topk:0.1+int4:64+zstd"}),
        ({"small_chain": "none"}, {"small_chain": "fp32"}),
        ({"chain": " topk:fraction=0.01 + fp16 "}, {"chain": "topk"}),
    ],
)
def test_two_spellings_of_a_chain_make_equal_policies(a: dict, b: dict) -> None:
    first, second = CompressionPolicy(**a), CompressionPolicy(**b)
    assert first == second
    assert first.to_dict() == second.to_dict()
    assert first.chain == parse_chain(first.chain).spec


@settings(max_examples=100, deadline=None)
@given(
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=100),
    small_elements=st.integers(0, 10**6),
)
def test_small_tensors_get_the_small_chain(shape: tuple[int, ...], small_elements: int) -> None:
    policy = CompressionPolicy(chain="int4", small_chain="bf16", small_elements=small_elements)
    numel = 1
    for dim in shape:
        numel *= dim
    small = len(shape) < 2 or numel < small_elements
    assert policy.is_small(shape) is small
    assert policy.chain_for(shape) == parse_chain("bf16" if small else "int4")


def test_vectors_are_small_however_long_and_matrices_at_the_threshold_are_not() -> None:
    policy = CompressionPolicy(chain="int8", small_chain="fp32", small_elements=100)
    assert policy.chain_for((10**9,)).spec == "fp32"
    assert policy.chain_for(()).spec == "fp32"
    assert policy.chain_for((10, 9)).spec == "fp32"
    assert policy.chain_for((10, 10)).spec == "int8:block=64"
    assert policy.chain_for((2, 5, 10)).spec == "int8:block=64"
    assert CompressionPolicy(chain="int8", small_elements=0).chain_for((1, 1)).spec == (
        "int8:block=64"
    )


@settings(max_examples=60, deadline=None)
@given(
    chain=st.sampled_from(SPECS),
    small_chain=st.sampled_from(SPECS),
    small_elements=st.integers(0, 2**40),
)
def test_policy_round_trips_through_a_json_header(
    chain: str, small_chain: str, small_elements: int
) -> None:
    policy = CompressionPolicy(chain=chain, small_chain=small_chain, small_elements=small_elements)
    header = json.loads(json.dumps(policy.to_dict()))
    assert CompressionPolicy.from_dict(header) == policy
    assert header["chain"] == parse_chain(chain).spec


@pytest.mark.parametrize(
    ("chain", "small_chain", "lossless"),
    [
        ("fp32", "none", True),
        ("fp32+zstd", "fp32", True),
        ("fp32", "fp16", False),
        ("int8", "fp32", False),
        ("topk:1+fp32", "fp32", False),
    ],
)
def test_lossless_only_when_both_chains_are(chain: str, small_chain: str, lossless: bool) -> None:
    assert CompressionPolicy(chain=chain, small_chain=small_chain).lossless is lossless


@pytest.mark.parametrize(
    "values",
    [
        None,
        [],
        "fp16",
        {"chain": "fp16", "small_chain": "fp16"},
        {"chain": "fp16", "small_chain": "fp16", "small_elements": 1, "extra": 1},
        {"chain": "int3", "small_chain": "fp16", "small_elements": 1},
        {"chain": "fp16", "small_chain": "zstd+fp16", "small_elements": 1},
        {"chain": 8, "small_chain": "fp16", "small_elements": 1},
        {"chain": ["fp16"], "small_chain": "fp16", "small_elements": 1},
        {"chain": {"a": 1}, "small_chain": "fp16", "small_elements": 1},
        {"chain": "fp16", "small_chain": "fp16", "small_elements": -1},
        {"chain": "fp16", "small_chain": "fp16", "small_elements": 2**40 + 1},
        {"chain": "fp16", "small_chain": "fp16", "small_elements": 1.0},
        {"chain": "fp16", "small_chain": "fp16", "small_elements": True},
        {"chain": "fp16", "small_chain": "fp16", "small_elements": "4096"},
        {"chain": "fp16", "small_chain": "fp16", "small_elements": None},
    ],
)
def test_a_malformed_header_policy_is_a_compression_error(values: object) -> None:
    with pytest.raises(CompressionError):
        CompressionPolicy.from_dict(values)


@pytest.mark.parametrize(
    "kwargs",
    [{"chain": "foo"}, {"small_chain": "int8+int4"}, {"small_elements": -5}, {"chain": ""}],
)
def test_invalid_policies_are_refused_at_construction(kwargs: dict) -> None:
    with pytest.raises(CompressionError):
        CompressionPolicy(**kwargs)


def test_policies_are_immutable_and_hashable() -> None:
    policy = CompressionPolicy(chain="int8")
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.chain = "fp32"  # type: ignore[misc]
    assert len({policy, CompressionPolicy(chain="int8:block=64")}) == 1

"""Codec chains: the spec grammar, canonical specs, round trips within the declared bound."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from swarm.compression import (
    CHAIN_PRESETS,
    BlockQuant,
    Cast,
    Chain,
    PowerSGD,
    RandomK,
    TopK,
    parse_chain,
)
from swarm.compression.stages import MAX_SEED, TensorState
from swarm.protocol.errors import CompressionError

BIG = float(np.float32(1e30))
HALF = 6e4  # inside the float16 range

# --- grammar ---------------------------------------------------------------------------------

_FRACTIONS = st.sampled_from([0.001, 0.01, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0]) | st.integers(
    1, 999
).map(lambda i: i / 1000)


@st.composite
def _transform(draw: st.DrawFn) -> tuple[str, TopK | RandomK | PowerSGD]:
    kind = draw(st.sampled_from(["topk", "random", "powersgd"]))
    if kind == "powersgd":
        rank = draw(st.integers(1, 1024))
        text = draw(st.sampled_from([f"powersgd:rank={rank}", f"powersgd:{rank}"]))
        if rank == 4:
            text = draw(st.sampled_from([text, "powersgd"]))
        return text, PowerSGD(rank=rank)
    fraction = draw(_FRACTIONS)
    text = draw(st.sampled_from([f"{kind}:{fraction}", f"{kind}:fraction={fraction}"]))
    return text, TopK(fraction) if kind == "topk" else RandomK(fraction)


@st.composite
def _value(draw: st.DrawFn) -> tuple[str, Cast | BlockQuant]:
    kind = draw(st.sampled_from(["fp32", "none", "fp16", "bf16", "int8", "int4"]))
    if kind in ("fp32", "none", "fp16", "bf16"):
        return kind, Cast("fp32" if kind == "none" else kind)
    block = draw(st.integers(1, 512).map(lambda b: 2 * b))
    stochastic = draw(st.booleans())
    args = [draw(st.sampled_from([f"block={block}", str(block)]))]
    if stochastic:
        args.append(draw(st.sampled_from(["stochastic", "stochastic=1", "stochastic=true"])))
    elif draw(st.booleans()):
        args.append(draw(st.sampled_from(["stochastic=0", "stochastic=false"])))
    args = draw(st.permutations(args))
    text = f"{kind}:{','.join(args)}"
    if block == 64 and not stochastic:
        text = draw(st.sampled_from([text, kind]))
    return text, BlockQuant(bits=8 if kind == "int8" else 4, block=block, stochastic=stochastic)


@st.composite
def chain_texts(draw: st.DrawFn) -> tuple[str, Chain]:
    """A chain spec in one of its spellings, and the chain it must parse to."""
    transforms = draw(st.lists(_transform(), max_size=3))
    value = draw(st.none() | _value())
    zstd = draw(st.booleans())
    pieces = [t for t, _ in transforms] + ([value[0]] if value else []) + (["zstd"] if zstd else [])
    if not pieces:
        pieces, zstd = ["zstd"], True
    expected = Chain(tuple(s for _, s in transforms), value[1] if value else Cast("fp32"), zstd)
    return "+".join(pieces), expected


@settings(max_examples=100, deadline=None)
@given(case=chain_texts())
def test_specs_parse_to_their_chain_and_the_canonical_spec_round_trips(
    case: tuple[str, Chain],
) -> None:
    text, expected = case
    chain = parse_chain(text)
    assert chain == expected
    assert parse_chain(chain.spec) == chain
    assert parse_chain(chain.spec).spec == chain.spec
    assert parse_chain(f"  {text}  ") == chain


@pytest.mark.parametrize("name", sorted(CHAIN_PRESETS))
def test_presets_parse_and_their_canonical_spec_round_trips(name: str) -> None:
    chain = parse_chain(name)
    assert chain == parse_chain(CHAIN_PRESETS[name])
    assert parse_chain(chain.spec) == chain


def test_presets_name_the_chains_the_benchmarks_measure() -> None:
    assert parse_chain("none").spec == "fp32"
    assert parse_chain("int8").spec == "int8:block=64"
    assert parse_chain("topk").spec == "topk:0.01+fp16"
    assert parse_chain("cocktail").spec == "random:0.2+topk:0.1+int4:block=64+zstd"
    assert parse_chain("powersgd").spec == "powersgd:rank=4+fp16"
    assert parse_chain("cocktail").transforms == (RandomK(0.2), TopK(0.1))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("int8", "int8:block=64"),
        ("int8:32", "int8:block=32"),
        ("int4:stochastic,block=16", "int4:block=16,stochastic=true"),
        ("int8:stochastic=0", "int8"),
        ("none", "fp32"),
        ("topk:0.1", "topk:fraction=0.1+fp32"),
        ("powersgd:8", "powersgd:rank=8+fp32"),
        (" int8 + zstd ", "int8:block=64+zstd"),
        ("zstd", "fp32+zstd"),
    ],
)
def test_equivalent_spellings_parse_to_the_same_chain(a: str, b: str) -> None:
    assert parse_chain(a) == parse_chain(b)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "non-empty"),
        ("   ", "non-empty"),
        ("int16", "unknown codec stage 'int16'"),
        ("int8++zstd", "unknown codec stage ''"),
        ("topk:0.1+lz4", "unknown codec stage 'lz4'"),
        ("zstd:3", "unknown codec stage"),
        ("int8:foo=1", r"unknown argument\(s\) \['foo'\]"),
        ("topk:rank=2", "unknown argument"),
        ("powersgd:block=2", "unknown argument"),
        ("int8+topk:0.1", "must come before the value stage"),
        ("fp16+powersgd", "must come before the value stage"),
        ("int8+fp16", "at most one value stage"),
        ("fp32+none", "at most one value stage"),
        ("zstd+int8", "zstd must be the last stage"),
        ("int8+zstd+zstd", "zstd must be the last stage"),
        ("zstd+topk:0.1", "zstd must be the last stage"),
        ("topk:0.1,fraction=0.2", "given twice"),
        ("int8:block=32,block=64", "given twice"),
        ("int8:block=abc", "not a number"),
        ("int8:block=1e3", "not a number"),
        ("topk:fraction=x", "not a number"),
        ("powersgd:rank=2.5", "not a number"),
        ("int8:stochastic=maybe", "must be a flag"),
        ("int8:block=3", "block must be even"),
        ("int4:block=0", "block must be even"),
        ("topk:0", "fraction must be in"),
        ("random:1.5", "fraction must be in"),
        ("topk:fraction=nan", "fraction must be in"),
        ("topk:nan", "unknown argument"),
        ("powersgd:rank=0", "rank must be in"),
        ("powersgd:rank=2000", "rank must be in"),
    ],
)
def test_bad_specs_raise_a_clear_compression_error(spec: str, message: str) -> None:
    with pytest.raises(CompressionError, match=message):
        parse_chain(spec)


@pytest.mark.parametrize("spec", [None, 8, b"int8"])
def test_non_string_specs_raise_compression_error(spec: object) -> None:
    with pytest.raises(CompressionError, match="non-empty string"):
        parse_chain(spec)  # type: ignore[arg-type]


def test_unhashable_specs_raise_compression_error() -> None:
    with pytest.raises(CompressionError):
        parse_chain(["int8"])  # type: ignore[arg-type]


def test_a_repeated_argument_with_a_space_is_refused() -> None:
    with pytest.raises(CompressionError, match="given twice"):
        parse_chain("int8:block=64, block=32")


@pytest.mark.parametrize("spec", ["topk:0.1234567", "random:0.0123456789"])
def test_canonical_spec_keeps_every_digit_of_a_fraction(spec: str) -> None:
    chain = parse_chain(spec)
    assert parse_chain(chain.spec) == chain


# --- round trips -----------------------------------------------------------------------------

# Chain, and the largest magnitude its value stage can carry for the inputs drawn below.
CHAINS: dict[str, float] = {
    "fp32": BIG,
    "fp16": HALF,
    "bf16": BIG,
    "int8": BIG,
    "int4": BIG,
    "int8:block=2,stochastic": BIG,
    "int4:block=6,stochastic+zstd": BIG,
    "int8:block=64+zstd": BIG,
    "topk": HALF,
    "topk:0.3+bf16+zstd": BIG,
    "topk:0.5+fp32": BIG,
    "random": HALF,
    "random:0.3+int8:block=8": BIG,
    "random:0.5+topk:0.5+int4:block=8+zstd": BIG,
    "random:0.2+fp32+zstd": BIG,
    "cocktail": BIG,
    "powersgd": 1e3,
    "powersgd:rank=1+fp32": BIG,
    "powersgd:rank=2+int8:block=16+zstd": BIG,
    "random:0.5+powersgd:rank=2+bf16": BIG,
}


def tensors(max_abs: float) -> st.SearchStrategy[torch.Tensor]:
    shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9)
    elements = st.one_of(
        st.just(0.0),
        st.floats(-10, 10, width=32),
        st.floats(-max_abs, max_abs, width=32, allow_nan=False, allow_infinity=False),
    )
    return hnp.arrays(np.float32, shapes, elements=elements).map(
        lambda a: torch.from_numpy(a.copy())
    )


def _error(x: torch.Tensor, decoded: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm((x.double() - decoded.double()).reshape(-1)))


@pytest.mark.parametrize("spec", sorted(CHAINS))
@settings(max_examples=50, deadline=None)
@given(data=st.data(), seed=st.integers(0, MAX_SEED))
def test_round_trip_error_is_within_the_chain_bound(
    spec: str, data: st.DataObject, seed: int
) -> None:
    chain = parse_chain(spec)
    x = data.draw(tensors(CHAINS[spec]))
    bound = chain.error_bound(x, seed=seed)
    encoded, decoded = chain.roundtrip(x, seed=seed)
    assert decoded.shape == x.shape
    assert decoded.dtype == torch.float32
    assert torch.isfinite(decoded).all()
    assert _error(x, decoded) <= bound * (1 + 1e-5) + 1e-30
    # The header's numbers describe the body, and stay within the decoder's limit.
    assert encoded.chain == chain.spec
    assert len(encoded.meta) == len(chain.transforms) + 1
    assert encoded.raw_bytes == sum(chain.part_sizes(tuple(x.shape), encoded.meta))
    assert len(encoded.body) <= chain.max_body_bytes(tuple(x.shape))
    assert encoded.raw_bytes <= chain.max_body_bytes(tuple(x.shape))
    if not encoded.zstd:
        assert len(encoded.body) == encoded.raw_bytes
        assert zlib.crc32(encoded.body) == encoded.crc32
    else:
        assert chain.zstd
        assert len(encoded.body) < encoded.raw_bytes
    # Deterministic for a seed.
    assert chain.encode(x, seed=seed) == encoded


@settings(max_examples=60, deadline=None)
@given(
    case=chain_texts(),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12),
    seed=st.integers(0, 2**32),
)
def test_max_body_bytes_bounds_every_body(
    case: tuple[str, Chain], shape: tuple[int, ...], seed: int
) -> None:
    chain = case[1]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    encoded = chain.encode(x, seed=seed)
    limit = chain.max_body_bytes(shape)
    assert len(encoded.body) <= limit
    assert encoded.raw_bytes <= limit


def test_lossless_chain_is_bit_exact() -> None:
    x = torch.tensor([[1.0, -0.0, 3.4e38], [1e-45, -7.5, 2.0**-126]])
    chain = parse_chain("fp32+zstd")
    assert chain.lossless
    _, decoded = chain.roundtrip(x)
    assert torch.equal(decoded.view(torch.int32), x.view(torch.int32))
    assert chain.error_bound(x) == 0.0


@pytest.mark.parametrize(
    ("spec", "lossless"),
    [("fp32", True), ("none+zstd", True), ("fp16", False), ("int8", False), ("topk:1", False)],
)
def test_lossless_means_no_transform_and_fp32(spec: str, lossless: bool) -> None:
    assert parse_chain(spec).lossless is lossless


def test_zstd_is_used_only_when_it_makes_the_body_smaller() -> None:
    chain = parse_chain("int8+zstd")
    compressible = chain.encode(torch.ones(4096))
    assert compressible.zstd
    assert len(compressible.body) < compressible.raw_bytes // 4
    tiny = chain.encode(torch.ones(8))  # fewer raw bytes than a zstd frame is worth
    assert not tiny.zstd
    _, decoded = chain.roundtrip(torch.ones(4096))
    assert _error(torch.ones(4096), decoded) <= chain.error_bound(torch.ones(4096))


def test_stochastic_chains_depend_on_the_seed() -> None:
    chain = parse_chain("random:0.5+int8:stochastic")
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    assert chain.encode(x, seed=1) == chain.encode(x, seed=1)
    assert chain.encode(x, seed=1).body != chain.encode(x, seed=2).body
    assert chain.encode(x, seed=1).meta != chain.encode(x, seed=2).meta


def test_encode_updates_the_warm_start_and_error_bound_does_not() -> None:
    chain = parse_chain("powersgd:rank=2+fp32")
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    state: TensorState = {}
    chain.error_bound(x, state=state)
    assert state == {}
    chain.encode(x, state=state)
    assert state["powersgd_q"].shape == (6, 2)
    warm = state["powersgd_q"].clone()
    chain.error_bound(x, state=state)
    assert torch.equal(state["powersgd_q"], warm)
    # The next encode starts from the warm start: another power iteration, a closer result.
    cold_error = _error(x, chain.roundtrip(x)[1])
    warm_error = _error(x, chain.roundtrip(x, state=state)[1])
    assert warm_error < cold_error


def test_topk_then_blockwise_quantizer_stays_within_the_chain_bound() -> None:
    chain = parse_chain("topk:1+int8:block=2")
    x = torch.tensor([4.9375, 16.6875, -16.1875, -2.375])
    _, decoded = chain.roundtrip(x)
    assert _error(x, decoded) <= chain.error_bound(x)


# --- decoding refuses inconsistent records ---------------------------------------------------


def _encoded(spec: str = "topk:0.1+int8+zstd") -> tuple[Chain, torch.Tensor, dict]:
    chain = parse_chain(spec)
    x = torch.zeros(32, 32)
    x[::3, ::5] = torch.arange(77, dtype=torch.float32).reshape(11, 7)
    e = chain.encode(x)
    args = {
        "shape": (32, 32),
        "metas": e.meta,
        "zstd": e.zstd,
        "raw_bytes": e.raw_bytes,
        "crc": e.crc32,
        "body": e.body,
    }
    return chain, x, args


def test_decode_of_valid_arguments_gives_the_roundtrip() -> None:
    chain, x, args = _encoded()
    assert args["zstd"]
    assert torch.equal(chain.decode(**args), chain.roundtrip(x)[1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metas": [{}]}, "stage metadata"),
        ({"metas": "x"}, "stage metadata"),
        ({"metas": [{"k": 103, "index": "bitmap"}, 5]}, "must be objects"),
        ({"metas": [{"k": 104, "index": "bitmap"}, {}]}, "kept 104"),
        ({"shape": (32, 33)}, "kept|raw bytes"),
        ({"raw_bytes": 1}, "raw bytes"),
        ({"crc": 12345}, "checksum"),
        ({"body": b"\x28\xb5\x2f\xfd" + b"\x00" * 40}, "zstd"),
        ({"body": b""}, "zstd"),
        ({"body": zstandard.ZstdCompressor(write_content_size=True).compress(b"a" * 99)}, "zstd"),
    ],
)
def test_decode_rejects_inconsistent_records(change: dict, message: str) -> None:
    chain, _, args = _encoded()
    with pytest.raises(CompressionError, match=message):
        chain.decode(**{**args, **change})


def test_decode_rejects_zstd_for_a_chain_without_it_and_a_short_body() -> None:
    chain, _, args = _encoded("topk:0.1+int8")
    assert not args["zstd"]
    with pytest.raises(CompressionError, match="zstd is not part"):
        chain.decode(**{**args, "zstd": True})
    with pytest.raises(CompressionError, match="body of"):
        chain.decode(**{**args, "body": args["body"][:-1]})
    flipped = bytes([args["body"][0] ^ 1]) + args["body"][1:]
    with pytest.raises(CompressionError, match="checksum"):
        chain.decode(**{**args, "body": flipped})

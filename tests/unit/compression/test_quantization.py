"""Value stages: float casts, blockwise int8/int4 quantization and per-row activation codecs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from swarm.compression import BlockQuant, Cast, RowQuant
from swarm.compression.stages import MAX_SEED
from swarm.protocol.errors import CompressionError

FP16_MAX = 65504.0
BIG = float(np.float32(1e30))
FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)
CAST_ERRORS = {"fp16": (2.0**-11, 2.0**-25), "bf16": (2.0**-8, 2.0**-134)}


def _values(max_abs: float) -> st.SearchStrategy[float]:
    """Finite float32 values up to `max_abs`, mixing zeros, tiny, ordinary and huge magnitudes."""
    bounded = st.floats(-max_abs, max_abs, width=32, allow_nan=False, allow_infinity=False)
    ordinary = st.floats(-10.0, 10.0, width=32)
    return st.one_of(st.just(0.0), ordinary, bounded)


def vectors(max_abs: float, max_size: int = 300) -> st.SearchStrategy[torch.Tensor]:
    """1-D float32 tensors, empty included, of odd and even lengths."""
    arrays = hnp.arrays(np.float32, st.integers(0, max_size), elements=_values(max_abs))
    return arrays.map(lambda a: torch.from_numpy(a.copy()))


def tensors(max_abs: float, min_dims: int = 1) -> st.SearchStrategy[torch.Tensor]:
    shapes = hnp.array_shapes(min_dims=min_dims, max_dims=3, min_side=0, max_side=9)
    arrays = hnp.arrays(np.float32, shapes, elements=_values(max_abs))
    return arrays.map(lambda a: torch.from_numpy(a.copy()))


def _errors(x: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    return (x.double() - decoded.double()).abs()


def _l2(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t.double()))


def _roundtrip(stage: BlockQuant | Cast, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    parts, meta = stage.encode(x, seed)
    assert [len(p) for p in parts] == stage.part_sizes(x.numel(), meta)
    decoded = stage.decode(parts, x.numel(), meta)
    assert decoded.dtype == torch.float32
    assert decoded.shape == (x.numel(),)
    return decoded


# --- Cast ------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(x=vectors(float(torch.finfo(torch.float32).max)))
def test_fp32_cast_is_bit_exact(x: torch.Tensor) -> None:
    stage = Cast("fp32")
    decoded = _roundtrip(stage, x)
    assert torch.equal(decoded.view(torch.int32), x.view(torch.int32))
    assert stage.error_bound(x) == 0.0
    assert stage.part_sizes(x.numel(), {}) == [4 * x.numel()]


@pytest.mark.parametrize(("dtype", "max_abs"), [("fp16", FP16_MAX), ("bf16", BIG)])
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_half_casts_stay_within_their_relative_bound(
    dtype: str, max_abs: float, data: st.DataObject
) -> None:
    x = data.draw(vectors(max_abs))
    stage = Cast(dtype)
    decoded = _roundtrip(stage, x)
    relative, absolute = CAST_ERRORS[dtype]
    errors = _errors(x, decoded)
    assert (errors <= x.double().abs() * relative + absolute).all()
    assert _l2(errors) <= stage.error_bound(x) * (1 + 1e-12)
    assert stage.part_sizes(x.numel(), {}) == [2 * x.numel()]
    # Round to nearest: exactly what the hardware conversion gives.
    wire = torch.float16 if dtype == "fp16" else torch.bfloat16
    assert torch.equal(decoded, x.to(wire).to(torch.float32))


@settings(max_examples=60, deadline=None)
@given(
    x=vectors(FP16_MAX, max_size=40),
    magnitude=st.floats(65520.0, BIG, width=32),
    sign=st.sampled_from([1.0, -1.0]),
    position=st.integers(0, 40),
)
def test_fp16_refuses_values_beyond_its_range_instead_of_sending_inf(
    x: torch.Tensor, magnitude: float, sign: float, position: int
) -> None:
    position = min(position, x.numel())
    bad = torch.cat([x[:position], torch.tensor([sign * magnitude]), x[position:]])
    with pytest.raises(CompressionError, match="fp16"):
        Cast("fp16").encode(bad, 0)


def test_fp16_rounds_values_just_below_overflow_to_its_max() -> None:
    decoded = _roundtrip(Cast("fp16"), torch.tensor([65519.0, -65519.0]))
    assert decoded.tolist() == [FP16_MAX, -FP16_MAX]


@settings(max_examples=30, deadline=None)
@given(
    magnitude=st.floats(3.39620004270512e38, float(torch.finfo(torch.float32).max), width=32),
    sign=st.sampled_from([1.0, -1.0]),
)
def test_bf16_refuses_values_that_round_to_inf(magnitude: float, sign: float) -> None:
    with pytest.raises(CompressionError, match="bf16"):
        Cast("bf16").encode(torch.tensor([1.0, sign * magnitude]), 0)


def test_cast_rejects_an_unknown_float_type() -> None:
    with pytest.raises(CompressionError, match="fp8"):
        Cast("fp8")


def test_only_lossy_casts_are_biased() -> None:
    assert not Cast("fp32").biased
    assert Cast("fp16").biased
    assert Cast("bf16").biased
    assert [Cast(d).spec() for d in ("fp32", "fp16", "bf16")] == ["fp32", "fp16", "bf16"]


# --- BlockQuant ------------------------------------------------------------------------------

blocks = st.integers(1, 40).map(lambda b: 2 * b) | st.sampled_from([2, 64, 128])


@settings(max_examples=100, deadline=None)
@given(
    x=vectors(BIG),
    bits=st.sampled_from([8, 4]),
    block=blocks,
    stochastic=st.booleans(),
    seed=st.integers(0, MAX_SEED),
)
def test_block_quant_error_is_within_its_per_element_bound(
    x: torch.Tensor, bits: int, block: int, stochastic: bool, seed: int
) -> None:
    stage = BlockQuant(bits=bits, block=block, stochastic=stochastic)
    decoded = _roundtrip(stage, x, seed)
    bound = stage.max_abs_errors(x)
    assert bound.shape == x.shape
    errors = _errors(x, decoded)
    assert (errors <= bound.double()).all()
    assert _l2(errors) <= stage.error_bound(x) * (1 + 1e-12)
    # The bound is not vacuous: half a step (a whole one when stochastic) of its block's scale.
    qmax = 127 if bits == 8 else 7
    padded = torch.cat([x.abs(), x.new_zeros(-x.numel() % block)]).view(-1, block)
    absmax = padded.amax(dim=1).double().repeat_interleave(block)[: x.numel()]
    steps = 1.0 if stochastic else 0.5
    assert (bound.double() <= absmax / qmax * steps * (1 + 2.0**-6) + 2 * FLOAT32_TINY).all()


@settings(max_examples=50, deadline=None)
@given(numel=st.integers(0, 200), bits=st.sampled_from([8, 4]), block=blocks)
def test_block_quant_encodes_zeros_exactly_in_the_declared_size(
    numel: int, bits: int, block: int
) -> None:
    stage = BlockQuant(bits=bits, block=block)
    parts, meta = stage.encode(torch.zeros(numel), 0)
    num_blocks = math.ceil(numel / block)
    code_bytes = numel if bits == 8 else math.ceil(numel / 2)
    assert [len(p) for p in parts] == [2 * num_blocks, code_bytes]
    assert stage.max_part_bytes(numel) == 2 * num_blocks + code_bytes
    assert torch.equal(stage.decode(parts, numel, meta), torch.zeros(numel))


@settings(max_examples=50, deadline=None)
@given(x=vectors(1e3, max_size=100), bits=st.sampled_from([8, 4]), seed=st.integers(0, 2**40))
def test_deterministic_rounding_ignores_the_seed(x: torch.Tensor, bits: int, seed: int) -> None:
    stage = BlockQuant(bits=bits, block=16)
    assert stage.encode(x, seed) == stage.encode(x, seed + 1)
    assert not stage.encode(x, seed)[1]


def test_stochastic_rounding_depends_on_the_seed_and_records_it() -> None:
    x = torch.linspace(-1, 1, 256)
    stage = BlockQuant(bits=4, block=64, stochastic=True)
    first, meta = stage.encode(x, 7)
    assert meta == {"seed": 7}
    assert stage.encode(x, 7) == (first, meta)
    assert stage.encode(x, 8)[0] != first


def _steps_at_three_tenths(bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One block whose scale is exactly 1.0; every other element lies 0.3 above a code."""
    qmax = 127 if bits == 8 else 7
    codes = torch.arange(-qmax + 1, qmax - 1, dtype=torch.float32)
    lower = codes.repeat(64 // codes.numel() + 1)[:63]
    x = torch.cat([torch.tensor([float(qmax)]), lower + 0.3])
    return x, torch.cat([torch.tensor([float(qmax)]), lower])


@pytest.mark.parametrize("bits", [8, 4])
def test_stochastic_rounding_is_unbiased_and_nearest_rounding_is_not(bits: int) -> None:
    x, lower = _steps_at_three_tenths(bits)
    draws = 400
    stochastic = BlockQuant(bits=bits, block=64, stochastic=True)
    decodes = torch.stack([_roundtrip(stochastic, x, seed) for seed in range(draws)]).double()
    # Every decode is one of the two neighbouring codes.
    assert ((decodes == lower.double()) | (decodes == lower.double() + 1)).all()
    mean_error = decodes.mean(dim=0) - x.double()
    standard_error = decodes.std(dim=0) / math.sqrt(draws)
    # Each element: its mean decode is within 4 standard errors (about 0.09) of the input ...
    assert (mean_error[1:].abs() < 4 * standard_error[1:]).all()
    # ... and over all 63 elements the average bias is tiny.
    assert abs(float(mean_error[1:].mean())) < 4 * float(standard_error[1:].mean()) / math.sqrt(63)
    # Nearest rounding sends the lower code every time: biased by a visible 0.3 of a step.
    nearest = _roundtrip(BlockQuant(bits=bits, block=64), x).double()
    assert torch.equal(nearest, lower.double())
    assert float((nearest - x.double())[1:].mean()) == pytest.approx(-0.3, abs=1e-4)
    assert abs(float((nearest - x.double())[1:].mean())) > 10 * float(standard_error[1:].max())


@pytest.mark.parametrize(
    ("bits", "block"), [(2, 64), (16, 64), (8, 0), (8, 3), (4, 63), (8, (1 << 20) + 2)]
)
def test_block_quant_rejects_invalid_parameters(bits: int, block: int) -> None:
    with pytest.raises(CompressionError):
        BlockQuant(bits=bits, block=block)


def test_block_quant_spec_and_bias() -> None:
    assert BlockQuant(bits=8, block=64).spec() == "int8:block=64"
    assert BlockQuant(bits=4, block=32, stochastic=True).spec() == "int4:block=32,stochastic"
    assert BlockQuant().biased
    assert not BlockQuant(stochastic=True).biased


def test_int4_packs_two_codes_per_byte_for_odd_lengths() -> None:
    x = torch.tensor([7.0, -7.0, 3.0, -1.0, 0.0])
    stage = BlockQuant(bits=4, block=6)
    parts, meta = stage.encode(x, 0)
    assert len(parts[1]) == 3
    assert torch.equal(stage.decode(parts, 5, meta), x)


def _one_block(bits: int = 8) -> tuple[BlockQuant, list[bytes]]:
    stage = BlockQuant(bits=bits, block=2)
    parts, _ = stage.encode(torch.tensor([1.0, 0.5]), 0)
    return stage, parts


@pytest.mark.parametrize(
    "scale_bits",
    [b"\x80\xbf", b"\x80\x7f", b"\xc0\x7f", b"\x80\xff"],  # -1.0, +inf, nan, -inf
    ids=["negative", "inf", "nan", "minus-inf"],
)
def test_block_quant_decode_rejects_bad_scales(scale_bits: bytes) -> None:
    stage, parts = _one_block()
    with pytest.raises(CompressionError, match="scale"):
        stage.decode([scale_bits, parts[1]], 2, {})


def test_int4_decode_rejects_the_unused_code_minus_eight() -> None:
    stage, parts = _one_block(bits=4)
    with pytest.raises(CompressionError, match="outside"):
        stage.decode([parts[0], bytes([0x80])], 2, {})  # low nibble 0 is the code -8


def test_int8_decode_accepts_the_full_code_range() -> None:
    stage, parts = _one_block()
    step = float(stage.decode([parts[0], bytes([1, 0])], 2, {})[0])  # the code 1
    # 0x81 is -127 and 0x7f is 127, the extreme codes.
    assert stage.decode([parts[0], bytes([0x81, 0x7F])], 2, {}).tolist() == [
        -127 * step,
        127 * step,
    ]


def test_int8_decode_rejects_the_code_minus_128() -> None:
    stage, parts = _one_block()
    with pytest.raises(CompressionError, match="outside"):
        stage.decode([parts[0], bytes([0x80, 0x01])], 2, {})


@pytest.mark.parametrize(
    "x",
    [[3.0, 0.3907471001148224], [3.0, 0.2012939602136612], [3.0, 0.4854736626148224]],
)
def test_values_just_above_a_half_step_round_to_the_nearer_code(x: list[float]) -> None:
    """0.39074710 is one float32 ulp above 16.5 steps of the scale 3/127 (rounded up)."""
    stage = BlockQuant(bits=8, block=2)
    vector = torch.tensor(x)
    decoded = _roundtrip(stage, vector)
    assert (_errors(vector, decoded) <= stage.max_abs_errors(vector).double()).all()


def test_int4_decodes_values_near_the_float32_maximum_to_finite_values() -> None:
    x = torch.tensor([3.4e38, -1.0, 0.5, 2.0])
    stage = BlockQuant(bits=4, block=4)
    decoded = _roundtrip(stage, x)
    assert torch.isfinite(decoded).all()
    assert (_errors(x, decoded) <= stage.max_abs_errors(x).double()).all()


# --- RowQuant --------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(x=tensors(BIG).filter(lambda t: t.shape[-1] > 0), bits=st.sampled_from([8, 4]))
def test_row_quant_round_trips_within_half_a_row_step(x: torch.Tensor, bits: int) -> None:
    codec = RowQuant(bits=bits)
    data = codec.encode(x)
    assert len(data) == codec.encoded_size(tuple(x.shape))
    decoded = codec.decode(data, tuple(x.shape))
    assert decoded.shape == x.shape
    assert decoded.dtype == torch.float32
    bound = codec.max_abs_errors(x)
    assert bound.shape == x.shape
    assert (_errors(x, decoded) <= bound.double()).all()
    if x.numel():
        qmax = 127 if bits == 8 else 7
        row_max = x.abs().reshape(-1, x.shape[-1]).amax(dim=1, keepdim=True).double()
        limit = row_max / qmax * 0.5 * (1 + 2.0**-6) + 2 * FLOAT32_TINY
        assert (bound.reshape(-1, x.shape[-1]).double() <= limit).all()


def test_row_quant_keeps_each_row_precise_despite_an_outlier_row() -> None:
    small = torch.linspace(-1, 1, 33)
    x = torch.stack([small, small * 1e6])
    decoded = RowQuant(bits=8).decode(RowQuant(bits=8).encode(x), (2, 33))
    assert float((decoded[0] - small).abs().max()) <= 1.0 / 254 * 1.01


@pytest.mark.parametrize("shape", [(3, 0), (2, 4, 0)])
def test_row_quant_round_trips_a_zero_width_tensor(shape: tuple[int, ...]) -> None:
    codec = RowQuant()
    data = codec.encode(torch.zeros(shape))
    assert data == b""
    assert codec.decode(data, shape).shape == shape


def test_row_quant_rejects_scalars() -> None:
    with pytest.raises(CompressionError, match="scalar"):
        RowQuant().encode(torch.tensor(1.0))
    with pytest.raises(CompressionError, match="scalar"):
        RowQuant().decode(b"", ())


@pytest.mark.parametrize("delta", [-1, 1])
def test_row_quant_rejects_data_of_the_wrong_length(delta: int) -> None:
    codec = RowQuant(bits=4)
    data = codec.encode(torch.randn(3, 5))
    bad = data[:delta] if delta < 0 else data + b"\x00"
    with pytest.raises(CompressionError, match="expected"):
        codec.decode(bad, (3, 5))
    with pytest.raises(CompressionError, match="expected"):
        codec.decode(data, (3, 7))

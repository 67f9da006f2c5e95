"""PowerSGD: low-rank approximation with a warm-started power iteration."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.compression import PowerSGD, parse_chain
from swarm.compression.stages import TensorState
from swarm.protocol.errors import CompressionError


def _roundtrip(
    stage: PowerSGD, m: torch.Tensor, state: TensorState | None = None, seed: int = 0
) -> tuple[torch.Tensor, dict]:
    """Encode `m` (any shape) and decode it, passing the inner vector through unchanged."""
    shape = tuple(m.shape)
    numel = m.numel()
    inner, parts, meta = stage.encode(m.reshape(-1), shape, seed, {} if state is None else state)
    assert parts == []
    assert stage.inner_numel(numel, shape, meta) == inner.numel()
    assert inner.numel() <= stage.max_inner_numel(numel, shape)
    assert stage.part_sizes(numel, shape, meta) == []
    decoded = stage.decode(inner, [], numel, shape, meta)
    assert decoded.shape == (numel,)
    return decoded.reshape(shape), meta


def _error(m: torch.Tensor, decoded: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm((m - decoded).double()))


def _norm(m: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(m.double()))


def _low_rank(rows: int, cols: int, rank: int, seed: int) -> torch.Tensor:
    """A well-conditioned rank-`rank` matrix: singular values in [1, 2]."""
    generator = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, rank, generator=generator))
    v, _ = torch.linalg.qr(torch.randn(cols, rank, generator=generator))
    return (u * (1 + torch.rand(rank, generator=generator))) @ v.T


@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(1, 16),
    cols=st.integers(1, 16),
    true_rank=st.integers(1, 4),
    extra=st.integers(0, 3),
    seed=st.integers(0, 2**31),
)
def test_exact_when_rank_covers_the_true_rank(
    rows: int, cols: int, true_rank: int, extra: int, seed: int
) -> None:
    true_rank = min(true_rank, rows, cols)
    m = _low_rank(rows, cols, true_rank, seed)
    decoded, meta = _roundtrip(PowerSGD(rank=true_rank + extra), m, seed=seed)
    assert meta == {"rank": min(true_rank + extra, rows, cols)}
    # Exact up to float32 rounding, which a badly conditioned random start can amplify to about
    # 1e-3; missing one of the directions would cost at least 1/4 of the norm.
    assert _error(m, decoded) <= 5e-3 * _norm(m)


@settings(max_examples=80, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=2, max_size=3).map(tuple),
    rank=st.integers(1, 5),
    scale=st.sampled_from([0.0, 1e-20, 1.0, 1e20, 1e30]),
    seed=st.integers(0, 2**31),
)
def test_error_never_exceeds_the_matrix_norm(
    shape: tuple[int, ...], rank: int, scale: float, seed: int
) -> None:
    """P P^T M is a projection of M: whatever it misses is less than M itself."""
    m = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale
    stage = PowerSGD(rank=rank)
    state: TensorState = {}
    decoded, meta = _roundtrip(stage, m, state, seed)
    assert _error(m, decoded) <= _norm(m) * (1 + 1e-5)
    rows, cols = shape[0], m.numel() // shape[0]
    assert meta["rank"] == min(rank, rows, cols)
    if scale:
        assert state["powersgd_q"].shape == (cols, meta["rank"])
    else:
        assert state == {}
    # The chain's declared bound holds too.
    assert _error(m, decoded) <= PowerSGD(rank).error_bound(
        m.reshape(-1), shape, seed, {}, lambda inner: 0.0
    ) * (1 + 1e-5)


def _spectrum_matrix() -> tuple[torch.Tensor, torch.Tensor, float]:
    """A 12 x 10 matrix with singular values 4, 3, 1, 0.9, ..., its right singular vectors,
    and the best rank-2 error."""
    generator = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(12, 12, generator=generator))
    v, _ = torch.linalg.qr(torch.randn(10, 10, generator=generator))
    s = torch.tensor([4.0, 3.0, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    return u[:, :10] @ torch.diag(s) @ v.T, v, float(s[2:].norm())


def test_warm_start_is_stored_and_converges_to_the_best_rank_r_approximation() -> None:
    m, _, best = _spectrum_matrix()
    stage = PowerSGD(rank=2)
    state: TensorState = {}
    errors = []
    for _ in range(8):
        decoded, _ = _roundtrip(stage, m, state, seed=0)
        errors.append(_error(m, decoded))
        assert state["powersgd_q"].shape == (10, 2)
    # A cold start from a random Q is well off the optimum; the warm start reaches it.
    assert errors[0] > 1.3 * best
    assert errors[-1] == pytest.approx(best, rel=1e-4)
    assert errors[-1] < errors[0]
    # Without the state every call is the same cold start.
    cold = [_error(m, _roundtrip(stage, m, {}, seed=0)[0]) for _ in range(3)]
    assert cold == [errors[0]] * 3


def test_warm_start_is_used_when_present() -> None:
    m, v, best = _spectrum_matrix()
    stage = PowerSGD(rank=2)
    state: TensorState = {"powersgd_q": v[:, :2].contiguous()}
    decoded, _ = _roundtrip(stage, m, state, seed=0)
    assert _error(m, decoded) == pytest.approx(best, rel=1e-4)
    # The state now holds M^T P, the next warm start.
    assert state["powersgd_q"].shape == (10, 2)
    assert not torch.equal(state["powersgd_q"], v[:, :2])


def test_a_warm_start_of_the_wrong_shape_is_ignored() -> None:
    m, _, _ = _spectrum_matrix()
    stage = PowerSGD(rank=2)
    stale: TensorState = {"powersgd_q": torch.ones(7, 3)}
    decoded, _ = _roundtrip(stage, m, stale, seed=0)
    fresh, _ = _roundtrip(stage, m, {}, seed=0)
    assert torch.equal(decoded, fresh)
    assert stale["powersgd_q"].shape == (10, 2)


def test_zero_matrix_decodes_to_zero_and_drops_the_warm_start() -> None:
    stage = PowerSGD(rank=3)
    state: TensorState = {}
    decoded, _ = _roundtrip(stage, torch.zeros(6, 5), state)
    assert torch.equal(decoded, torch.zeros(6, 5))
    assert "powersgd_q" not in state
    # A zero warm start would stall; after a zero update the next one still comes through.
    m = _low_rank(6, 5, 2, seed=3)
    decoded, _ = _roundtrip(stage, m, state)
    assert _error(m, decoded) <= 1e-4 * _norm(m)


@settings(max_examples=50, deadline=None)
@given(numel=st.integers(1, 200), rank=st.integers(1, 8), seed=st.integers(0, 2**31))
def test_vectors_are_one_row_and_exact(numel: int, rank: int, seed: int) -> None:
    v = torch.randn(numel, generator=torch.Generator().manual_seed(seed))
    decoded, meta = _roundtrip(PowerSGD(rank=rank), v, seed=seed)
    assert meta == {"rank": 1}
    assert _error(v, decoded) <= 1e-5 * _norm(v)
    assert PowerSGD(rank=rank).max_inner_numel(numel, (numel,)) == 1 + numel


def test_scalar_is_exact() -> None:
    decoded, meta = _roundtrip(PowerSGD(), torch.tensor(-2.5))
    assert meta == {"rank": 1}
    assert float(decoded) == pytest.approx(-2.5)


def test_three_dimensional_tensors_are_first_dimension_by_the_rest() -> None:
    m = _low_rank(4, 15, 2, seed=1).reshape(4, 3, 5)
    stage = PowerSGD(rank=2)
    state: TensorState = {}
    decoded, meta = _roundtrip(stage, m, state)
    assert meta == {"rank": 2}
    assert state["powersgd_q"].shape == (15, 2)
    assert stage.inner_numel(60, (4, 3, 5), meta) == 2 * (4 + 15)
    assert _error(m, decoded) <= 1e-4 * _norm(m)
    # Through a chain, the shape comes back.
    chain = parse_chain("powersgd:rank=2+fp32")
    _, through_chain = chain.roundtrip(m)
    assert through_chain.shape == (4, 3, 5)
    assert _error(m, through_chain) <= 1e-4 * _norm(m)


@pytest.mark.parametrize("shape", [(0,), (0, 5), (5, 0), (2, 0, 3)])
def test_empty_tensors(shape: tuple[int, ...]) -> None:
    decoded, _ = _roundtrip(PowerSGD(rank=4), torch.zeros(shape))
    assert decoded.shape == shape


@pytest.mark.parametrize("rank", [0, -1, 1025, True, 2.0, "4"])
def test_rank_must_be_a_whole_number_in_range(rank: object) -> None:
    with pytest.raises(CompressionError, match="rank"):
        PowerSGD(rank=rank)  # type: ignore[arg-type]


@pytest.mark.parametrize("meta", [{"rank": 2}, {"rank": 4}, {"rank": -1}, {"rank": True}, {}])
def test_decoder_rejects_a_rank_other_than_the_expected_one(meta: dict) -> None:
    with pytest.raises(CompressionError, match="rank"):
        PowerSGD(rank=3).inner_numel(60, (6, 10), meta)


def test_spec_and_bias() -> None:
    assert PowerSGD(rank=8).spec() == "powersgd:rank=8"
    assert PowerSGD().biased

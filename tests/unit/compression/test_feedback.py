"""Error feedback: residuals staged, committed or discarded, kept on disk, and what they buy."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_safetensors

from swarm.compression import (
    CompressionPolicy,
    ErrorFeedback,
    decode_payload,
    encode_payload,
    encode_stream,
)
from swarm.protocol.errors import CompressionError


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _committed(residuals: dict[str, torch.Tensor], states: dict | None = None) -> ErrorFeedback:
    feedback = ErrorFeedback()
    feedback.stage(residuals, states or {})
    feedback.commit()
    return feedback


# --- bookkeeping -----------------------------------------------------------------------------


def test_compensate_without_a_residual_is_a_float32_copy() -> None:
    feedback = ErrorFeedback()
    update = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    out = feedback.compensate("w", update)
    assert out.dtype == torch.float32
    assert torch.equal(out, update.float())
    out += 1
    assert torch.equal(update, torch.arange(6, dtype=torch.float64).reshape(2, 3))
    assert len(feedback) == 0
    assert feedback.residual("w") is None


def test_staged_residuals_count_only_once_committed() -> None:
    feedback = ErrorFeedback()
    update, residual = _randn(3, 4, seed=1), _randn(3, 4, seed=2)
    feedback.stage({"w": residual}, {})
    assert feedback.residual("w") is None
    assert torch.equal(feedback.compensate("w", update), update)
    feedback.commit()
    assert torch.equal(feedback.residual("w"), residual)
    assert torch.equal(feedback.compensate("w", update), update + residual)
    assert len(feedback) == 1
    assert feedback.norm() == pytest.approx(float(residual.double().norm()))
    # Committing again changes nothing: the staged residuals were used up.
    feedback.commit()
    assert torch.equal(feedback.compensate("w", update), update + residual)


def test_discarded_residuals_are_never_applied() -> None:
    feedback = _committed({"w": torch.ones(2)})
    feedback.stage({"w": torch.full((2,), 5.0), "b": torch.ones(1)}, {"w": {"q": torch.ones(1)}})
    feedback.discard()
    feedback.commit()
    assert torch.equal(feedback.residual("w"), torch.ones(2))
    assert feedback.residual("b") is None
    assert feedback.working_state("w") == {}


def test_a_later_stage_replaces_an_earlier_one() -> None:
    feedback = ErrorFeedback()
    feedback.stage({"a": torch.ones(2)}, {})
    feedback.stage({"b": torch.ones(2)}, {})
    feedback.commit()
    assert feedback.residual("a") is None
    assert torch.equal(feedback.residual("b"), torch.ones(2))


def test_commit_keeps_residuals_of_tensors_not_in_the_update() -> None:
    feedback = _committed({"a": torch.ones(2), "b": torch.ones(3)})
    feedback.stage({"a": torch.zeros(2)}, {})
    feedback.commit()
    assert torch.equal(feedback.residual("a"), torch.zeros(2))
    assert torch.equal(feedback.residual("b"), torch.ones(3))
    assert feedback.norm() == pytest.approx(3**0.5)


def test_a_residual_of_another_shape_is_ignored() -> None:
    feedback = _committed({"w": torch.ones(2, 3)})
    update = _randn(3, 2)
    assert torch.equal(feedback.compensate("w", update), update)


def test_working_state_is_a_copy() -> None:
    q = torch.ones(4, 2)
    feedback = _committed({}, {"w": {"powersgd_q": q}})
    state = feedback.working_state("w")
    assert torch.equal(state["powersgd_q"], q)
    state["powersgd_q"] = torch.zeros(4, 2)
    state["other"] = torch.ones(1)
    assert feedback.working_state("w") == {"powersgd_q": q}
    assert feedback.working_state("unknown") == {}


# --- through the payload encoder -------------------------------------------------------------

SHAPES = {"layer.weight": (16, 32), "layer.bias": (32,)}


def _update(seed: int) -> dict[str, torch.Tensor]:
    return {name: _randn(*shape, seed=seed + i) for i, (name, shape) in enumerate(SHAPES.items())}


def test_the_staged_residual_is_what_the_receiver_did_not_get() -> None:
    policy = CompressionPolicy(chain="topk:0.1+int8", small_chain="fp32", small_elements=0)
    feedback = ErrorFeedback()
    update = _update(0)
    payload = encode_payload(update, policy, seed=3, feedback=feedback)
    assert len(feedback) == 0  # staged, not committed
    feedback.commit()
    decoded = decode_payload(payload, SHAPES, policy)
    weight = "layer.weight"
    assert torch.allclose(feedback.residual(weight), update[weight] - decoded[weight], atol=1e-6)
    # The lossless small chain leaves nothing behind.
    assert feedback.residual("layer.bias") is None
    assert torch.equal(decoded["layer.bias"], update["layer.bias"])
    # The next update carries the residual.
    second = _update(10)
    payload = encode_payload(second, policy, seed=4, feedback=feedback)
    feedback.commit()
    again = decode_payload(payload, SHAPES, policy)
    target = second[weight] + update[weight] - decoded[weight]
    assert torch.allclose(feedback.residual(weight), target - again[weight], atol=1e-5)


def test_residuals_are_staged_only_once_the_whole_payload_is_out() -> None:
    policy = CompressionPolicy(chain="int4", small_chain="int4", small_elements=0)
    feedback = ErrorFeedback()
    stream = encode_stream(_update(0), policy, feedback=feedback)
    next(stream)
    next(stream)
    feedback.commit()
    assert len(feedback) == 0
    list(stream)
    feedback.commit()
    assert len(feedback) == 2


def test_a_refused_update_leaves_the_residuals_as_they_were() -> None:
    policy = CompressionPolicy(chain="int4", small_chain="int4", small_elements=0)
    feedback = ErrorFeedback()
    encode_payload(_update(0), policy, feedback=feedback)
    feedback.commit()
    before = {name: feedback.residual(name).clone() for name in SHAPES}
    encode_payload(_update(5), policy, feedback=feedback)
    feedback.discard()
    for name in SHAPES:
        assert torch.equal(feedback.residual(name), before[name])


def _accumulate(feedback: ErrorFeedback | None, rounds: int) -> list[float]:
    """Send the same update `rounds` times with top-k 1%; relative error of the running sum."""
    policy = CompressionPolicy(chain="topk", small_elements=0)
    update = _randn(20, 50, seed=0)
    shapes = {"w": (20, 50)}
    total = torch.zeros(20, 50, dtype=torch.float64)
    errors = []
    for r in range(1, rounds + 1):
        payload = encode_payload({"w": update}, policy, seed=r, feedback=feedback)
        if feedback is not None:
            feedback.commit()
        total += decode_payload(payload, shapes, policy)["w"].double()
        errors.append(float((total - r * update.double()).norm() / (r * update.double().norm())))
    return errors


def test_error_feedback_transmits_the_full_sum_and_plain_top_k_does_not() -> None:
    with_feedback = _accumulate(ErrorFeedback(), 300)
    without = _accumulate(None, 300)
    # Without feedback, the same 1% is sent every round: the sum stays far from the target.
    assert min(without) > 0.9
    # With feedback, what was left out is sent later: the relative error of the sum shrinks.
    assert with_feedback[-1] < 0.25
    assert with_feedback[-1] < with_feedback[99] / 2 < with_feedback[9] / 4


# --- persistence -----------------------------------------------------------------------------


def _trained_feedback() -> tuple[ErrorFeedback, CompressionPolicy]:
    policy = CompressionPolicy(chain="powersgd:rank=2+fp16", small_chain="int8", small_elements=0)
    feedback = ErrorFeedback()
    for seed in range(3):
        encode_payload(_update(seed), policy, seed=seed, feedback=feedback)
        feedback.commit()
    return feedback, policy


def test_feedback_round_trips_through_bytes_with_powersgd_state() -> None:
    feedback, policy = _trained_feedback()
    assert feedback.working_state("layer.weight")["powersgd_q"].shape == (32, 2)
    restored = ErrorFeedback.from_bytes(feedback.to_bytes())
    assert len(restored) == len(feedback) == 2
    assert restored.norm() == feedback.norm() > 0
    for name in SHAPES:
        assert torch.equal(restored.residual(name), feedback.residual(name))
        state, original = restored.working_state(name), feedback.working_state(name)
        assert state.keys() == original.keys()
        assert all(torch.equal(state[k], original[k]) for k in state)
    # A worker restarted from disk sends exactly what it would have sent.
    update = _update(7)
    assert encode_payload(update, policy, seed=9, feedback=restored) == encode_payload(
        update, policy, seed=9, feedback=feedback
    )


def test_names_with_separators_survive_the_round_trip() -> None:
    feedback = _committed(
        {"a::b": torch.ones(2), "c.d": torch.zeros(1), "": torch.ones(1)},
        {"a::b": {"powersgd_q": torch.ones(2, 1)}},
    )
    restored = ErrorFeedback.from_bytes(feedback.to_bytes())
    assert torch.equal(restored.residual("a::b"), torch.ones(2))
    assert torch.equal(restored.residual("c.d"), torch.zeros(1))
    assert torch.equal(restored.residual(""), torch.ones(1))
    assert torch.equal(restored.working_state("a::b")["powersgd_q"], torch.ones(2, 1))


def test_empty_feedback_round_trips() -> None:
    restored = ErrorFeedback.from_bytes(ErrorFeedback().to_bytes())
    assert len(restored) == 0
    assert restored.norm() == 0.0


def test_an_unknown_entry_is_refused() -> None:
    data = save_safetensors({"momentum::w": torch.ones(2)})
    with pytest.raises(CompressionError, match="unknown entry"):
        ErrorFeedback.from_bytes(data)


@pytest.mark.parametrize("data", [b"", b"\x00" * 8, b"not safetensors at all", b"\xff" * 64])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(CompressionError, match="corrupt"):
        ErrorFeedback.from_bytes(data)


_VALID = _trained_feedback()[0].to_bytes()


def test_every_truncation_is_refused() -> None:
    for end in range(len(_VALID)):
        with pytest.raises(CompressionError):
            ErrorFeedback.from_bytes(_VALID[:end])


@settings(max_examples=100, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(_VALID) - 1), st.integers(1, 255), st.booleans()),
        min_size=1,
        max_size=4,
    )
)
def test_corrupted_state_raises_only_compression_error(edits: list[tuple[int, int, bool]]) -> None:
    data = bytearray(_VALID)
    for position, value, insert in edits:
        if insert:
            data.insert(position, value)
        else:
            data[position] ^= value
    try:
        restored = ErrorFeedback.from_bytes(bytes(data))
    except CompressionError:
        return
    assert isinstance(restored, ErrorFeedback)  # a flip inside tensor data can still be valid


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_raise_only_compression_error(data: bytes) -> None:
    try:
        restored = ErrorFeedback.from_bytes(data)
    except CompressionError:
        return
    assert isinstance(restored, ErrorFeedback)


def test_an_overflowing_residual_is_refused_on_encode() -> None:
    policy = CompressionPolicy(chain="topk:0.1+fp32", small_elements=0)
    feedback = ErrorFeedback()
    update = {"w": torch.full((4, 8), 3e38)}
    payload = encode_payload(update, policy, feedback=feedback)
    feedback.commit()
    assert decode_payload(payload, {"w": (4, 8)}, policy)["w"].abs().max() == pytest.approx(3e38)
    # 3e38 left behind plus 3e38 more is inf in float32: encoding must refuse, not send inf.
    with pytest.raises(CompressionError, match="w"):
        encode_payload(update, policy, feedback=feedback)
